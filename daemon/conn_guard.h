/* Deadlines a trickle cannot extend, and a per-client connection cap, for the HTTP layer's
 * libmicrohttpd server: every connection is registered with the phase it is in, and
 * a watchdog thread shuts down the socket of one that stays in a phase past its deadline
 * (MHD's own idle timeout starts again at every byte, so it cannot do this). */
#ifndef XD_CONN_GUARD_H
#define XD_CONN_GUARD_H

#include <stdbool.h>
#include <sys/socket.h>

#include "engine/base/status.h"

enum xd_conn_phase {
    XD_CONN_HEADERS,   /* from the first byte (or the request line on a kept-alive connection)
                          to the end of the request headers: header_timeout */
    XD_CONN_BODY,      /* the request body: body_timeout */
    XD_CONN_ANSWERING, /* the request is read: no deadline here (request-timeout bounds a
                          generation) */
    XD_CONN_IDLE,      /* kept alive between requests: idle_timeout */
};

/* Why the watchdog cut a connection (XD_CONN_CUT_NONE: it did not). */
enum xd_conn_cut {
    XD_CONN_CUT_NONE,
    XD_CONN_CUT_HEADERS, /* request headers not complete within header_timeout */
    XD_CONN_CUT_BODY,    /* request body not complete within body_timeout */
    XD_CONN_CUT_IDLE,    /* kept alive past idle_timeout without a request line */
    XD_CONN_CUT_OVER_CAP, /* over the per-client cap and no request headers within the grace */
    XD_CONN_CUT_OVER_TOTAL, /* over max_total and no request headers within the grace */
};

struct xd_conn_guard_opts {
    double header_timeout; /* seconds, > 0 */
    double body_timeout;   /* seconds, > 0 */
    double idle_timeout;   /* seconds, > 0: a connection's default (see set_idle_timeout) */
    double over_cap_grace; /* seconds an over-cap connection has to send its headers (then it
                              is answered 503) before it is cut */
    int max_per_client;    /* connections from one address; 0: no cap */
    int max_over_cap;      /* connections from one address beyond max_per_client that wait
                              for their headers (to be answered 503) at once; more are not
                              admitted at all (xd_conn_guard_admit) */
    int max_total;         /* connections served at once, all addresses together (the oldest
                              are): a newer one is over it as one is over the per-client cap
                              (answered 503, cut after over_cap_grace without headers);
                              0: no limit */
    int max_over_total;    /* connections beyond max_total admitted at once (to be answered);
                              more are not admitted at all */
};

struct xd_conn_guard;
struct xd_conn; /* one registered connection */

/* Starts the watchdog. On failure *ret is unwritten and err says why. */
int xd_conn_guard_create(const struct xd_conn_guard_opts *opts, struct xd_conn_guard **ret,
                         struct xd_err *err);
/* Stops the watchdog and frees what is still registered (call after every connection thread
 * is joined). Accepts NULL. */
void xd_conn_guard_destroy(struct xd_conn_guard *g);

/* Whether a connection from addr may be accepted at all: false when max_per_client +
 * max_over_cap connections from its address are live, or max_total + max_over_total
 * connections in all (the caller closes it at once, before it costs anything). Thread-safe. */
bool xd_conn_guard_admit(struct xd_conn_guard *g, const struct sockaddr *addr);
/* Registers a new connection on socket fd from addr, in XD_CONN_HEADERS. A connection is over
 * the cap while max_per_client older connections from its address (IPv4-mapped IPv6 counted
 * as IPv4; ones already cut not counted) are live: the oldest max_per_client are served. Over
 * it, its header deadline is over_cap_grace (the full header_timeout if older ones left by
 * then). NULL when out of memory. fd must stay open until xd_conn_guard_close. Thread-safe. */
struct xd_conn *xd_conn_guard_open(struct xd_conn_guard *g, int fd, const struct sockaddr *addr);
/* Unregisters c and frees it; returns why the watchdog cut it. Accepts NULL. Thread-safe. */
enum xd_conn_cut xd_conn_guard_close(struct xd_conn_guard *g, struct xd_conn *c);
/* Moves c into phase; its deadline starts now, unless c is in that phase already (then it
 * keeps its deadline: a request line after a trickled first one does not restart the header
 * deadline). Thread-safe; c may be NULL. */
void xd_conn_guard_enter(struct xd_conn_guard *g, struct xd_conn *c, enum xd_conn_phase phase);
/* Raises c's idle timeout to seconds (for the rest of its life): the HTTP layer lifts MHD's
 * own idle timeout for a generation, and the watchdog must not cut earlier than MHD would.
 * Thread-safe; c may be NULL. */
void xd_conn_guard_set_idle_timeout(struct xd_conn_guard *g, struct xd_conn *c, double seconds);
/* Whether c is over the per-client cap or over max_total now (see xd_conn_guard_open; one
 * that was over is admitted once older ones left); *ret_total (may be NULL) says whether it is
 * over max_total. Thread-safe; c may be NULL (false). */
bool xd_conn_guard_over_cap(struct xd_conn_guard *g, struct xd_conn *c, bool *ret_total);
/* Why the watchdog cut c so far (XD_CONN_CUT_NONE if it did not). Thread-safe; c may be NULL. */
enum xd_conn_cut xd_conn_guard_cut(struct xd_conn_guard *g, const struct xd_conn *c);
/* Connections registered now. Thread-safe. */
int xd_conn_guard_count(struct xd_conn_guard *g);

#endif
