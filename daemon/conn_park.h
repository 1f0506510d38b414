/* Parked connections: a generation request's connection suspended in libmicrohttpd while it
 * waits for the scheduler, resumed by a scheduler event (a kick), by its own timer (a stream's
 * keep-alive, the request's deadline) or by the client hanging up, which one epoll thread
 * watches for every parked socket (MHD polls no suspended connection, so it would not see a
 * hangup until the next write).
 *
 * Why a module of its own: the only correct way to wait in MHD's event-driven mode is
 * MHD_suspend_connection from inside the access handler or the content reader (returning 0
 * there without suspending would make MHD call it again at once: a busy loop), and
 * MHD_resume_connection is only defined on a connection that is suspended. The park keeps,
 * under one lock, whether each connection is suspended, so a kick resumes a suspended one
 * exactly once and a kick that comes while its connection is running is not lost (the next
 * suspend sees it and declines). Lock order: a caller's own lock (the job's) may be held
 * while calling in here; the park's lock is held while calling MHD's suspend and resume
 * (which take MHD's own mutex, under which MHD calls none of ours). */
#ifndef XD_CONN_PARK_H
#define XD_CONN_PARK_H

#include <microhttpd.h>
#include <stdbool.h>

#include "engine/base/status.h"

struct xd_conn_park;
struct xd_parked; /* one connection that may be parked */

/* Starts the hangup watcher (an epoll thread that also runs the timers). On failure *ret is
 * unwritten and err says why. */
int xd_conn_park_create(struct xd_conn_park **ret, struct xd_err *err);
/* Resumes every parked connection and makes every later xd_conn_park_suspend decline, so
 * MHD_stop_daemon finds none suspended (it aborts the process if it does). Thread-safe. */
void xd_conn_park_close(struct xd_conn_park *p);
/* Stops the watcher and frees the park. Every xd_parked must be removed first, which MHD's
 * completion callbacks do before MHD_stop_daemon returns. Accepts NULL. */
void xd_conn_park_destroy(struct xd_conn_park *p);

/* Registers conn, whose socket is fd, for parking; its hangups are watched from now on (a
 * half-close, shutdown(SHUT_WR), counts as one). NULL when out of memory or when epoll
 * refuses fd. fd must stay open until xd_conn_park_remove. Thread-safe. */
struct xd_parked *xd_conn_park_add(struct xd_conn_park *p, struct MHD_Connection *conn, int fd);
/* Unregisters w and frees it (later, on the watcher's thread: an event of w's may be in
 * flight there). Not while w is parked; call it before MHD closes the socket (from MHD's
 * completion callback). Accepts NULL. Thread-safe. */
void xd_conn_park_remove(struct xd_conn_park *p, struct xd_parked *w);

/* Suspends w's connection until a kick, a hangup or wake_at (monotonic seconds, xd_now())
 * and returns true; the caller then returns at once from MHD's callback (0 from a content
 * reader, MHD_YES from the access handler without a response) and MHD calls it again once
 * resumed. Returns false without suspending when a kick came since the last call, when the
 * client hung up, or when the park is closed: the caller looks at its events again (and, when
 * closed, ends the request). Call it only from MHD's access handler or content reader for w's
 * own connection. */
bool xd_conn_park_suspend(struct xd_conn_park *p, struct xd_parked *w, double wake_at);
/* Wakes w: resumes its connection if parked, else makes its next suspend decline. Thread-safe
 * (the scheduler's sink calls it); w must not be removed meanwhile (the caller's lock). */
void xd_conn_park_kick(struct xd_conn_park *p, struct xd_parked *w);
/* Whether the watcher saw w's client hang up. Thread-safe. */
bool xd_conn_park_hung_up(struct xd_conn_park *p, struct xd_parked *w);
/* Whether xd_conn_park_close was called. Thread-safe. */
bool xd_conn_park_closed(struct xd_conn_park *p);
/* Connections parked now (for the log and tests). Thread-safe. */
int xd_conn_park_count(struct xd_conn_park *p);

#endif
