/* systemd's readiness and watchdog protocol (sd_notify): a no-op outside a Type=notify unit. */
#ifndef XD_SD_NOTIFY_H
#define XD_SD_NOTIFY_H

#include <stdint.h>

/*
 * The daemon tells systemd, over the datagram socket named by $NOTIFY_SOCKET:
 *   "READY=1"          once the model is loaded and the port is open (Type=notify waits for it)
 *   "STATUS=..."       one human line that `systemctl status` shows ("loading model", ...)
 *   "WATCHDOG=1"       from the scheduler loop at least every xd_sd_watchdog_usec() / 2, so that
 *                      a hung engine is killed and restarted (WatchdogSec= in the unit)
 *   "STOPPING=1"       when SIGTERM starts the drain
 * Several may go in one message, separated by "\n". Without $NOTIFY_SOCKET (a terminal, a
 * test, a container) every call does nothing. Uses libsystemd's sd_notify where expertd was
 * built with it, else a small implementation of the same datagram protocol.
 */

/* Sends state; failures are ignored (systemd going away must not stop the daemon). Safe to
 * call from any thread. */
void xd_sd_notify(const char *state);

/* Formats the state, as printf, then sends it (at most 1 KiB). */
void xd_sd_notifyf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* The watchdog interval systemd expects pings within ($WATCHDOG_USEC, when $WATCHDOG_PID is
 * unset or this process), or 0 when the watchdog is off. */
uint64_t xd_sd_watchdog_usec(void);

#endif
