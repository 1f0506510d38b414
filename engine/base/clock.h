/* The one clock for durations and deadlines: monotonic seconds (steps, queue times, request
 * timeouts, drain, benchmarks). */
#ifndef XD_CLOCK_H
#define XD_CLOCK_H

/* Seconds on CLOCK_MONOTONIC from an arbitrary origin, fixed for the process: only differences
 * mean anything. Never fails, never goes back, is not moved by changes to the wall clock.
 * Thread-safe. */
double xd_now(void);

#endif
