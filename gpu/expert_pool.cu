/* GPU expert pool: slots of [gate | up | down] bf16 weights in one device allocation. */
#include "expert_pool.h"

#include <stdlib.h>
#include <string.h>

#include "cuda_check.h"

extern "C" {
#include "dtype.h"
}

struct xd_expert_pool {
    int n_layers;
    int n_experts;
    int hidden, ffn;
    size_t slot_elems;   /* 3 * ffn * hidden */
    int *slot_of;        /* (n_layers, n_experts) slot index, -1 for dense layers */
    bf16 *slots;         /* (n_slots, slot_elems) on the device */
    size_t n_slots;
};

void xd_matrix_to_bf16(const struct xd_matrix *m, uint16_t *dst)
{
    const size_t n = (size_t)m->rows * (size_t)m->cols;
    if (m->dtype == XD_DTYPE_BF16) {
        memcpy(dst, m->data, n * 2);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        float f = m->dtype == XD_DTYPE_F32 ? ((const float *)m->data)[i]
                                           : xd_f16_to_f32(((const uint16_t *)m->data)[i]);
        dst[i] = xd_f32_to_bf16(f);
    }
}

int xd_expert_pool_create(const struct xd_model *m, cudaStream_t stream,
                          struct xd_expert_pool **ret, struct xd_err *err)
{
    const struct xd_model_config *c = &m->config;
    struct xd_expert_pool *p = (struct xd_expert_pool *)calloc(1, sizeof *p);
    if (!p)
        return xd_err_set(err, XD_ERR_NOMEM, "out of memory");
    p->n_layers = c->n_layers;
    p->n_experts = c->n_experts;
    p->hidden = c->hidden_size;
    p->ffn = c->expert_ffn;
    p->slot_elems = (size_t)3 * c->expert_ffn * c->hidden_size;
    p->n_slots = (size_t)c->n_moe_layers * c->n_experts;
    p->slot_of = (int *)malloc(sizeof(int) * (size_t)c->n_layers * c->n_experts);
    uint16_t *staging = NULL;
    int rc = XD_OK;
    if (!p->slot_of) {
        free(p);
        return xd_err_set(err, XD_ERR_NOMEM, "out of memory");
    }
    const size_t bytes = p->n_slots * p->slot_elems * sizeof(bf16);
    cudaError_t e = cudaMalloc((void **)&p->slots, bytes ? bytes : 1);
    if (e != cudaSuccess) {
        size_t free_b = 0, total_b = 0;
        cudaGetLastError();
        cudaMemGetInfo(&free_b, &total_b);
        p->slots = NULL;
        xd_expert_pool_destroy(p);
        return xd_err_set(err, XD_ERR_NOMEM,
                          "GPU out of memory for the expert pool: %zu experts (%d MoE layers x "
                          "%d) need %.2f GiB, %.2f GiB of %.2f GiB is free; use a GPU with more "
                          "memory or --device cpu",
                          p->n_slots, c->n_moe_layers, c->n_experts, bytes / 1073741824.0,
                          free_b / 1073741824.0, total_b / 1073741824.0);
    }
    /* one pinned staging slot, reused: conversion on the host overlaps nothing yet */
    e = cudaMallocHost((void **)&staging, p->slot_elems * sizeof(uint16_t));
    if (e != cudaSuccess) {
        xd_expert_pool_destroy(p);
        return xd_err_set(err, XD_ERR_NOMEM, "pinned staging buffer: %s", cudaGetErrorString(e));
    }
    size_t slot = 0;
    const size_t fh = (size_t)p->ffn * p->hidden;
    for (int l = 0; l < c->n_layers && rc == XD_OK; l++) {
        for (int x = 0; x < c->n_experts; x++) {
            p->slot_of[(size_t)l * c->n_experts + x] = -1;
            if (!c->is_moe_layer[l])
                continue;
            struct xd_expert_weights w;
            rc = xd_expert_store_acquire(&m->experts, l, x, &w);
            if (rc < 0) {
                xd_err_set(err, rc, "expert store: layer %d expert %d unavailable", l, x);
                break;
            }
            xd_matrix_to_bf16(&w.gate, staging);
            xd_matrix_to_bf16(&w.up, staging + fh);
            xd_matrix_to_bf16(&w.down, staging + 2 * fh);
            xd_expert_store_release(&m->experts, l, x);
            bf16 *dst = p->slots + slot * p->slot_elems;
            e = cudaMemcpyAsync(dst, staging, p->slot_elems * sizeof(uint16_t),
                                cudaMemcpyHostToDevice, stream);
            if (e == cudaSuccess)
                e = cudaStreamSynchronize(stream);
            if (e != cudaSuccess) {
                rc = xd_err_set(err, XD_ERR_IO, "uploading layer %d expert %d: %s", l, x,
                                cudaGetErrorString(e));
                break;
            }
            p->slot_of[(size_t)l * c->n_experts + x] = (int)slot++;
        }
    }
    cudaFreeHost(staging);
    if (rc < 0) {
        xd_expert_pool_destroy(p);
        return rc;
    }
    *ret = p;
    return XD_OK;
}

void xd_expert_pool_destroy(struct xd_expert_pool *p)
{
    if (!p)
        return;
    cudaFree(p->slots);
    free(p->slot_of);
    free(p);
}

int xd_expert_pool_acquire(struct xd_expert_pool *p, int layer, int expert,
                           struct xd_gpu_expert *ret)
{
    if (layer < 0 || layer >= p->n_layers || expert < 0 || expert >= p->n_experts)
        return XD_ERR_INVALID;
    int slot = p->slot_of[(size_t)layer * p->n_experts + expert];
    if (slot < 0)
        return XD_ERR_INVALID;
    const size_t fh = (size_t)p->ffn * p->hidden;
    const bf16 *base = p->slots + (size_t)slot * p->slot_elems;
    ret->gate = base;
    ret->up = base + fh;
    ret->down = base + 2 * fh;
    return XD_OK;
}

void xd_expert_pool_release(struct xd_expert_pool *p, int layer, int expert)
{
    (void)p;
    (void)layer;
    (void)expert;
}

size_t xd_expert_pool_bytes(const struct xd_expert_pool *p)
{
    return p->n_slots * p->slot_elems * sizeof(bf16);
}
