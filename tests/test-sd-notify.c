/* sd_notify: messages reach a unix datagram socket named by NOTIFY_SOCKET (a path and an
 * abstract name), nothing happens without it, and WATCHDOG_USEC / WATCHDOG_PID are read as
 * systemd means them. Built twice: with libsystemd where found, and with the fallback. */
#include <poll.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "daemon/sd_notify.h"
#include "tests/test.h"

static char tmpdir[] = "/tmp/xd-test-sd-notify-XXXXXX";

/* Binds a datagram socket at name (a path, or "@name" for the abstract namespace). */
static int bind_socket(const char *name)
{
    int fd = socket(AF_UNIX, SOCK_DGRAM, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    size_t len = strlen(name);
    memcpy(sa.sun_path, name, len);
    if (name[0] == '@')
        sa.sun_path[0] = '\0';
    if (fd < 0 || bind(fd, (struct sockaddr *)&sa,
                       (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len)) < 0) {
        perror("bind");
        if (fd >= 0)
            close(fd);
        return -1;
    }
    return fd;
}

/* Receives one datagram within a second into buf; returns its length or -1. */
static int recv_one(int fd, char *buf, size_t cap)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, 1000) != 1)
        return -1;
    ssize_t n = recv(fd, buf, cap - 1, 0);
    if (n >= 0)
        buf[n] = '\0';
    return (int)n;
}

static void expect_messages(int fd)
{
    char buf[2048];
    xd_sd_notify("READY=1");
    CHECK(recv_one(fd, buf, sizeof buf) > 0 && strcmp(buf, "READY=1") == 0, "got '%s'", buf);
    xd_sd_notifyf("STATUS=serving %s on port %d", "olmoe", 8080);
    CHECK(recv_one(fd, buf, sizeof buf) > 0 && strcmp(buf, "STATUS=serving olmoe on port 8080") == 0,
          "got '%s'", buf);
    xd_sd_notify("WATCHDOG=1");
    CHECK(recv_one(fd, buf, sizeof buf) > 0 && strcmp(buf, "WATCHDOG=1") == 0, "got '%s'", buf);
    xd_sd_notify("STOPPING=1\nSTATUS=draining");
    CHECK(recv_one(fd, buf, sizeof buf) > 0 && strcmp(buf, "STOPPING=1\nSTATUS=draining") == 0,
          "got '%s'", buf);
}

static void test_path_socket(void)
{
    char path[256];
    snprintf(path, sizeof path, "%s/notify", tmpdir);
    int fd = bind_socket(path);
    CHECK(fd >= 0, "cannot bind %s", path);
    if (fd < 0)
        return;
    setenv("NOTIFY_SOCKET", path, 1);
    expect_messages(fd);
    unsetenv("NOTIFY_SOCKET");
    close(fd);
    unlink(path);
}

static void test_abstract_socket(void)
{
    char name[64];
    snprintf(name, sizeof name, "@xd-test-sd-notify-%d", (int)getpid());
    int fd = bind_socket(name);
    CHECK(fd >= 0, "cannot bind %s", name);
    if (fd < 0)
        return;
    setenv("NOTIFY_SOCKET", name, 1);
    expect_messages(fd);
    unsetenv("NOTIFY_SOCKET");
    close(fd);
}

static void test_no_socket_is_a_no_op(void)
{
    unsetenv("NOTIFY_SOCKET");
    xd_sd_notify("READY=1");
    xd_sd_notifyf("STATUS=%s", "nothing listens");
    char path[256];
    snprintf(path, sizeof path, "%s/nobody-bound-this", tmpdir);
    setenv("NOTIFY_SOCKET", path, 1); /* a socket that does not exist: ignored, no crash */
    xd_sd_notify("READY=1");
    unsetenv("NOTIFY_SOCKET");
    CHECK(1, "unreachable");
}

static void test_watchdog_usec(void)
{
    char pid[32];
    unsetenv("WATCHDOG_USEC");
    unsetenv("WATCHDOG_PID");
    CHECK(xd_sd_watchdog_usec() == 0, "no watchdog");
    setenv("WATCHDOG_USEC", "30000000", 1);
    CHECK(xd_sd_watchdog_usec() == 30000000, "%llu", (unsigned long long)xd_sd_watchdog_usec());
    snprintf(pid, sizeof pid, "%d", (int)getpid());
    setenv("WATCHDOG_PID", pid, 1);
    CHECK(xd_sd_watchdog_usec() == 30000000, "own pid");
    snprintf(pid, sizeof pid, "%d", (int)getpid() + 1);
    setenv("WATCHDOG_PID", pid, 1);
    CHECK(xd_sd_watchdog_usec() == 0, "another process's watchdog");
    unsetenv("WATCHDOG_PID");
    setenv("WATCHDOG_USEC", "soon", 1);
    CHECK(xd_sd_watchdog_usec() == 0, "garbage");
    unsetenv("WATCHDOG_USEC");
}

int main(void)
{
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    RUN(test_path_socket);
    RUN(test_abstract_socket);
    RUN(test_no_socket_is_a_no_op);
    RUN(test_watchdog_usec);
    rmdir(tmpdir);
    return test_summary();
}
