/* Allocation-failure injection (fault.h): one countdown per site. */
#include "daemon/fault.h"

#include <stdatomic.h>

/* per site: allocations left before they fail; < 0: unarmed */
static _Atomic int left[XD_FAULT_N_SITES] = {-1, -1, -1};

void xd_fault_fail_after(enum xd_fault_site site, int n)
{
    atomic_store(&left[site], n < 0 ? -1 : n);
}

bool xd_fault_hit(enum xd_fault_site site)
{
    int v = atomic_load_explicit(&left[site], memory_order_relaxed);
    for (;;) {
        if (v < 0)
            return false;
        if (v == 0)
            return true;
        if (atomic_compare_exchange_weak(&left[site], &v, v - 1))
            return false;
    }
}
