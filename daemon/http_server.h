/* The HTTP layer of `expertd serve` (http_server.c): listening and stopping. */
#ifndef XD_HTTP_SERVER_H
#define XD_HTTP_SERVER_H

#include "daemon/server.h"
#include "engine/base/status.h"

/* Starts listening on cfg->host:cfg->port (0: ephemeral; s->port gets the bound one). */
int xd_http_start(struct xd_server *s, struct xd_err *err);
/* Stops listening and joins every connection thread. Accepts a server never started. */
void xd_http_stop(struct xd_server *s);

#endif
