/* Parked connections (conn_park.h): a list of registered connections under one lock, an
 * epoll set of their sockets for hangups (EPOLLRDHUP, one-shot: a hangup is for good), and
 * one thread that waits on it until the earliest parked connection's timer.
 *
 * Removal and the watcher: an epoll event carries the xd_parked pointer, and an epoll_wait in
 * progress may return an event of a connection removed meanwhile. So removal takes the socket
 * out of the epoll set (no later epoll_wait returns it) and moves the entry to a graveyard;
 * the watcher frees the graveyard only after it handled the events of the epoll_wait that
 * was in progress, under the lock that removal takes. Removal happens before MHD closes the
 * socket, so the descriptor taken out of the set is never a reused one. */
#include "daemon/conn_park.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "engine/base/clock.h"

struct xd_parked {
    struct xd_parked *prev, *next; /* in p->live, or in p->graveyard (next only) */
    struct MHD_Connection *conn;
    int fd;
    bool parked;   /* suspended in MHD; under p->lock */
    bool kicked;   /* woken while not parked: the next suspend declines; under p->lock */
    bool hup;      /* the watcher saw the client hang up; under p->lock */
    bool dead;     /* removed: in the graveyard; under p->lock */
    double wake_at; /* while parked: when the timer resumes it (monotonic seconds) */
};

struct xd_conn_park {
    pthread_mutex_t lock;
    struct xd_parked *live;      /* under lock */
    struct xd_parked *graveyard; /* under lock: removed, freed by the watcher */
    int n_parked;                /* under lock */
    double next_wake;            /* under lock: the watcher's next timer scan */
    bool closed, stop;           /* under lock */
    int epfd;                    /* the hangup set, and efd */
    int efd;                     /* eventfd: wakes the watcher (an earlier timer, stop) */
    pthread_t thread;
};

/* Resumes w (parked). Under p->lock. */
static void unpark(struct xd_conn_park *p, struct xd_parked *w)
{
    w->parked = false;
    p->n_parked--;
    MHD_resume_connection(w->conn);
}

static void wake_watcher(struct xd_conn_park *p)
{
    uint64_t one = 1;
    ssize_t n = write(p->efd, &one, sizeof one);
    (void)n; /* EAGAIN: the counter is non-zero already, the watcher wakes anyway */
}

static void *watcher(void *arg)
{
    struct xd_conn_park *p = arg;
    struct epoll_event evs[256];
    pthread_mutex_lock(&p->lock);
    while (!p->stop) {
        double now = xd_now();
        int ms = p->next_wake > now ? (int)((p->next_wake - now) * 1000.0) + 1 : 0;
        if (ms > 1000)
            ms = 1000;
        pthread_mutex_unlock(&p->lock);
        int n = epoll_wait(p->epfd, evs, (int)(sizeof evs / sizeof evs[0]), ms);
        pthread_mutex_lock(&p->lock);
        for (int i = 0; i < n; i++) {
            if (evs[i].data.ptr == NULL) { /* the eventfd */
                uint64_t v;
                ssize_t r = read(p->efd, &v, sizeof v);
                (void)r;
                continue;
            }
            struct xd_parked *w = evs[i].data.ptr;
            if (w->dead)
                continue; /* removed while this epoll_wait ran; freed below */
            w->hup = true;
            if (w->parked)
                unpark(p, w);
        }
        while (p->graveyard) {
            struct xd_parked *w = p->graveyard;
            p->graveyard = w->next;
            free(w);
        }
        /* the timers: a scan of what is registered (bounded by max-connections) */
        now = xd_now();
        double next = now + 1.0;
        for (struct xd_parked *w = p->live; w; w = w->next) {
            if (!w->parked)
                continue;
            if (w->wake_at <= now)
                unpark(p, w);
            else if (w->wake_at < next)
                next = w->wake_at;
        }
        p->next_wake = next;
    }
    pthread_mutex_unlock(&p->lock);
    return NULL;
}

int xd_conn_park_create(struct xd_conn_park **ret, struct xd_err *err)
{
    struct xd_conn_park *p = calloc(1, sizeof *p);
    if (!p)
        return xd_err_set(err, XD_ERR_NOMEM, "out of memory (parked connections)");
    p->epfd = epoll_create1(EPOLL_CLOEXEC);
    p->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    if (p->epfd < 0 || p->efd < 0 || epoll_ctl(p->epfd, EPOLL_CTL_ADD, p->efd, &ev) < 0) {
        int e = errno;
        if (p->epfd >= 0)
            close(p->epfd);
        if (p->efd >= 0)
            close(p->efd);
        free(p);
        return xd_err_set(err, XD_ERR_IO, "cannot create the hangup watcher's epoll set: %s",
                          strerror(e));
    }
    pthread_mutex_init(&p->lock, NULL);
    int rc = pthread_create(&p->thread, NULL, watcher, p);
    if (rc != 0) {
        pthread_mutex_destroy(&p->lock);
        close(p->epfd);
        close(p->efd);
        free(p);
        return xd_err_set(err, XD_ERR_IO, "cannot start the hangup watcher: %s", strerror(rc));
    }
    *ret = p;
    return XD_OK;
}

void xd_conn_park_close(struct xd_conn_park *p)
{
    pthread_mutex_lock(&p->lock);
    p->closed = true;
    for (struct xd_parked *w = p->live; w; w = w->next)
        if (w->parked)
            unpark(p, w);
    pthread_mutex_unlock(&p->lock);
}

void xd_conn_park_destroy(struct xd_conn_park *p)
{
    if (!p)
        return;
    pthread_mutex_lock(&p->lock);
    p->stop = true;
    pthread_mutex_unlock(&p->lock);
    wake_watcher(p);
    pthread_join(p->thread, NULL);
    while (p->graveyard) {
        struct xd_parked *w = p->graveyard;
        p->graveyard = w->next;
        free(w);
    }
    while (p->live) { /* none, if every connection was removed as the contract says */
        struct xd_parked *w = p->live;
        p->live = w->next;
        free(w);
    }
    close(p->epfd);
    close(p->efd);
    pthread_mutex_destroy(&p->lock);
    free(p);
}

struct xd_parked *xd_conn_park_add(struct xd_conn_park *p, struct MHD_Connection *conn, int fd)
{
    struct xd_parked *w = calloc(1, sizeof *w);
    if (!w)
        return NULL;
    w->conn = conn;
    w->fd = fd;
    /* linked first: an event may come the moment fd is in the set */
    pthread_mutex_lock(&p->lock);
    w->next = p->live;
    if (p->live)
        p->live->prev = w;
    p->live = w;
    pthread_mutex_unlock(&p->lock);
    struct epoll_event ev = {.events = EPOLLRDHUP | EPOLLONESHOT, .data.ptr = w};
    if (epoll_ctl(p->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
        pthread_mutex_lock(&p->lock);
        if (w->prev)
            w->prev->next = w->next;
        else
            p->live = w->next;
        if (w->next)
            w->next->prev = w->prev;
        pthread_mutex_unlock(&p->lock);
        free(w); /* never in the set: no event can name it */
        return NULL;
    }
    return w;
}

void xd_conn_park_remove(struct xd_conn_park *p, struct xd_parked *w)
{
    if (!w)
        return;
    epoll_ctl(p->epfd, EPOLL_CTL_DEL, w->fd, NULL);
    pthread_mutex_lock(&p->lock);
    if (w->parked) /* a contract violation; resumed rather than left suspended for ever */
        unpark(p, w);
    if (w->prev)
        w->prev->next = w->next;
    else
        p->live = w->next;
    if (w->next)
        w->next->prev = w->prev;
    w->dead = true;
    w->prev = NULL;
    w->next = p->graveyard;
    p->graveyard = w;
    pthread_mutex_unlock(&p->lock);
}

bool xd_conn_park_suspend(struct xd_conn_park *p, struct xd_parked *w, double wake_at)
{
    pthread_mutex_lock(&p->lock);
    if (w->kicked || w->hup || p->closed) {
        w->kicked = false;
        pthread_mutex_unlock(&p->lock);
        return false;
    }
    w->parked = true;
    w->wake_at = wake_at;
    p->n_parked++;
    MHD_suspend_connection(w->conn);
    bool earlier = wake_at < p->next_wake;
    if (earlier)
        p->next_wake = wake_at;
    pthread_mutex_unlock(&p->lock);
    if (earlier)
        wake_watcher(p);
    return true;
}

void xd_conn_park_kick(struct xd_conn_park *p, struct xd_parked *w)
{
    pthread_mutex_lock(&p->lock);
    if (w->parked)
        unpark(p, w);
    else
        w->kicked = true;
    pthread_mutex_unlock(&p->lock);
}

bool xd_conn_park_hung_up(struct xd_conn_park *p, struct xd_parked *w)
{
    pthread_mutex_lock(&p->lock);
    bool hup = w->hup;
    pthread_mutex_unlock(&p->lock);
    return hup;
}

bool xd_conn_park_closed(struct xd_conn_park *p)
{
    pthread_mutex_lock(&p->lock);
    bool closed = p->closed;
    pthread_mutex_unlock(&p->lock);
    return closed;
}

int xd_conn_park_count(struct xd_conn_park *p)
{
    pthread_mutex_lock(&p->lock);
    int n = p->n_parked;
    pthread_mutex_unlock(&p->lock);
    return n;
}
