/* The connection watchdog (conn_guard.h): a list of live connections under one lock, each
 * with its phase's deadline, scanned by one thread that wakes at the earliest deadline.
 *
 * Cutting is shutdown(SHUT_RDWR) on the connection's socket, done under the lock: the HTTP
 * layer unregisters a connection (xd_conn_guard_close, from MHD's connection-closed
 * notification) before MHD closes its socket, so the descriptor the watchdog shuts down is
 * never a reused one. MHD's epoll then reports end-of-file and MHD closes it (a parked
 * connection's hangup is seen by the park's watcher, conn_park.h).
 * Counting is not scanning: each client address has an entry (a hash table) with its live
 * connections, and the guard the live total, so accepting a connection costs O(1) whatever is
 * open (a scan of the list at each accept and registration made opening 10,000 connections
 * quadratic: 9 s of CPU). Only a connection that is over a limit is ever placed by walking
 * the list, from the newest to it (it is among the newest, and such walks are rare). */
#include "daemon/conn_guard.h"

#include <netinet/in.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/base/clock.h"

/* One client address and its live (registered, not cut) connections. */
struct client {
    struct client *next;       /* in its bucket */
    int family;
    unsigned char addr[16];
    int live;
};

#define N_BUCKETS 4096

struct xd_conn {
    struct xd_conn *prev, *next;
    struct client *client;     /* its address's entry while live and not cut; NULL otherwise
                                  (and for an unknown address) */
    int fd;
    int family;                /* AF_INET or AF_INET6 (IPv4-mapped ones as AF_INET) */
    unsigned char addr[16];    /* the address without the port; 4 bytes for AF_INET */
    bool over_cap;             /* over the per-client cap or max_total when last looked at */
    bool over_total;           /* of which: over max_total */
    enum xd_conn_phase phase;
    double t_phase;            /* when the phase began, monotonic seconds */
    double deadline;           /* monotonic seconds; 0: none */
    double idle_timeout;       /* this connection's XD_CONN_IDLE timeout */
    enum xd_conn_cut cut;
};

struct xd_conn_guard {
    struct xd_conn_guard_opts opts;
    pthread_mutex_t lock;
    pthread_cond_t wake;       /* CLOCK_MONOTONIC */
    struct xd_conn *head;      /* under lock */
    int n;                     /* under lock */
    int n_live;                /* under lock: registered and not cut */
    struct client *buckets[N_BUCKETS]; /* under lock */
    double next_wake;          /* under lock: when the watchdog wakes next */
    bool stop;                 /* under lock */
    pthread_t thread;
};

static void set_addr(struct xd_conn *c, const struct sockaddr *sa)
{
    c->family = AF_UNSPEC;
    if (!sa)
        return;
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)(const void *)sa;
        c->family = AF_INET;
        memcpy(c->addr, &in->sin_addr, 4);
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)(const void *)sa;
        if (IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr)) {
            c->family = AF_INET;
            memcpy(c->addr, in6->sin6_addr.s6_addr + 12, 4);
        } else {
            c->family = AF_INET6;
            memcpy(c->addr, &in6->sin6_addr, 16);
        }
    }
}

static unsigned bucket_of(const struct xd_conn *c)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (int i = 0; i < (c->family == AF_INET ? 4 : 16); i++)
        h = (h ^ c->addr[i]) * 16777619u;
    return h % N_BUCKETS;
}

/* c's address's entry; created (live 0) when create is set; NULL for an unknown address, when
 * absent, or out of memory. Under g->lock. */
static struct client *client_of(struct xd_conn_guard *g, const struct xd_conn *c, bool create)
{
    if (c->family == AF_UNSPEC)
        return NULL;
    size_t n = c->family == AF_INET ? 4 : 16;
    unsigned b = bucket_of(c);
    for (struct client *e = g->buckets[b]; e; e = e->next)
        if (e->family == c->family && memcmp(e->addr, c->addr, n) == 0)
            return e;
    if (!create)
        return NULL;
    struct client *e = calloc(1, sizeof *e);
    if (!e)
        return NULL;
    e->family = c->family;
    memcpy(e->addr, c->addr, n);
    e->next = g->buckets[b];
    g->buckets[b] = e;
    return e;
}

/* c is no longer live (cut, or closed uncut): out of the counts. Under g->lock. */
static void uncount(struct xd_conn_guard *g, struct xd_conn *c)
{
    g->n_live--;
    struct client *e = c->client;
    c->client = NULL;
    if (!e || --e->live > 0)
        return;
    struct client **p = &g->buckets[bucket_of(c)];
    while (*p != e)
        p = &(*p)->next;
    *p = e->next;
    free(e);
}

/* Whether c is over the per-client cap (max_per_client older connections from its address
 * are live; the list is newest first; ones already cut are on their way out) or over
 * max_total (that many older ones live in all); sets c->over_cap and c->over_total.
 * Connections only ever leave the older side, so this only turns from true to false. Under
 * g->lock. */
static bool over_cap_now(const struct xd_conn_guard *g, struct xd_conn *c)
{
    if (c->cut != XD_CONN_CUT_NONE)
        return c->over_cap; /* on its way out: no longer counted */
    bool per_client = g->opts.max_per_client > 0 && c->client;
    bool total = g->opts.max_total > 0;
    /* older = live - 1 (itself) - newer; the newer ones are those before it in the list */
    int newer = 0, newer_same = 0;
    for (const struct xd_conn *o = (per_client || total) ? g->head : c; o != c; o = o->next) {
        if (o->cut != XD_CONN_CUT_NONE)
            continue;
        newer++;
        newer_same += o->client == c->client;
    }
    int older_all = g->n_live - 1 - newer;
    int older = per_client ? c->client->live - 1 - newer_same : 0;
    c->over_total = total && older_all >= g->opts.max_total;
    c->over_cap = (per_client && older >= g->opts.max_per_client) || c->over_total;
    return c->over_cap;
}

static double timeout_of(const struct xd_conn_guard *g, const struct xd_conn *c)
{
    switch (c->phase) {
    case XD_CONN_HEADERS:
        return c->over_cap ? g->opts.over_cap_grace : g->opts.header_timeout;
    case XD_CONN_BODY:
        return g->opts.body_timeout;
    case XD_CONN_IDLE:
        return c->idle_timeout;
    case XD_CONN_ANSWERING:
        break;
    }
    return 0;
}

static enum xd_conn_cut cut_reason(const struct xd_conn *c)
{
    switch (c->phase) {
    case XD_CONN_HEADERS:
        return !c->over_cap     ? XD_CONN_CUT_HEADERS
               : c->over_total ? XD_CONN_CUT_OVER_TOTAL
                               : XD_CONN_CUT_OVER_CAP;
    case XD_CONN_BODY:
        return XD_CONN_CUT_BODY;
    case XD_CONN_IDLE:
        return XD_CONN_CUT_IDLE;
    case XD_CONN_ANSWERING:
        break;
    }
    return XD_CONN_CUT_NONE;
}

/* Sets c's deadline from its phase and wakes the watchdog if that is earlier than its next
 * scan. Under g->lock. */
static void arm(struct xd_conn_guard *g, struct xd_conn *c)
{
    double t = timeout_of(g, c);
    c->t_phase = xd_now();
    c->deadline = t > 0 ? c->t_phase + t : 0;
    if (c->deadline > 0 && c->deadline < g->next_wake)
        pthread_cond_signal(&g->wake);
}

static void *watchdog(void *arg)
{
    struct xd_conn_guard *g = arg;
    pthread_mutex_lock(&g->lock);
    while (!g->stop) {
        double now = xd_now(), next = now + 3600;
        for (struct xd_conn *c = g->head; c; c = c->next) {
            if (c->cut != XD_CONN_CUT_NONE || c->deadline <= 0)
                continue;
            if (now >= c->deadline && c->over_cap && c->phase == XD_CONN_HEADERS &&
                !over_cap_now(g, c)) {
                /* older ones left during its grace: it has the header timeout after all */
                c->deadline = c->t_phase + g->opts.header_timeout;
            }
            if (now >= c->deadline) {
                c->cut = cut_reason(c);
                uncount(g, c);
                shutdown(c->fd, SHUT_RDWR); /* MHD reads EOF and closes it */
            } else if (c->deadline < next) {
                next = c->deadline;
            }
        }
        g->next_wake = next;
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        double wait = next - now + 0.001;
        ts.tv_sec += (time_t)wait;
        ts.tv_nsec += (long)((wait - (double)(time_t)wait) * 1e9);
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&g->wake, &g->lock, &ts);
    }
    pthread_mutex_unlock(&g->lock);
    return NULL;
}

int xd_conn_guard_create(const struct xd_conn_guard_opts *opts, struct xd_conn_guard **ret,
                         struct xd_err *err)
{
    struct xd_conn_guard *g = calloc(1, sizeof *g);
    if (!g)
        return xd_err_set(err, XD_ERR_NOMEM, "out of memory (connection watchdog)");
    g->opts = *opts;
    g->next_wake = 0;
    pthread_mutex_init(&g->lock, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&g->wake, &ca);
    pthread_condattr_destroy(&ca);
    int rc = pthread_create(&g->thread, NULL, watchdog, g);
    if (rc != 0) {
        pthread_cond_destroy(&g->wake);
        pthread_mutex_destroy(&g->lock);
        free(g);
        return xd_err_set(err, XD_ERR_IO, "cannot start the connection watchdog: %s",
                          strerror(rc));
    }
    *ret = g;
    return XD_OK;
}

void xd_conn_guard_destroy(struct xd_conn_guard *g)
{
    if (!g)
        return;
    pthread_mutex_lock(&g->lock);
    g->stop = true;
    pthread_cond_signal(&g->wake);
    pthread_mutex_unlock(&g->lock);
    pthread_join(g->thread, NULL);
    while (g->head) {
        struct xd_conn *c = g->head;
        g->head = c->next;
        free(c);
    }
    for (int b = 0; b < N_BUCKETS; b++) {
        while (g->buckets[b]) {
            struct client *e = g->buckets[b];
            g->buckets[b] = e->next;
            free(e);
        }
    }
    pthread_cond_destroy(&g->wake);
    pthread_mutex_destroy(&g->lock);
    free(g);
}

bool xd_conn_guard_admit(struct xd_conn_guard *g, const struct sockaddr *addr)
{
    struct xd_conn probe;
    set_addr(&probe, addr);
    bool per_client = g->opts.max_per_client > 0 && probe.family != AF_UNSPEC;
    bool total = g->opts.max_total > 0;
    if (!per_client && !total)
        return true;
    pthread_mutex_lock(&g->lock);
    const struct client *e = per_client ? client_of(g, &probe, false) : NULL;
    int live = e ? e->live : 0, live_all = g->n_live;
    pthread_mutex_unlock(&g->lock);
    return (!per_client || live < g->opts.max_per_client + g->opts.max_over_cap) &&
           (!total || live_all < g->opts.max_total + g->opts.max_over_total);
}

struct xd_conn *xd_conn_guard_open(struct xd_conn_guard *g, int fd, const struct sockaddr *addr)
{
    struct xd_conn *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->fd = fd;
    c->phase = XD_CONN_HEADERS;
    c->idle_timeout = g->opts.idle_timeout;
    set_addr(c, addr);
    pthread_mutex_lock(&g->lock);
    c->next = g->head;
    if (g->head)
        g->head->prev = c;
    g->head = c;
    c->client = client_of(g, c, true);
    if (c->client)
        c->client->live++;
    g->n_live++;
    over_cap_now(g, c);
    g->n++;
    arm(g, c);
    pthread_mutex_unlock(&g->lock);
    return c;
}

enum xd_conn_cut xd_conn_guard_close(struct xd_conn_guard *g, struct xd_conn *c)
{
    if (!c)
        return XD_CONN_CUT_NONE;
    pthread_mutex_lock(&g->lock);
    if (c->prev)
        c->prev->next = c->next;
    else
        g->head = c->next;
    if (c->next)
        c->next->prev = c->prev;
    g->n--;
    if (c->cut == XD_CONN_CUT_NONE)
        uncount(g, c);
    enum xd_conn_cut cut = c->cut;
    pthread_mutex_unlock(&g->lock);
    free(c);
    return cut;
}

void xd_conn_guard_enter(struct xd_conn_guard *g, struct xd_conn *c, enum xd_conn_phase phase)
{
    if (!c)
        return;
    pthread_mutex_lock(&g->lock);
    if (c->phase != phase) {
        c->phase = phase;
        arm(g, c);
    }
    pthread_mutex_unlock(&g->lock);
}

void xd_conn_guard_set_idle_timeout(struct xd_conn_guard *g, struct xd_conn *c, double seconds)
{
    if (!c)
        return;
    pthread_mutex_lock(&g->lock);
    if (seconds > c->idle_timeout)
        c->idle_timeout = seconds;
    pthread_mutex_unlock(&g->lock);
}

bool xd_conn_guard_over_cap(struct xd_conn_guard *g, struct xd_conn *c, bool *ret_total)
{
    if (!c)
        return false;
    pthread_mutex_lock(&g->lock);
    if (c->over_cap)
        over_cap_now(g, c); /* older ones may have left since */
    bool over = c->over_cap, total = c->over_total;
    pthread_mutex_unlock(&g->lock);
    if (ret_total)
        *ret_total = total;
    return over;
}

enum xd_conn_cut xd_conn_guard_cut(struct xd_conn_guard *g, const struct xd_conn *c)
{
    if (!c)
        return XD_CONN_CUT_NONE;
    pthread_mutex_lock(&g->lock);
    enum xd_conn_cut cut = c->cut;
    pthread_mutex_unlock(&g->lock);
    return cut;
}

int xd_conn_guard_count(struct xd_conn_guard *g)
{
    pthread_mutex_lock(&g->lock);
    int n = g->n;
    pthread_mutex_unlock(&g->lock);
    return n;
}
