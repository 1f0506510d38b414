/* Parked connections (daemon/conn_park.c) in a real event-driven libmicrohttpd daemon: a kick
 * resumes a parked connection (the access handler is called once more, not in a loop), a kick
 * that comes before the suspend makes it decline, the timer resumes one nobody kicks, a client
 * that hangs up while parked is seen and its connection resumed, and closing the park resumes
 * every parked connection (so MHD_stop_daemon finds none suspended) and refuses new parking.
 * The access handler here plays api_generate.c's part: it parks on its final call and answers
 * with what woke it. */
#include <microhttpd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "daemon/conn_park.h"
#include "engine/base/clock.h"
#include "tests/test.h"

static struct xd_conn_park *park;
static pthread_mutex_t last_lock = PTHREAD_MUTEX_INITIALIZER;
static struct xd_parked *last; /* the entry last parked (under last_lock) */
static atomic_int n_final_calls, n_hangups;

struct req {
    struct xd_parked *w;
    int calls; /* final calls of the access handler */
};

static enum MHD_Result answer(struct MHD_Connection *conn, const char *text)
{
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(strlen(text), (void *)text, MHD_RESPMEM_MUST_COPY);
    enum MHD_Result ok = MHD_queue_response(conn, 200, resp);
    MHD_destroy_response(resp);
    return ok;
}

/* URL /kick, /timer, /hangup, /close: parks until woken; /self-kick is kicked before it parks. */
static enum MHD_Result handler(void *cls, struct MHD_Connection *conn, const char *url,
                               const char *method, const char *version, const char *data,
                               size_t *data_size, void **con_cls)
{
    (void)cls, (void)method, (void)version, (void)data;
    struct req *r = *con_cls;
    if (!r) {
        *con_cls = calloc(1, sizeof *r);
        return MHD_YES;
    }
    if (*data_size) {
        *data_size = 0;
        return MHD_YES;
    }
    atomic_fetch_add(&n_final_calls, 1);
    if (r->calls++ == 0) {
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
        r->w = xd_conn_park_add(park, conn, ci->connect_fd);
        CHECK(r->w != NULL, "xd_conn_park_add failed");
        if (strcmp(url, "/self-kick") == 0) /* a sink's kick between looking and parking */
            xd_conn_park_kick(park, r->w);
        pthread_mutex_lock(&last_lock);
        last = r->w;
        pthread_mutex_unlock(&last_lock);
        double wake = xd_now() + (strcmp(url, "/timer") == 0 ? 0.2 : 60);
        if (xd_conn_park_suspend(park, r->w, wake))
            return MHD_YES; /* no response: called again once resumed */
        return answer(conn, xd_conn_park_closed(park) ? "closed" : "declined");
    }
    if (xd_conn_park_hung_up(park, r->w)) {
        atomic_fetch_add(&n_hangups, 1);
        return MHD_NO;
    }
    return answer(conn, "resumed");
}

static void completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                      enum MHD_RequestTerminationCode toe)
{
    (void)cls, (void)conn, (void)toe;
    struct req *r = *con_cls;
    if (!r)
        return;
    pthread_mutex_lock(&last_lock);
    if (last == r->w)
        last = NULL;
    pthread_mutex_unlock(&last_lock);
    xd_conn_park_remove(park, r->w);
    free(r);
    *con_cls = NULL;
}

static struct MHD_Daemon *start(unsigned short *ret_port)
{
    struct xd_err err = {{0}};
    CHECK(xd_conn_park_create(&park, &err) == XD_OK, "%s", err.msg);
    struct MHD_Daemon *d = MHD_start_daemon(
        MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME, 0, NULL,
        NULL, handler, NULL, MHD_OPTION_NOTIFY_COMPLETED, completed, NULL,
        MHD_OPTION_THREAD_POOL_SIZE, 2u, MHD_OPTION_END);
    CHECK(d != NULL, "MHD_start_daemon failed");
    *ret_port = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT)->port;
    return d;
}

static void stop(struct MHD_Daemon *d)
{
    xd_conn_park_close(park);
    MHD_stop_daemon(d);
    xd_conn_park_destroy(park);
    park = NULL;
}

static int send_get(unsigned short port, const char *path)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    CHECK(connect(fd, (struct sockaddr *)&a, sizeof a) == 0, "connect");
    char req[128];
    int n = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                     path);
    CHECK(write(fd, req, (size_t)n) == n, "write");
    return fd;
}

/* Reads fd until the server closes it (at most limit seconds); the bytes in buf. */
static void read_all(int fd, char *buf, size_t cap, double limit)
{
    struct timeval tv = {.tv_sec = 0, .tv_usec = 100000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    size_t len = 0;
    double t0 = xd_now();
    while (len + 1 < cap && xd_now() - t0 < limit) {
        ssize_t n = read(fd, buf + len, cap - 1 - len);
        if (n == 0)
            break;
        if (n > 0)
            len += (size_t)n;
    }
    buf[len] = '\0';
    close(fd);
}

/* Waits until n connections are parked (at most 10 s). */
static bool wait_parked(int n)
{
    double t0 = xd_now();
    while (xd_conn_park_count(park) != n && xd_now() - t0 < 10)
        usleep(1000);
    return xd_conn_park_count(park) == n;
}

static void test_kick_resumes_once(void)
{
    unsigned short port;
    struct MHD_Daemon *d = start(&port);
    atomic_store(&n_final_calls, 0);
    int fd = send_get(port, "/kick");
    CHECK(wait_parked(1), "the request never parked");
    usleep(100000); /* parked: MHD calls nothing meanwhile (no busy loop) */
    CHECK(atomic_load(&n_final_calls) == 1, "%d calls while parked", atomic_load(&n_final_calls));
    pthread_mutex_lock(&last_lock);
    xd_conn_park_kick(park, last);
    xd_conn_park_kick(park, last); /* a second kick while it resumes is harmless */
    pthread_mutex_unlock(&last_lock);
    char buf[1024];
    read_all(fd, buf, sizeof buf, 5);
    CHECK_CONTAINS(buf, "200 OK");
    CHECK_CONTAINS(buf, "resumed");
    CHECK(atomic_load(&n_final_calls) == 2, "%d final calls", atomic_load(&n_final_calls));
    stop(d);
}

static void test_kick_before_suspend_declines(void)
{
    unsigned short port;
    struct MHD_Daemon *d = start(&port);
    char buf[1024];
    read_all(send_get(port, "/self-kick"), buf, sizeof buf, 5);
    CHECK_CONTAINS(buf, "declined");
    CHECK(xd_conn_park_count(park) == 0, "%d parked", xd_conn_park_count(park));
    stop(d);
}

static void test_timer_resumes(void)
{
    unsigned short port;
    struct MHD_Daemon *d = start(&port);
    char buf[1024];
    read_all(send_get(port, "/timer"), buf, sizeof buf, 10);
    CHECK_CONTAINS(buf, "resumed");
    stop(d);
}

static void test_hangup_while_parked_resumes(void)
{
    unsigned short port;
    struct MHD_Daemon *d = start(&port);
    atomic_store(&n_hangups, 0);
    int fd = send_get(port, "/hangup");
    CHECK(wait_parked(1), "the request never parked");
    close(fd); /* nothing written to it: only the park's watcher can see this */
    double t0 = xd_now();
    while (atomic_load(&n_hangups) == 0 && xd_now() - t0 < 10)
        usleep(1000);
    CHECK(atomic_load(&n_hangups) == 1, "the hangup was not seen");
    CHECK(xd_conn_park_count(park) == 0, "%d parked", xd_conn_park_count(park));
    stop(d);
}

static void test_close_resumes_every_parked_one(void)
{
    unsigned short port;
    struct MHD_Daemon *d = start(&port);
    int fds[5];
    for (int i = 0; i < 5; i++)
        fds[i] = send_get(port, "/close");
    CHECK(wait_parked(5), "%d of 5 parked", xd_conn_park_count(park));
    xd_conn_park_close(park);
    CHECK(xd_conn_park_count(park) == 0, "%d still parked", xd_conn_park_count(park));
    for (int i = 0; i < 5; i++) {
        char buf[1024];
        read_all(fds[i], buf, sizeof buf, 5);
        CHECK_CONTAINS(buf, "resumed");
    }
    /* closed: a new request declines to park */
    char buf[1024];
    read_all(send_get(port, "/kick"), buf, sizeof buf, 5);
    CHECK_CONTAINS(buf, "closed");
    stop(d); /* MHD_stop_daemon would abort with a connection still suspended */
}

int main(void)
{
    RUN(test_kick_resumes_once);
    RUN(test_kick_before_suspend_declines);
    RUN(test_timer_resumes);
    RUN(test_hangup_while_parked_resumes);
    RUN(test_close_resumes_every_parked_one);
    return test_summary();
}
