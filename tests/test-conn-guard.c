/* The connection watchdog (daemon/conn_guard.c) on socket pairs: a connection past its
 * phase's deadline is shut down (its peer reads end-of-file) and says why, one answering has
 * no deadline, re-entering a phase keeps the deadline, the per-client cap counts one address
 * (IPv4-mapped IPv6 as IPv4; the oldest are served), refuses at accept past max_over_cap more,
 * and admits an over-cap connection once older ones left, in its grace too; max_total likewise
 * over all addresses. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "daemon/conn_guard.h"
#include "engine/base/clock.h"
#include "tests/test.h"

static struct sockaddr_in v4(const char *ip)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(1234)};
    inet_pton(AF_INET, ip, &a.sin_addr);
    return a;
}

/* Seconds until fd reads end-of-file, or -1 if it does not within limit seconds. */
static double eof_after(int fd, double limit)
{
    double t0 = xd_now();
    struct pollfd p = {.fd = fd, .events = POLLIN};
    while (xd_now() - t0 < limit) {
        if (poll(&p, 1, 10) > 0) {
            char b;
            if (read(fd, &b, 1) == 0)
                return xd_now() - t0;
        }
    }
    return -1;
}

static struct xd_conn_guard *make(double header, double body, int cap)
{
    struct xd_conn_guard_opts o = {.header_timeout = header, .body_timeout = body,
                                   .idle_timeout = 100, .over_cap_grace = 0.2,
                                   .max_per_client = cap, .max_over_cap = 1};
    struct xd_conn_guard *g = NULL;
    struct xd_err err = {{0}};
    CHECK(xd_conn_guard_create(&o, &g, &err) == XD_OK, "%s", err.msg);
    return g;
}

static void test_deadlines_cut_and_say_why(void)
{
    struct xd_conn_guard *g = make(0.6, 0.6, 0);
    int hdr[2], body[2], ans[2];
    socketpair(AF_UNIX, SOCK_STREAM, 0, hdr);
    socketpair(AF_UNIX, SOCK_STREAM, 0, body);
    socketpair(AF_UNIX, SOCK_STREAM, 0, ans);
    struct sockaddr_in a = v4("10.0.0.1");
    struct xd_conn *ch = xd_conn_guard_open(g, hdr[0], (struct sockaddr *)&a);
    struct xd_conn *cb = xd_conn_guard_open(g, body[0], (struct sockaddr *)&a);
    struct xd_conn *ca = xd_conn_guard_open(g, ans[0], (struct sockaddr *)&a);
    CHECK(xd_conn_guard_count(g) == 3, "%d registered", xd_conn_guard_count(g));
    struct timespec ts = {0, 400 * 1000000L};
    nanosleep(&ts, NULL);
    /* re-entering HEADERS (a request line) keeps the deadline; BODY starts its own */
    xd_conn_guard_enter(g, ch, XD_CONN_HEADERS);
    xd_conn_guard_enter(g, cb, XD_CONN_BODY);
    xd_conn_guard_enter(g, ca, XD_CONN_ANSWERING);
    double t_hdr = eof_after(hdr[1], 2); /* 0.2 s more; 0.6 had the deadline restarted */
    CHECK(t_hdr > 0.05 && t_hdr < 0.45, "headers cut after %.3f s more", t_hdr);
    CHECK(xd_conn_guard_cut(g, ch) == XD_CONN_CUT_HEADERS, "cut %d", xd_conn_guard_cut(g, ch));
    double t_body = eof_after(body[1], 2); /* 0.6 s from the enter, 0.2 s of it gone */
    CHECK(t_body > 0.2 && t_body < 0.8, "body cut after %.3f s more", t_body);
    CHECK(xd_conn_guard_cut(g, cb) == XD_CONN_CUT_BODY, "cut %d", xd_conn_guard_cut(g, cb));
    CHECK(eof_after(ans[1], 0.8) < 0, "an answering connection was cut");
    CHECK(xd_conn_guard_close(g, ca) == XD_CONN_CUT_NONE, "answering: no cut");
    CHECK(xd_conn_guard_close(g, ch) == XD_CONN_CUT_HEADERS, "close says the cut");
    CHECK(xd_conn_guard_close(g, cb) == XD_CONN_CUT_BODY, "close says the cut");
    CHECK(xd_conn_guard_count(g) == 0, "%d left", xd_conn_guard_count(g));
    xd_conn_guard_destroy(g);
    for (int i = 0; i < 2; i++) {
        close(hdr[i]);
        close(body[i]);
        close(ans[i]);
    }
}

static void test_per_client_cap(void)
{
    struct xd_conn_guard *g = make(10, 10, 2);
    int fds[5][2];
    for (int i = 0; i < 5; i++)
        socketpair(AF_UNIX, SOCK_STREAM, 0, fds[i]);
    struct sockaddr_in a = v4("192.0.2.7"), b = v4("192.0.2.8");
    struct sockaddr_in6 mapped = {.sin6_family = AF_INET6};
    inet_pton(AF_INET6, "::ffff:192.0.2.7", &mapped.sin6_addr);
    struct xd_conn *c0 = xd_conn_guard_open(g, fds[0][0], (struct sockaddr *)&a);
    struct xd_conn *c1 = xd_conn_guard_open(g, fds[1][0], (struct sockaddr *)&mapped);
    struct xd_conn *c2 = xd_conn_guard_open(g, fds[2][0], (struct sockaddr *)&a);
    struct xd_conn *c3 = xd_conn_guard_open(g, fds[3][0], (struct sockaddr *)&b);
    CHECK(!xd_conn_guard_over_cap(g, c0, NULL) && !xd_conn_guard_over_cap(g, c1, NULL),
          "two admitted");
    CHECK(xd_conn_guard_over_cap(g, c2, NULL), "the third from one address (one of them mapped)");
    CHECK(!xd_conn_guard_over_cap(g, c3, NULL), "another address is not counted with it");
    /* two admitted and max_over_cap (1) waiting: the next is not even accepted */
    CHECK(!xd_conn_guard_admit(g, (struct sockaddr *)&a), "accepted past max_over_cap");
    CHECK(!xd_conn_guard_admit(g, (struct sockaddr *)&mapped), "the mapped form too");
    CHECK(xd_conn_guard_admit(g, (struct sockaddr *)&b), "another address refused");
    /* over the cap, a connection has over_cap_grace for its headers */
    double t = eof_after(fds[2][1], 2);
    CHECK(t > 0.1 && t < 0.6, "over-cap cut after %.3f s", t);
    CHECK(xd_conn_guard_cut(g, c2) == XD_CONN_CUT_OVER_CAP, "cut %d", xd_conn_guard_cut(g, c2));
    CHECK(eof_after(fds[0][1], 0.1) < 0, "an admitted one was cut");
    /* one that was over is admitted once another left */
    struct xd_conn *c4 = xd_conn_guard_open(g, fds[4][0], (struct sockaddr *)&a);
    CHECK(xd_conn_guard_over_cap(g, c4, NULL), "over while two are open");
    CHECK(!xd_conn_guard_admit(g, (struct sockaddr *)&a), "c4 waits: no more");
    xd_conn_guard_close(g, c0);
    CHECK(!xd_conn_guard_over_cap(g, c4, NULL), "admitted after one left");
    xd_conn_guard_close(g, c1);
    xd_conn_guard_close(g, c2);
    xd_conn_guard_close(g, c3);
    /* c4 is left registered: destroy frees it */
    xd_conn_guard_destroy(g);
    xd_conn_guard_destroy(NULL);
    for (int i = 0; i < 5; i++) {
        close(fds[i][0]);
        close(fds[i][1]);
    }
}

/* An over-cap connection whose older ones leave during its grace gets the header timeout. */
static void test_over_cap_promoted_in_its_grace(void)
{
    struct xd_conn_guard *g = make(0.8, 0.8, 1); /* grace 0.2 s */
    int x[2], y[2];
    socketpair(AF_UNIX, SOCK_STREAM, 0, x);
    socketpair(AF_UNIX, SOCK_STREAM, 0, y);
    struct sockaddr_in a = v4("198.51.100.1");
    struct xd_conn *cx = xd_conn_guard_open(g, x[0], (struct sockaddr *)&a);
    struct xd_conn *cy = xd_conn_guard_open(g, y[0], (struct sockaddr *)&a);
    CHECK(!xd_conn_guard_over_cap(g, cx, NULL) && xd_conn_guard_over_cap(g, cy, NULL),
          "the second over");
    xd_conn_guard_close(g, cx);
    CHECK(eof_after(y[1], 0.45) < 0, "cut in its grace though the older one left");
    double t = eof_after(y[1], 2); /* the header deadline: 0.8 s from the open */
    CHECK(t > 0.1 && t < 0.6, "cut %.3f s after the grace", t);
    CHECK(xd_conn_guard_close(g, cy) == XD_CONN_CUT_HEADERS, "cut as a header timeout");
    xd_conn_guard_destroy(g);
    for (int i = 0; i < 2; i++) {
        close(x[i]);
        close(y[i]);
    }
}

/* max_total counts every address: past it the newest are over (and say so), past
 * max_over_total more none is accepted, and one that was over is served once an older left;
 * over it, a connection without headers is cut after the grace as over the total. */
static void test_max_total_over_all_addresses(void)
{
    struct xd_conn_guard_opts o = {.header_timeout = 5, .body_timeout = 5, .idle_timeout = 100,
                                   .over_cap_grace = 0.2, .max_per_client = 0,
                                   .max_total = 2, .max_over_total = 1};
    struct xd_conn_guard *g = NULL;
    struct xd_err err = {{0}};
    CHECK(xd_conn_guard_create(&o, &g, &err) == XD_OK, "%s", err.msg);
    int fds[4][2];
    for (int i = 0; i < 4; i++)
        socketpair(AF_UNIX, SOCK_STREAM, 0, fds[i]);
    struct sockaddr_in a = v4("203.0.113.1"), b = v4("203.0.113.2"), c = v4("203.0.113.3");
    struct xd_conn *c0 = xd_conn_guard_open(g, fds[0][0], (struct sockaddr *)&a);
    struct xd_conn *c1 = xd_conn_guard_open(g, fds[1][0], (struct sockaddr *)&b);
    struct xd_conn *c2 = xd_conn_guard_open(g, fds[2][0], (struct sockaddr *)&c);
    bool total = false;
    CHECK(!xd_conn_guard_over_cap(g, c0, &total) && !total, "the first over");
    CHECK(!xd_conn_guard_over_cap(g, c1, &total) && !total, "the second over");
    CHECK(xd_conn_guard_over_cap(g, c2, &total) && total, "the third not over the total");
    CHECK(!xd_conn_guard_admit(g, (struct sockaddr *)&a), "accepted past max_over_total");
    double t = eof_after(fds[2][1], 2);
    CHECK(t > 0.1 && t < 0.6, "over-total cut after %.3f s", t);
    CHECK(xd_conn_guard_cut(g, c2) == XD_CONN_CUT_OVER_TOTAL, "cut %d", xd_conn_guard_cut(g, c2));
    xd_conn_guard_close(g, c2);
    struct xd_conn *c3 = xd_conn_guard_open(g, fds[3][0], (struct sockaddr *)&c);
    CHECK(xd_conn_guard_over_cap(g, c3, NULL), "over while two are open");
    xd_conn_guard_close(g, c0);
    CHECK(!xd_conn_guard_over_cap(g, c3, &total) && !total, "not served after one left");
    xd_conn_guard_close(g, c1);
    xd_conn_guard_close(g, c3);
    xd_conn_guard_destroy(g);
    for (int i = 0; i < 4; i++) {
        close(fds[i][0]);
        close(fds[i][1]);
    }
}

int main(void)
{
    RUN(test_deadlines_cut_and_say_why);
    RUN(test_per_client_cap);
    RUN(test_over_cap_promoted_in_its_grace);
    RUN(test_max_total_over_all_addresses);
    return test_summary();
}
