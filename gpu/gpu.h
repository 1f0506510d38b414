/* The CUDA backend's entry point for the rest of the program. */
#ifndef XD_GPU_H
#define XD_GPU_H

#ifdef __cplusplus
extern "C" {
#endif

/* Registers the CUDA backend with the engine (XD_DEVICE_CUDA). Call once at start-up. */
void xd_gpu_register(void);

#ifdef __cplusplus
}
#endif

#endif
