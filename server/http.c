/* The HTTP API on libmicrohttpd: a route table of small handlers, the body handed to request.c, suspend/resume around
 * jobs, server-sent events, one error table, auth, CORS, request logs and metrics (see http.h).
 *
 * Its files (the types and functions they share: http_impl.h): http.c, the error table, responses, routing and the
 * server's start and stop; http_head.c, the request head and a request's life (libmicrohttpd's callbacks);
 * http_handlers.c, the handlers (a synchronous generation, the sketch pad); http_events.c, the waiting list,
 * suspension, the watchdog and server-sent events.
 *
 * Threading model. libmicrohttpd runs params.threads epoll event loops (MHD_USE_EPOLL_INTERNAL_THREAD with
 * MHD_OPTION_THREAD_POOL_SIZE) with MHD_ALLOW_SUSPEND_RESUME. Thread-per-connection would let a handler block
 * until its job ends, but it spends a thread on every waiting client and a blocked handler still cannot see the
 * client go away; with suspend/resume a waiting client costs a socket and a struct. Handlers never run inference:
 * a synchronous generation submits its job, watches it and suspends its connection; the watch callback (a worker
 * thread) copies the result and resumes the connection under the request's own mutex, and the resumed handler
 * answers. An event stream is a callback response whose reader drains a per-request buffer that the watch callback
 * fills; with nothing to send the reader suspends the connection (returning 0 without suspending would make
 * libmicrohttpd poll it in a busy loop) and the next event resumes it. libmicrohttpd never times out a suspended
 * connection (timeouts restart at resume), so neither waiting clients nor streams meet connection_timeout_s; but
 * it also cannot see a suspended client disconnect, so a watchdog thread peeks at the sockets of suspended
 * connections every WATCHDOG_MS and resumes those whose peer has gone; the handler then refuses to go on, the
 * connection closes, and MHD_OPTION_NOTIFY_COMPLETED (with a code other than COMPLETED_OK) cancels the job. The
 * watchdog also feeds a keep-alive comment to event streams quiet for sse_keepalive_s (proxies' idle timeouts).
 *
 * Locks: h->mu guards the list of requests that wait on jobs; r->mu guards one request's hand-over fields
 * (suspended, done, gone, the result, the event buffer). Order: h->mu, then r->mu, then libmicrohttpd's own. The
 * job manager calls our callbacks without its lock, so r->mu is never held while calling into sg_jobs.
 *
 * Per-request state is allocated at the first call of the access handler and freed only in sg_http_on_completed.
 */
#include "http.h"

#include <jansson.h>
#include <math.h>
#include <microhttpd.h>
#include <netdb.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>

#include "errbuf.h"
#include "http_impl.h"
#include "image.h"
#include "openai.h"
#include "request.h"
#include "store.h"

/* ---- errors: the one table of kinds and statuses, and the codes of other modules mapped onto it ---- */

static const struct {
  int status;
  const char *code;   /* error.code in the body */
  const char *reason; /* the rejection reason in /metrics (for refused generation requests) */
} ERRORS[] = {
    [E_BAD_REQUEST] = {400, "bad_request", "bad_request"},
    [E_UNAUTHORIZED] = {401, "unauthorized", "unauthorized"},
    [E_NOT_FOUND] = {404, "not_found", "not_found"},
    [E_METHOD] = {405, "method_not_allowed", "method_not_allowed"},
    [E_CONFLICT] = {409, "conflict", "conflict"},
    [E_GONE] = {410, "gone", "gone"},
    [E_TOO_LARGE] = {413, "payload_too_large", "too_large"},
    [E_UNSUPPORTED] = {415, "unsupported_media_type", "unsupported_media_type"},
    [E_INVALID] = {422, "invalid_parameter", "invalid"},
    [E_QUEUE_FULL] = {429, "queue_full", "queue_full"},
    [E_INTERNAL] = {500, "internal", "internal"},
    [E_TIMEOUT] = {504, "timeout", "timeout"},
    [E_NOT_READY] = {503, "not_ready", "not_ready"},
    [E_DRAINING] = {503, "draining", "draining"},
    [E_CANCELLED] = {409, "cancelled", "cancelled"},
    [E_URI_TOO_LONG] = {414, "uri_too_long", "uri_too_long"},
    [E_HEADERS_TOO_LARGE] = {431, "header_fields_too_large", "header_fields_too_large"},
    [E_UNAVAILABLE] = {503, "unavailable", "unavailable"},
};

static const struct {
  err_domain d;
  int code;
  err_kind kind;
} CODE_MAP[] = {
    {D_JOBS, SG_JOBS_EINVAL, E_INVALID},
    {D_JOBS, SG_JOBS_EFULL, E_QUEUE_FULL},
    {D_JOBS, SG_JOBS_EDRAINING, E_DRAINING},
    {D_JOBS, SG_JOBS_ENOTFOUND, E_NOT_FOUND},
    {D_JOBS, SG_JOBS_EEXPIRED, E_GONE},
    {D_JOBS, SG_JOBS_EFINISHED, E_CONFLICT},
    {D_JOBS, SG_JOBS_ENOIMAGE, E_NOT_FOUND},
    {D_JOBS, SG_STORE_EUNAVAILABLE, E_UNAVAILABLE},
    {D_JOBS, SG_STORE_ECONFLICT, E_CONFLICT},
    {D_JOBS, SG_STORE_EUNSUPPORTED, E_BAD_REQUEST},
    {D_JOB_ERROR, SG_JOB_ERR_INVALID, E_INVALID},
    {D_JOB_ERROR, SG_JOB_ERR_TIMEOUT, E_TIMEOUT},
    {D_JOB_ERROR, SG_JOB_ERR_CANCELLED, E_CANCELLED},
    {D_JOB_ERROR, SG_JOB_ERR_SHUTDOWN, E_DRAINING},
    {D_IMAGE, SG_IMAGE_EUNSUPPORTED, E_UNSUPPORTED},
    {D_IMAGE, SG_IMAGE_ETOOBIG, E_INVALID},
    {D_IMAGE, SG_IMAGE_ECORRUPT, E_BAD_REQUEST},
    {D_IMAGE, SG_IMAGE_EINVAL, E_BAD_REQUEST},
    {D_REQUEST, SG_REQUEST_EBAD, E_BAD_REQUEST},
    {D_REQUEST, SG_REQUEST_EINVALID, E_INVALID},
    {D_REQUEST, SG_REQUEST_ETOOLARGE, E_TOO_LARGE},
    {D_REQUEST, SG_REQUEST_EUNSUPPORTED, E_UNSUPPORTED},
    {D_OPENAI, SG_OPENAI_EBAD, E_BAD_REQUEST},
    {D_OPENAI, SG_OPENAI_EINVALID, E_INVALID},
    {D_OPENAI, SG_OPENAI_ENOTFOUND, E_NOT_FOUND},
};

/* Returns the kind of a module's error code; anything unlisted (out of memory, runtime, system) is internal. */
err_kind sg_http_kind_of(err_domain d, int code) {
  for (size_t i = 0; i < sizeof CODE_MAP / sizeof *CODE_MAP; i++)
    if (CODE_MAP[i].d == d && CODE_MAP[i].code == code) return CODE_MAP[i].kind;
  return E_INTERNAL;
}

double sg_http_now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* ---- the server and its requests (their structs: http_impl.h) ---- */

void sg_http_logf(sg_http *h, sg_jobs_log_level level, const char *fmt, ...) {
  if (!h->p.log) return;
  char line[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(line, sizeof line, fmt, ap);
  va_end(ap);
  h->p.log(h->p.log_user, level, line);
}

/* ---- responses ---- */

static const char EXPOSED[] = "X-Job-Id, X-Seed, X-Queue-Time-Ms, X-Inference-Time-Ms, Location, Retry-After";

/* Adds the headers every response gets, queues resp with status, records it for the log and drops our
 * reference. Returns libmicrohttpd's answer. */
enum MHD_Result sg_http_send_response(req *r, int status, struct MHD_Response *resp, uint64_t bytes) {
  if (!resp) return MHD_NO;
  if (!MHD_get_response_header(resp, "Cache-Control")) MHD_add_response_header(resp, "Cache-Control", "no-store");
  if (r->job_id[0]) MHD_add_response_header(resp, "X-Job-Id", r->job_id);
  if (r->origin) {
    MHD_add_response_header(resp, "Access-Control-Allow-Origin", r->origin);
    MHD_add_response_header(resp, "Access-Control-Expose-Headers", EXPOSED);
  }
  if (r->h->n_origins || r->h->any_origin) MHD_add_response_header(resp, "Vary", "Origin");
  if (r->close_conn) MHD_add_response_header(resp, MHD_HTTP_HEADER_CONNECTION, "close");
  enum MHD_Result ret = MHD_queue_response(r->conn, (unsigned)status, resp);
  MHD_destroy_response(resp);
  r->responded = 1;
  r->status = status;
  r->bytes = bytes;
  return ret;
}

/* A response holding body as compact JSON with its Content-Type (body is consumed: decref'ed here); *n gets its
 * length. Returns NULL when out of memory. */
struct MHD_Response *sg_http_json_response(json_t *body, size_t *n) {
  char *text = body ? json_dumps(body, JSON_COMPACT | JSON_REAL_PRECISION(15)) : NULL;
  json_decref(body);
  if (!text) return NULL;
  *n = strlen(text);
  json_free_t jfree; /* json_dumps' text goes back to jansson's allocator, whichever it is */
  json_get_alloc_funcs(NULL, &jfree);
  struct MHD_Response *resp = MHD_create_response_from_buffer_with_free_callback(*n, text, jfree);
  if (!resp) {
    jfree(text);
    return NULL;
  }
  MHD_add_response_header(resp, "Content-Type", "application/json");
  return resp;
}

/* Queues a JSON body (consumed: decref'ed here). */
enum MHD_Result sg_http_send_json(req *r, int status, json_t *body) {
  size_t n = 0;
  struct MHD_Response *resp = sg_http_json_response(body, &n);
  return resp ? sg_http_send_response(r, status, resp, n) : MHD_NO;
}

/* Seconds a client should wait before retrying a full queue: the mean job time times the jobs ahead, per worker. */
static int retry_after_s(sg_http *h) {
  sg_jobs_stats s;
  if (!h->store || sg_store_stats(h->store, &s)) return 1;
  double mean = s.inference_seconds.count ? s.inference_seconds.sum / (double)s.inference_seconds.count : 1.0;
  double est = ceil(mean * (s.queued + 1) / (s.workers > 0 ? s.workers : 1));
  return est < 1 ? 1 : est > 3600 ? 3600 : (int)est;
}

/* Queues the error body {"error": {"code", "message", "param"}} with kind's status and its extra headers. */
enum MHD_Result sg_http_send_error(req *r, err_kind k, const char *param, const char *fmt, ...) {
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  json_t *o = OAI(r) ? sg_openai_error_body(OAI_ROUTE(r), ERRORS[k].status, ERRORS[k].code, param, msg)
                     : json_pack("{s:{s:s,s:s,s:o}}", "error", "code", ERRORS[k].code, "message", msg, "param",
                                 param && *param ? json_string(param) : json_null());
  size_t n = 0;
  struct MHD_Response *resp = sg_http_json_response(o, &n);
  if (!resp) return MHD_NO;
  int status = ERRORS[k].status;
  if (status == 401)
    MHD_add_response_header(resp, "WWW-Authenticate",
                            MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "Authorization")
                                ? "Bearer realm=\"sketchguide\", error=\"invalid_token\""
                                : "Bearer realm=\"sketchguide\"");
  if (status == 405) MHD_add_response_header(resp, "Allow", r->allow);
  if (status == 429 || status == 503) {
    char ra[16];
    snprintf(ra, sizeof ra, "%d",
             status == 429 ? retry_after_s(r->h) : k == E_NOT_READY ? 5 : k == E_UNAVAILABLE ? 2 : 30);
    MHD_add_response_header(resp, "Retry-After", ra);
  }
  if (r->rt && (r->rt->flags & R_BODY) && !r->job_id[0] && !r->submit_failed)
    sg_metrics_reject(r->h->metrics, ERRORS[k].reason);
  return sg_http_send_response(r, status, resp, n);
}

/* Whether an error was recorded while reading the body, by the transport or by the parameters' parser. */
int sg_http_failed(const req *r) { return r->has_err || (r->q && sg_request_get_error(r->q)); }

/* Records the first error met while reading the body (unless the parser has one already); the body is drained and
 * the error sent at its end. */
void sg_http_record_error(req *r, err_kind k, const char *param, const char *fmt, ...) {
  if (sg_http_failed(r)) return;
  r->has_err = 1;
  r->ekind = k;
  snprintf(r->eparam, sizeof r->eparam, "%s", param ? param : "");
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(r->emsg, sizeof r->emsg, fmt, ap);
  va_end(ap);
}

/* Sends the error recorded by the transport or by the parser. */
enum MHD_Result sg_http_send_recorded(req *r) {
  const sg_request_error *e = r->q ? sg_request_get_error(r->q) : NULL;
  if (e) return sg_http_send_error(r, sg_http_kind_of(D_REQUEST, e->code), e->param, "%s", e->message);
  return sg_http_send_error(r, r->ekind, r->eparam, "%s", r->emsg);
}

/* Splits a module message "name: text" into its parameter name (written to param) when name is a request
 * parameter; returns the message unchanged. */
const char *sg_http_param_of_message(const char *msg, char *param, size_t cap) {
  param[0] = 0;
  const char *colon = strchr(msg, ':');
  if (!colon) return msg;
  size_t n = (size_t)(colon - msg);
  if (sg_request_is_param(msg, n) && n < cap) {
    memcpy(param, msg, n);
    param[n] = 0;
  }
  return msg;
}

/* ---- routing ---- */

static const route ROUTES[] = {
    {"GET", "/", sg_http_h_ui, R_OPEN | R_HEAD},
    {"GET", "/ui/{name}", sg_http_h_ui, R_OPEN | R_HEAD},
    {"GET", "/healthz", sg_http_h_healthz, R_OPEN | R_HEAD},
    {"GET", "/readyz", sg_http_h_readyz, R_OPEN | R_HEAD},
    {"GET", "/metrics", sg_http_h_metrics, R_METRICS | R_HEAD},
    {"GET", "/v1/info", sg_http_h_info, R_HEAD},
    {"POST", "/v1/generate", sg_http_h_generate, R_BODY},
    {"POST", "/v1/images/generations", sg_http_h_generate, R_BODY | R_OAI_GEN},
    {"POST", "/v1/images/edits", sg_http_h_generate, R_BODY | R_OAI_EDIT},
    {"GET", "/v1/images/files/{id}", sg_http_h_file, R_OPEN},
    {"GET", "/v1/jobs/{id}", sg_http_h_job_get, R_HEAD},
    {"DELETE", "/v1/jobs/{id}", sg_http_h_job_delete, 0},
    {"GET", "/v1/jobs/{id}/images/{i}", sg_http_h_job_image, R_HEAD},
    {"GET", "/v1/jobs/{id}/events", sg_http_h_job_events, 0},
};
#define N_ROUTES (sizeof ROUTES / sizeof *ROUTES)

/* Matches url against pattern, filling r->id and r->index. Returns 1 on a match. */
static int path_match(const char *pattern, const char *url, req *r) {
  const char *p = pattern, *u = url;
  while (*p && *u) {
    if (*p == '{') {
      const char *pe = strchr(p, '}');
      const char *ue = strchr(u, '/');
      size_t n = ue ? (size_t)(ue - u) : strlen(u);
      if (n == 0 || !pe) return 0;
      if (!strncmp(p, "{id}", 4) || !strncmp(p, "{name}", 6)) {
        if (n >= sizeof r->id) return 0;
        memcpy(r->id, u, n);
        r->id[n] = 0;
      } else {
        if (n > 6) return 0;
        int32_t v = 0;
        for (size_t k = 0; k < n; k++) {
          if (u[k] < '0' || u[k] > '9') return 0;
          v = v * 10 + (u[k] - '0');
        }
        r->index = v;
      }
      p = pe + 1;
      u += n;
      continue;
    }
    if (*p != *u) return 0;
    p++;
    u++;
  }
  return !*p && !*u;
}

/* Finds the route of (method, url); on no match sets *path_known when another method has the path and writes
 * those methods to r->allow. */
const route *sg_http_route_find(req *r, const char *method, const char *url, int *path_known) {
  const route *found = NULL;
  char allow[64] = "";
  *path_known = 0;
  for (size_t i = 0; i < N_ROUTES; i++) {
    if (!path_match(ROUTES[i].pattern, url, r)) continue;
    *path_known = 1;
    size_t n = strlen(allow);
    snprintf(allow + n, sizeof allow - n, "%s%s%s", n ? ", " : "", ROUTES[i].method,
             ROUTES[i].flags & R_HEAD ? ", HEAD" : "");
    if (!found && (!strcmp(method, ROUTES[i].method) || (!strcmp(method, "HEAD") && (ROUTES[i].flags & R_HEAD))))
      found = &ROUTES[i];
  }
  size_t n = strlen(allow);
  snprintf(allow + n, sizeof allow - n, "%sOPTIONS", n ? ", " : "");
  snprintf(r->allow, sizeof r->allow, "%s", allow);
  if (found) path_match(found->pattern, url, r); /* its own parameters */
  return found;
}

/* Returns libmicrohttpd's copy of the request's Origin when CORS allows it, else NULL. */
const char *sg_http_allowed_origin(sg_http *h, struct MHD_Connection *c) {
  if (!h->n_origins && !h->any_origin) return NULL;
  const char *o = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Origin");
  if (!o || !*o) return NULL;
  if (h->any_origin) return o;
  for (int32_t i = 0; i < h->n_origins; i++)
    if (!strcasecmp(o, h->origins[i])) return o;
  return NULL;
}

/* Compares a presented token with the configured one in time that depends only on their lengths. */
static int token_equal(const char *given, const char *want) {
  size_t gn = strlen(given), wn = strlen(want);
  volatile unsigned char d = gn != wn;
  for (size_t i = 0; i < wn; i++) d |= (unsigned char)(want[i] ^ (i < gn ? given[i] : 0));
  return d == 0;
}

int sg_http_authorized(sg_http *h, struct MHD_Connection *c) {
  const char *a = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
  if (!a || strncasecmp(a, "Bearer ", 7)) return 0;
  a += 7;
  while (*a == ' ') a++;
  return token_equal(a, h->token);
}

enum MHD_Result sg_http_options_answer(req *r) {
  struct MHD_Response *resp = MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
  if (!resp) return MHD_NO;
  MHD_add_response_header(resp, "Allow", r->allow);
  if (r->origin) {
    MHD_add_response_header(resp, "Access-Control-Allow-Methods", r->allow);
    MHD_add_response_header(resp, "Access-Control-Allow-Headers", "Authorization, Content-Type, Prefer, Accept");
    MHD_add_response_header(resp, "Access-Control-Max-Age", "600");
  }
  return sg_http_send_response(r, 204, resp, 0);
}

/* ---- public ---- */

sg_http_params sg_http_default_params(void) {
  sg_http_params p;
  memset(&p, 0, sizeof p);
  p.host = "127.0.0.1";
  p.port = 8080;
  p.threads = 2;
  p.max_connections = 256;
  p.connection_timeout_s = 30;
  p.sse_keepalive_s = 15;
  sg_request_limits l = sg_request_default_limits(); /* the request limits' defaults live there */
  p.max_body_bytes = l.max_body_bytes;
  p.max_image_pixels = l.max_image_pixels;
  p.max_steps = l.max_steps;
  p.max_images = l.max_images;
  p.max_prompt_bytes = l.max_prompt_bytes;
  p.default_timeout_ms = l.default_timeout_ms;
  p.max_timeout_ms = l.max_timeout_ms;
  p.version = "unknown";
  p.ui = 1;
  p.result_ttl_s = 600;
  return p;
}

static char *dup_or_null(const char *s) { return s && *s ? strdup(s) : NULL; }

static void destroy(sg_http *h) {
  if (h->origins) {
    for (int32_t i = 0; i < h->n_origins; i++) free(h->origins[i]);
    free(h->origins);
  }
  if (h->token) {
    memset(h->token, 0, strlen(h->token));
    free(h->token);
  }
  free(h->host);
  free(h->cors);
  free(h->version);
  pthread_cond_destroy(&h->cv);
  pthread_mutex_destroy(&h->mu);
  free(h);
}

sg_http *sg_http_start(sg_http_params p, sg_metrics *metrics, char *err, size_t errlen) {
  if (err && errlen) *err = 0;
  if (!metrics || p.port < 0 || p.port > 65535 || p.threads < 1 || p.threads > 64 || p.max_connections < 1 ||
      p.max_body_bytes < 1 || p.max_image_pixels < 1 || p.max_steps < 1 || p.max_images < 1 ||
      p.max_images > SG_JOBS_MAX_IMAGES || p.max_prompt_bytes < 1 || p.default_timeout_ms < 1 ||
      p.max_timeout_ms < p.default_timeout_ms || p.connection_timeout_s < 1 || p.connection_timeout_s > 3600 ||
      p.sse_keepalive_s < 0 || !(p.result_ttl_s > 0)) {
    sg_set_err(err, errlen, "http: bad parameters");
    return NULL;
  }
  if (p.threads > p.max_connections) p.threads = p.max_connections; /* each loop needs a share of the limit */
  sg_http *h = calloc(1, sizeof *h);
  if (!h) {
    sg_set_err(err, errlen, "out of memory");
    return NULL;
  }
  if (pthread_mutex_init(&h->mu, NULL)) {
    free(h);
    sg_set_err(err, errlen, "out of memory");
    return NULL;
  }
  pthread_cond_init(&h->cv, NULL);
  h->p = p;
  h->metrics = metrics;
  h->host = strdup(p.host ? p.host : "127.0.0.1");
  h->token = dup_or_null(p.token);
  h->cors = dup_or_null(p.cors_origins);
  h->version = strdup(p.version ? p.version : "unknown");
  int oom = !h->host || !h->version || (p.token && *p.token && !h->token) || (p.cors_origins && *p.cors_origins && !h->cors);
  for (const char *s = h->cors; s && *s && !oom;) { /* the origin list */
    const char *e = strchr(s, ',');
    size_t n = e ? (size_t)(e - s) : strlen(s);
    while (n && *s == ' ') s++, n--;
    while (n && s[n - 1] == ' ') n--;
    if (n == 1 && *s == '*') {
      h->any_origin = 1;
    } else if (n) {
      char **o = realloc(h->origins, sizeof *o * (size_t)(h->n_origins + 1));
      if (!o || !(o[h->n_origins] = strndup(s, n))) {
        if (o) h->origins = o;
        oom = 1;
        break;
      }
      h->origins = o;
      h->n_origins++;
    }
    if (!e) break;
    s = e + 1;
  }
  p.host = h->host;
  h->p.host = h->host;
  h->p.token = h->token;
  h->p.cors_origins = h->cors;
  h->p.version = h->version;
  if (oom) {
    destroy(h);
    sg_set_err(err, errlen, "out of memory");
    return NULL;
  }
  /* the address */
  struct addrinfo hints, *ai = NULL;
  memset(&hints, 0, sizeof hints);
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  char port[16];
  snprintf(port, sizeof port, "%d", (int)p.port);
  int gai = getaddrinfo(h->host, port, &hints, &ai);
  if (gai || !ai) {
    sg_set_err(err, errlen, "host: cannot resolve '%s': %s", h->host, gai ? gai_strerror(gai) : "no address");
    if (ai) freeaddrinfo(ai);
    destroy(h);
    return NULL;
  }
  struct sockaddr_storage sa;
  memset(&sa, 0, sizeof sa);
  memcpy(&sa, ai->ai_addr, ai->ai_addrlen < sizeof sa ? ai->ai_addrlen : sizeof sa);
  int v6 = ai->ai_family == AF_INET6;
  freeaddrinfo(ai);
  unsigned flags = MHD_USE_EPOLL_INTERNAL_THREAD | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG |
                   (v6 ? MHD_USE_IPv6 : 0);
  h->starting = 1;
  struct MHD_OptionItem pool[] = {
      {p.threads > 1 ? MHD_OPTION_THREAD_POOL_SIZE : MHD_OPTION_END, (intptr_t)p.threads, NULL},
      {MHD_OPTION_END, 0, NULL},
  };
  h->d = MHD_start_daemon(flags, (uint16_t)p.port, NULL, NULL, sg_http_on_access, h, //
                          MHD_OPTION_EXTERNAL_LOGGER, sg_http_mhd_log, h,       //
                          MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa,         //
                          MHD_OPTION_NOTIFY_COMPLETED, sg_http_on_completed, h, //
                          MHD_OPTION_URI_LOG_CALLBACK, sg_http_on_uri, h,       //
                          MHD_OPTION_CONNECTION_LIMIT, (unsigned)p.max_connections, //
                          MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)p.connection_timeout_s, //
                          MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)CONN_MEMORY, //
                          MHD_OPTION_ARRAY, pool,                               //
                          MHD_OPTION_END);
  h->starting = 0;
  if (!h->d) {
    sg_set_err(err, errlen, "cannot listen on %s port %d%s%s", h->host, (int)p.port, h->start_err[0] ? ": " : "",
               h->start_err);
    destroy(h);
    return NULL;
  }
  const union MHD_DaemonInfo *di = MHD_get_daemon_info(h->d, MHD_DAEMON_INFO_BIND_PORT);
  h->port = di && di->port ? di->port : p.port;
  if (pthread_create(&h->wd, NULL, sg_http_watchdog_main, h)) {
    MHD_stop_daemon(h->d);
    destroy(h);
    sg_set_err(err, errlen, "cannot start the watchdog thread");
    return NULL;
  }
  h->wd_started = 1;
  sg_http_logf(h, SG_JOBS_LOG_DEBUG, "%s: %d event-loop thread(s), at most %d connections, auth %s, CORS %s", __func__,
               (int)p.threads, (int)p.max_connections, h->token ? "on" : "off", h->cors ? h->cors : "off");
  return h;
}

int32_t sg_http_port(const sg_http *h) { return h ? h->port : -1; }

int sg_http_attach(sg_http *h, sg_store *store, const sg_model_info *model, const char *devices) {
  if (!h || !store) return SG_JOBS_EINVAL;
  int rc = sg_store_model(store, &h->model_copy, &h->defaults);
  if (rc) return rc;
  h->store = store;
  h->model = model ? model : &h->model_copy;
  snprintf(h->devices, sizeof h->devices, "%s", devices ? devices : "");
  atomic_store(&h->ready, 1); /* sequentially consistent: store and model are visible to whoever sees ready */
  return 0;
}

void sg_http_drain(sg_http *h) {
  if (h) atomic_store(&h->draining, 1);
}

void sg_http_stop(sg_http *h, double grace_s) {
  if (!h) return;
  atomic_store(&h->draining, 1);
  pthread_mutex_lock(&h->mu);
  double end = sg_http_now_s() + (grace_s > 0 ? grace_s : 0);
  while (h->n_waiting > 0 && sg_http_now_s() < end) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += 50 * 1000000L;
    ts.tv_sec += ts.tv_nsec / 1000000000L;
    ts.tv_nsec %= 1000000000L;
    pthread_cond_timedwait(&h->cv, &h->mu, &ts);
  }
  if (h->n_waiting > 0) sg_http_logf(h, SG_JOBS_LOG_WARN, "%s: closing %d waiting request(s)", __func__,
                                     (int)h->n_waiting);
  atomic_store(&h->stopping, 1);
  for (req *r = h->waiting; r; r = r->wnext) { /* libmicrohttpd must not be stopped with suspended connections */
    pthread_mutex_lock(&r->mu);
    r->gone = 1;
    sg_http_resume_locked(r);
    pthread_mutex_unlock(&r->mu);
  }
  h->wd_stop = 1;
  pthread_cond_broadcast(&h->cv);
  pthread_mutex_unlock(&h->mu);
  if (h->wd_started) pthread_join(h->wd, NULL);
  MHD_stop_daemon(h->d);
  destroy(h);
}
