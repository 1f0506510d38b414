/* The state `expertd serve` shares between its HTTP threads and its main thread: the loaded
 * model, the scheduler, the metrics and the lifecycle (loading, ready, draining). */
#ifndef XD_SERVER_H
#define XD_SERVER_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config/server_config.h"
#include "daemon/metrics.h"
#include "engine/base/clock.h" /* xd_now: arrivals, deadlines, keep-alives of every file here */
#include "engine/text/token_constraint.h"
#include "engine/text/tokenizer.h"
#include "scheduler/scheduler.h"

struct xd_conn_guard;
struct xd_conn_park;

/* What loading is doing now (/health's progress.phase). */
enum xd_load_phase {
    XD_LOAD_MAPPING, /* config, safetensors headers, mapping the files */
    XD_LOAD_READING, /* reading the mapped checkpoint into memory */
    XD_LOAD_ENGINE,  /* tokenizer, the backend (weights converted or copied to the GPU), KV */
};

enum xd_server_state {
    XD_SERVER_LOADING,  /* listening; the model is not loaded yet: 503 */
    XD_SERVER_READY,
    XD_SERVER_DRAINING, /* SIGTERM: in-flight requests finish, new ones get 503 */
};

enum xd_log_level { XD_LOG_ERROR, XD_LOG_WARN, XD_LOG_INFO, XD_LOG_DEBUG };

struct xd_server {
    const struct xd_server_config *cfg; /* borrowed */
    const char *model_name;             /* served model name */
    char *api_key;                      /* NULL: no key required */
    size_t api_key_len;
    enum xd_log_level log_level;
    const char *backend;                /* "cpu" or "cuda" */
    _Atomic int state;                  /* enum xd_server_state */
    _Atomic uint64_t next_id;           /* request ids in logs and responses */
    _Atomic int n_active;               /* generation requests whose response is not done */
    /* While loading: the checkpoint's bytes read of all (/health's progress, STATUS= lines);
     * load_total stays 0 until the files are mapped. */
    _Atomic uint64_t load_done;
    _Atomic uint64_t load_total;
    _Atomic int load_phase;             /* enum xd_load_phase */
    long long created;                  /* start time (Unix seconds) for /v1/models */

    /* Set once the model is loaded (state READY); read-only afterwards. */
    const struct xd_tokenizer *tok;     /* NULL: the model directory has no tokenizer.json */
    int vocab_size;
    int max_context;
    const struct xd_chat_template *chat; /* the parsed chat template; NULL: chat unavailable */
    const char *chat_error;             /* why chat is unavailable, or NULL */
    int reasoning_parser;               /* enum xd_reasoning_parser of chat output */
    int tool_syntax;                    /* enum xd_tool_syntax of chat output */
    struct xd_token_table *tokens;      /* every token's bytes, for constrained decoding (one
                                           reference); NULL without a tokenizer */

    /* The scheduler: submit and cancel hold the read lock, teardown the write lock, so no
     * HTTP thread reaches a destroyed scheduler. NULL before loading and after teardown. */
    pthread_rwlock_t sched_lock;
    struct xd_sched *sched;

    struct xd_metrics *metrics;
    struct MHD_Daemon *mhd;
    unsigned short port;                /* the bound port */
    struct MHD_Daemon *mhd_metrics;     /* --metrics-listen: /metrics and /health only; or NULL */
    unsigned short metrics_port;        /* its bound port */
    struct xd_conn_guard *guard;        /* deadlines and the per-client cap of both listeners */
    struct xd_conn_park *park;          /* generation requests' suspended connections */
};

/* printf-style logging to stderr at a level (dropped above the server's level). */
void xd_log(const struct xd_server *s, enum xd_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Cancels a scheduler request if the scheduler still exists. Thread-safe. */
void xd_server_cancel(struct xd_server *s, uint64_t id);

#endif
