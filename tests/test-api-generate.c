/* The generation endpoints (daemon/api_generate.c) out of memory: a real HTTP server
 * (xd_http_start on an ephemeral port) over the real scheduler and a fake engine that always
 * picks one token, with allocations made to fail through the daemon's test hook
 * (daemon/fault.h). Each case is a request whose answer must be a whole response or an error
 * (500, or a stream's error event), never a crash, a hang or a silently short 200. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "config/server_config.h"
#include "daemon/fault.h"
#include "daemon/http_server.h"
#include "daemon/server.h"
#include "tests/test.h"

/* ---- a fake engine: every row of logits picks TOKEN ---- */

enum { MAX_BATCH = 256, N_VOCAB_MAX = 4096 };

struct fake {
    int n_vocab;
    int32_t token;   /* the token every step picks: one that decodes to text */
    float *logits;   /* (MAX_BATCH, n_vocab) */
    int32_t experts[MAX_BATCH]; /* (MAX_BATCH, 1 layer, top 1): all expert 0 */
    float weights[MAX_BATCH];
};

static int fake_forward(void *ctx, const struct xd_batch *batch, struct xd_forward_out *ret_out,
                        struct xd_err *err)
{
    (void)err;
    struct fake *f = ctx;
    int rows = 0, tokens = 0;
    for (int s = 0; s < batch->n_seqs; s++) {
        tokens += batch->seqs[s].n_tokens;
        if (batch->seqs[s].logits == XD_LOGITS_NONE)
            continue;
        float *lg = f->logits + (size_t)rows * (size_t)f->n_vocab;
        for (int v = 0; v < f->n_vocab; v++)
            lg[v] = v == f->token ? 50.0f : 0.0f; /* sampled at temperature 1: still always token */
        rows++;
    }
    for (int t = 0; t < tokens; t++)
        f->weights[t] = 1.0f;
    *ret_out = (struct xd_forward_out){
        .logits = f->logits, .n_logit_rows = rows,
        .routing = {.n_tokens = tokens, .n_moe_layers = 1, .top_k = 1, .experts = f->experts,
                    .weights = f->weights},
    };
    return XD_OK;
}

/* ---- the server ---- */

static struct fake fake;
static struct xd_server_config cfg;
static struct xd_server srv;
static struct xd_tokenizer *tok;

static bool server_start(const char *fixtures)
{
    struct xd_err err = {{0}};
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/tokenizers/qwen2", fixtures);
    if (xd_tokenizer_load(dir, &tok, &err) < 0) {
        fprintf(stderr, "tokenizer: %s\n", err.msg);
        return false;
    }
    fake.n_vocab = xd_tokenizer_vocab_size(tok);
    fake.token = xd_tokenizer_token_id(tok, "a");
    if (fake.n_vocab > N_VOCAB_MAX || fake.token < 0)
        return false;
    fake.logits = calloc((size_t)MAX_BATCH * (size_t)fake.n_vocab, sizeof *fake.logits);

    xd_server_config_init(&cfg);
    cfg.port = 0;
    cfg.request_timeout = 30;
    srv.cfg = &cfg;
    srv.model_name = "fake";
    srv.log_level = XD_LOG_WARN;
    srv.backend = "cpu";
    atomic_store(&srv.next_id, 1);
    pthread_rwlock_init(&srv.sched_lock, NULL);
    srv.metrics = xd_metrics_create();
    srv.tok = tok;
    srv.vocab_size = fake.n_vocab;
    srv.max_context = 1024;

    static struct xd_step_engine eng;
    eng = (struct xd_step_engine){
        .ctx = &fake, .forward = fake_forward, .n_vocab = fake.n_vocab, .n_kv_blocks = 256,
        .block_size = 16, .max_batch_tokens = MAX_BATCH, .max_context = 1024,
        .n_moe_layers = 1, .top_k = 1, .n_experts = 1,
    };
    struct xd_sched_opts so = xd_sched_defaults();
    if (xd_sched_create(&eng, tok, NULL, 0, &so, &srv.sched, &err) < 0 ||
        xd_sched_start(srv.sched, &err) < 0 || xd_http_start(&srv, &err) < 0) {
        fprintf(stderr, "server: %s\n", err.msg);
        return false;
    }
    atomic_store(&srv.state, XD_SERVER_READY);
    return true;
}

static void server_stop(void)
{
    pthread_rwlock_wrlock(&srv.sched_lock);
    xd_sched_destroy(srv.sched);
    srv.sched = NULL;
    pthread_rwlock_unlock(&srv.sched_lock);
    xd_http_stop(&srv);
    xd_metrics_destroy(srv.metrics);
    xd_tokenizer_destroy(tok);
    free(fake.logits);
}

/* ---- a raw HTTP client ---- */

struct reply {
    int status;      /* 0: no complete answer before the deadline */
    char body[65536]; /* de-chunked when the response was chunked; NUL-terminated */
};

/* Undoes chunked transfer encoding of src into dst (cap bytes); false when malformed. */
static bool dechunk(const char *src, char *dst, size_t cap)
{
    size_t n = 0;
    for (;;) {
        char *end;
        unsigned long size = strtoul(src, &end, 16);
        if (end == src || strncmp(end, "\r\n", 2) != 0)
            return false;
        src = end + 2;
        if (size == 0)
            break;
        if (strlen(src) < size + 2 || n + size >= cap)
            return false;
        memcpy(dst + n, src, size);
        n += size;
        src += size + 2;
    }
    dst[n] = '\0';
    return true;
}

/* POSTs body to path with Connection: close and reads the answer until the server closes,
 * for at most 10 s. */
static void post(const char *path, const char *body, struct reply *ret)
{
    static char raw[1 << 17];
    ret->status = 0;
    ret->body[0] = '\0';
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(srv.port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) < 0) {
        if (fd >= 0)
            close(fd);
        return;
    }
    char head[512];
    int hn = snprintf(head, sizeof head, "POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: "
                      "application/json\r\nContent-Length: %zu\r\nConnection: close\r\n\r\n",
                      path, strlen(body));
    if (write(fd, head, (size_t)hn) != hn ||
        write(fd, body, strlen(body)) != (ssize_t)strlen(body)) {
        close(fd);
        return;
    }
    size_t n = 0;
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    bool closed = false;
    while (n < sizeof raw - 1) {
        clock_gettime(CLOCK_MONOTONIC, &t);
        int left_ms = 10000 - (int)((t.tv_sec - t0.tv_sec) * 1000 +
                                    (t.tv_nsec - t0.tv_nsec) / 1000000);
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (left_ms <= 0 || poll(&p, 1, left_ms) <= 0)
            break;
        ssize_t r = read(fd, raw + n, sizeof raw - 1 - n);
        if (r <= 0) {
            closed = true;
            break;
        }
        n += (size_t)r;
    }
    close(fd);
    raw[n] = '\0';
    char *sep = strstr(raw, "\r\n\r\n");
    if (!closed || !sep || sscanf(raw, "HTTP/1.1 %d", &ret->status) != 1) {
        ret->status = 0;
        return;
    }
    *sep = '\0';
    const char *payload = sep + 4;
    if (strcasestr(raw, "transfer-encoding: chunked")) {
        if (!dechunk(payload, ret->body, sizeof ret->body))
            snprintf(ret->body, sizeof ret->body, "(bad chunking)");
    } else {
        snprintf(ret->body, sizeof ret->body, "%s", payload);
    }
}

static int count(const char *s, const char *needle)
{
    int n = 0;
    for (const char *p = s; (p = strstr(p, needle)); p += strlen(needle))
        n++;
    return n;
}

/* Whether a plain request still works: 200 with every token (the server survived). */
static void expect_healthy(const char *after)
{
    xd_fault_fail_after(XD_FAULT_JOB, -1);
    xd_fault_fail_after(XD_FAULT_EVENT, -1);
    xd_fault_fail_after(XD_FAULT_OUTPUT, -1);
    struct reply r;
    post("/v1/completions", "{\"prompt\":[1,2,3],\"max_tokens\":4}", &r);
    CHECK(r.status == 200 && strstr(r.body, "\"text\":\"aaaa\""), "after %s: %d %s", after,
          r.status, r.body);
}

/* ---- the cases ---- */

/* The choices cannot be allocated: 500, and the completion callback walks no missing array. */
static void test_choices_allocation_fails(void)
{
    struct reply r;
    xd_fault_fail_after(XD_FAULT_JOB, 0);
    post("/v1/completions", "{\"prompt\":[1,2],\"max_tokens\":3,\"n\":2}", &r);
    CHECK(r.status == 500, "status %d: %s", r.status, r.body);
    CHECK_CONTAINS(r.body, "\"type\":\"server_error\"");
    CHECK_CONTAINS(r.body, "out of memory");
    /* the second choice's finish event is what fails: the first is allocated already */
    xd_fault_fail_after(XD_FAULT_JOB, 2);
    post("/v1/completions", "{\"prompt\":[1,2],\"max_tokens\":3,\"n\":2}", &r);
    CHECK(r.status == 500, "status %d: %s", r.status, r.body);
    expect_healthy("a failed job allocation");
}

/* The sink cannot copy events: the finish still arrives (it is preallocated), and the tokens
 * that were lost make the answer a 500 (a stream: an error event), not a hang or a short 200. */
static void test_lost_events_still_finish(void)
{
    struct reply r;
    xd_fault_fail_after(XD_FAULT_EVENT, 0);
    post("/v1/completions", "{\"prompt\":[1,2],\"max_tokens\":5}", &r);
    CHECK(r.status == 500, "whole: status %d (0: no answer in 10 s): %s", r.status, r.body);
    CHECK_CONTAINS(r.body, "out of memory");
    expect_healthy("lost events (whole response)");

    xd_fault_fail_after(XD_FAULT_EVENT, 2); /* two tokens make it, the rest do not */
    post("/v1/completions", "{\"prompt\":[1,2],\"max_tokens\":5,\"stream\":true}", &r);
    CHECK(r.status == 200, "stream: status %d (0: no end in 10 s): %s", r.status, r.body);
    CHECK(count(r.body, "data: {\"error\"") == 1, "stream: no error event: %s", r.body);
    CHECK_CONTAINS(r.body, "out of memory");
    /* the choice ends with its error, not a finish reason; the stream itself is framed */
    CHECK(!strstr(r.body, "\"finish_reason\":\"length\""), "stream finished: %s", r.body);
    CHECK_CONTAINS(r.body, "data: [DONE]\n\n");
    expect_healthy("lost events (stream)");
}

/* An append to the response text fails: 500, never a 200 with part of the text. */
static void test_failed_append_whole_is_500(void)
{
    struct reply r;
    xd_fault_fail_after(XD_FAULT_OUTPUT, 2);
    post("/v1/completions", "{\"prompt\":[1,2],\"max_tokens\":6}", &r);
    CHECK(r.status == 500, "status %d: %s", r.status, r.body);
    CHECK_CONTAINS(r.body, "out of memory");
    expect_healthy("a failed append (whole response)");
}

/* An append to the SSE bytes fails: the stream ends with an error event after whole events
 * only, never silently short. */
static void test_failed_append_stream_ends_with_error(void)
{
    struct reply r;
    xd_fault_fail_after(XD_FAULT_OUTPUT, 4);
    post("/v1/completions", "{\"prompt\":[1,2],\"max_tokens\":8,\"stream\":true}", &r);
    CHECK(r.status == 200, "status %d: %s", r.status, r.body);
    CHECK(count(r.body, "data: {\"error\"") == 1, "no error event: %s", r.body);
    CHECK_CONTAINS(r.body, "out of memory");
    CHECK(!strstr(r.body, "[DONE]"), "stream ends as if whole: %s", r.body);
    /* every event is whole: "data: " ... "\n\n", and the error is the last */
    int events = count(r.body, "data: "), ends = count(r.body, "}\n\n");
    CHECK(events >= 2 && events == ends, "%d events, %d whole: %s", events, ends, r.body);
    const char *err = strstr(r.body, "data: {\"error\"");
    CHECK(err && strcmp(err + strcspn(err, "\n"), "\n\n") == 0, "error not last: %s", r.body);
    expect_healthy("a failed append (stream)");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: test-api-generate FIXTURES_DIR [CASE]\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    if (!server_start(argv[1])) {
        printf("FAIL server_start\n");
        return 1;
    }
    expect_healthy("start");
    /* argv[2], when given, names the one case to run */
#define CASE(fn) if (argc < 3 || strcmp(argv[2], #fn) == 0) RUN(fn)
    CASE(test_choices_allocation_fails);
    CASE(test_lost_events_still_finish);
    CASE(test_failed_append_whole_is_500);
    CASE(test_failed_append_stream_ends_with_error);
#undef CASE
    server_stop();
    return test_summary();
}
