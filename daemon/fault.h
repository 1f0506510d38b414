/* Allocation-failure injection for the daemon's out-of-memory tests (tests/test-api-generate.c).
 *
 * Never reachable in serving: the only way to arm a site is to call xd_fault_fail_after, and
 * nothing in expertd calls it (no flag, config key, environment variable or request field
 * leads to it); only a test program linked against the daemon library does. Unarmed, every
 * xd_fault_hit is one relaxed atomic load that returns false. */
#ifndef XD_FAULT_H
#define XD_FAULT_H

#include <stdbool.h>

enum xd_fault_site {
    XD_FAULT_JOB,    /* api_generate.c: a job's choices and their preallocated finish events */
    XD_FAULT_EVENT,  /* api_generate.c: the sink's copy of a token event or of event text */
    XD_FAULT_OUTPUT, /* api_generate.c: appends to a response's text or a stream's SSE bytes */
    XD_FAULT_N_SITES,
};

/* Arms site: its next n allocations succeed and every one after fails, until the next call;
 * n < 0 disarms it (the initial state). Thread-safe. */
void xd_fault_fail_after(enum xd_fault_site site, int n);

/* Called by an allocation at site just before it allocates: true when it must fail instead.
 * Thread-safe. */
bool xd_fault_hit(enum xd_fault_site site);

#endif
