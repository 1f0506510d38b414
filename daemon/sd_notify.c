/* sd_notify through libsystemd, or a fallback that speaks the same datagram protocol. */
#include "daemon/sd_notify.h"

#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/un.h>
#include <unistd.h>

#include "xd_build_config.h"

/* XD_SD_NOTIFY_FALLBACK forces the fallback, so that the tests cover it where libsystemd is
 * installed too. */
#if XD_HAVE_LIBSYSTEMD && !defined(XD_SD_NOTIFY_FALLBACK)
#include <systemd/sd-daemon.h>

void xd_sd_notify(const char *state)
{
    (void)sd_notify(0, state);
}

uint64_t xd_sd_watchdog_usec(void)
{
    uint64_t usec = 0;
    return sd_watchdog_enabled(0, &usec) > 0 ? usec : 0;
}

#else

void xd_sd_notify(const char *state)
{
    const char *path = getenv("NOTIFY_SOCKET");
    if (!path || (path[0] != '/' && path[0] != '@'))
        return; /* unset, or a vsock address this fallback does not speak */
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    size_t len = strlen(path);
    if (len >= sizeof sa.sun_path)
        return;
    memcpy(sa.sun_path, path, len);
    if (sa.sun_path[0] == '@')
        sa.sun_path[0] = '\0'; /* abstract namespace: the name is exactly len bytes */
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return;
    socklen_t sa_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len);
    ssize_t r;
    do
        r = sendto(fd, state, strlen(state), MSG_NOSIGNAL, (struct sockaddr *)&sa, sa_len);
    while (r < 0 && errno == EINTR);
    close(fd);
}

uint64_t xd_sd_watchdog_usec(void)
{
    const char *usec = getenv("WATCHDOG_USEC"), *pid = getenv("WATCHDOG_PID");
    if (!usec)
        return 0;
    char *end;
    if (pid) {
        errno = 0;
        unsigned long long p = strtoull(pid, &end, 10);
        if (errno || end == pid || *end || p != (unsigned long long)getpid())
            return 0; /* meant for another process (our parent, before an exec) */
    }
    errno = 0;
    unsigned long long v = strtoull(usec, &end, 10);
    if (errno || end == usec || *end || usec[0] == '-')
        return 0;
    return (uint64_t)v;
}

#endif

void xd_sd_notifyf(const char *fmt, ...)
{
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (n >= 0)
        xd_sd_notify(buf);
}
