/* The helpers of the state `expertd serve` shares across threads (server.h): the log and
 * cancelling through the scheduler lock. */
#include "daemon/server.h"

#include <stdarg.h>
#include <stdio.h>

void xd_log(const struct xd_server *s, enum xd_log_level level, const char *fmt, ...)
{
    if (s && level > s->log_level)
        return;
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    static const char *const names[] = {"error", "warn", "info", "debug"};
    fprintf(stderr, "expertd[%s]: %s\n", names[level], line);
}

void xd_server_cancel(struct xd_server *s, uint64_t id)
{
    pthread_rwlock_rdlock(&s->sched_lock);
    if (s->sched)
        xd_sched_cancel(s->sched, id);
    pthread_rwlock_unlock(&s->sched_lock);
}
