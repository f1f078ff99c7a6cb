/* The HTTP API over the job manager: routes, the request head's checks, bodies handed to request.h, responses,
 * auth, CORS, SSE.
 *
 * Basic usage:
 *   sg_http_params p = sg_http_default_params();
 *   p.port = 0;                                   // any free port
 *   char err[256];
 *   sg_http *h = sg_http_start(p, metrics, err, sizeof err);   // answers /healthz at once, 503 for work
 *   printf("listening on http://%s:%d\n", p.host, sg_http_port(h));
 *   ... load the models, sg_jobs_new, store = sg_store_local_new(jobs) (or a redis store: store.h) ...
 *   sg_http_attach(h, store, sg_model_get_info(model), "cpu"); // ready: /readyz 200, work accepted
 *   ... on SIGTERM:
 *   sg_http_drain(h);                             // /readyz 503, new work 503
 *   sg_jobs_drain(jobs, 30);                      // the waiting clients get their answers
 *   sg_http_stop(h, 5.0);                         // waits for those answers to go out, then closes everything
 *   sg_jobs_free(jobs);
 *
 * Threads: libmicrohttpd runs its own event-loop threads (params.threads, epoll); handlers only parse, decode
 * the sketch and talk to the job manager. A synchronous generation or an event stream suspends its connection;
 * the job manager's watch callback (a worker thread) hands the result or the event over under that request's
 * mutex and resumes the connection. A watchdog thread notices clients that close a suspended connection (which
 * libmicrohttpd cannot see) and resumes them so that they are closed, which cancels their job.
 *
 * Errors: sg_http_start returns NULL with a message in err; the other calls cannot fail. Logging goes through
 * params.log only (one line per request at info; prompts only at debug; never the token); nothing here prints,
 * exits or aborts on a bad request.
 */
#ifndef SG_HTTP_H
#define SG_HTTP_H

#include <stddef.h>
#include <stdint.h>

#include "jobs.h"
#include "metrics.h"
#include "model.h"
#include "store.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct sg_http sg_http;

typedef struct {
  const char *host;              /* "127.0.0.1"; a numeric IPv4/IPv6 address or a name */
  int32_t port;                  /* 8080; 0 = any free port (see sg_http_port) */
  int32_t threads;               /* event-loop threads; 2 */
  int32_t max_connections;       /* 256 */
  int32_t connection_timeout_s;  /* 30; 1 .. 3600 (0 is refused). Suspended connections (waiting requests, streams)
                                    never time out */
  int32_t sse_keepalive_s;       /* 15: an event stream quiet this long gets a comment line, so that proxies and load
                                    balancers with idle timeouts keep it open; 0 = never */
  int64_t max_body_bytes;        /* 16 MiB */
  int64_t max_image_pixels;      /* 4096 x 4096 */
  int32_t max_steps;             /* 150 (the job manager's own limit also applies) */
  int32_t max_images;            /* 4 */
  int32_t max_prompt_bytes;      /* 2000 */
  int64_t default_timeout_ms;    /* 300000 */
  int64_t max_timeout_ms;        /* 3600000 */
  const char *cors_origins;      /* NULL or "": CORS off; comma-separated origins; "*" any origin */
  const char *token;             /* NULL or "": no authentication (copied) */
  int metrics_require_token;     /* 0 */
  int ui;                        /* 1: serve the sketch pad (server/web/) at / and /ui/{name}; 0: those answer 404 */
  const char *version;           /* reported by /v1/info; "unknown" */
  double result_ttl_s;           /* 600: how long the URLs of OpenAI url results last (the job manager's
                                    keep_finished_seconds: the job's images must outlive them) */
  int probes_only;               /* 0; 1: a cluster worker: /healthz, /readyz, /metrics, /v1/info only (jobs 404) */
  sg_jobs_log_fn log;            /* NULL: no logging */
  void *log_user;
} sg_http_params;

/* Returns the defaults listed above. */
sg_http_params sg_http_default_params(void);

/* Binds and starts serving. Until sg_http_attach, /healthz answers 200 and /readyz and the work routes 503. The
 * metrics object stays owned by the caller and must outlive the server. Returns NULL with a message in err when
 * the address cannot be resolved or bound, or the parameters are bad. */
sg_http *sg_http_start(sg_http_params p, sg_metrics *metrics, char *err, size_t errlen);

/* Returns the TCP port the server listens on (the chosen one when params.port was 0). */
int32_t sg_http_port(const sg_http *h);

/* Hands the job store and the model description (for /v1/info and limits) to the server and marks it ready. The
 * defaults of requests come from sg_store_model; model NULL (a frontend that loads none) takes the store's model
 * too. store and model stay owned by the caller and must outlive sg_http_stop; devices (copied) is reported by
 * /v1/info. Call it once it succeeds. Returns 0, or what sg_store_model returns (the server stays not ready). */
int sg_http_attach(sg_http *h, sg_store *store, const sg_model_info *model, const char *devices);

/* Marks the server draining: /readyz and new generation requests answer 503; status, image and event requests
 * are still served. */
void sg_http_drain(sg_http *h);

/* Waits up to grace_s seconds for requests that wait on a job (synchronous generations, event streams) to be
 * answered, then stops the server, closes every connection (cancelling the jobs of synchronous clients still
 * waiting) and frees h. NULL is ignored. */
void sg_http_stop(sg_http *h, double grace_s);

#ifdef __cplusplus
}
#endif

#endif
