/* The HTTP API on libmicrohttpd: a route table of small handlers, the body handed to request.c, suspend/resume around
 * jobs, server-sent events, one error table, auth, CORS, request logs and metrics (see http.h).
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
 * Per-request state is allocated at the first call of the access handler and freed only in on_completed.
 */
#include "http.h"

#include <arpa/inet.h>
#include <errno.h>
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

#include "base64.h"
#include "buf.h"
#include "errbuf.h"
#include "image.h"
#include "jobjson.h"
#include "openai.h"
#include "request.h"
#include "sampler.h"
#include "store.h"
#include "web_assets.h"

#define WATCHDOG_MS 200
#define MAX_HEADERS 64      /* header fields of a request; more get 431 */
#define MAX_QUERY_ARGS 32   /* query arguments of a request; more get 414 */
#define MAX_HEADER_BYTES 32768 /* names and values of a request's header fields together; more get 431 */
#define CONN_MEMORY 131072  /* libmicrohttpd's memory per connection (32 KiB by default): the request head, its
                               header fields and query arguments must fit in it for the checks here to see them */

/* ---- errors: the one table of kinds and statuses, and the codes of other modules mapped onto it ---- */

typedef enum {
  E_BAD_REQUEST,
  E_UNAUTHORIZED,
  E_NOT_FOUND,
  E_METHOD,
  E_CONFLICT,
  E_GONE,
  E_TOO_LARGE,
  E_UNSUPPORTED,
  E_INVALID,
  E_QUEUE_FULL,
  E_INTERNAL,
  E_TIMEOUT,
  E_NOT_READY,
  E_DRAINING,
  E_CANCELLED,
  E_URI_TOO_LONG,
  E_HEADERS_TOO_LARGE,
  E_UNAVAILABLE,
} err_kind;

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

typedef enum { D_JOBS, D_JOB_ERROR, D_IMAGE, D_REQUEST, D_OPENAI } err_domain;

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
static err_kind kind_of(err_domain d, int code) {
  for (size_t i = 0; i < sizeof CODE_MAP / sizeof *CODE_MAP; i++)
    if (CODE_MAP[i].d == d && CODE_MAP[i].code == code) return CODE_MAP[i].kind;
  return E_INTERNAL;
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* ---- the server and its requests ---- */

typedef enum { BODY_NONE = 0, BODY_DISCARD, BODY_PARSED } body_kind;
typedef enum { PH_NEW = 0, PH_WAIT, PH_STREAM } phase;

typedef struct route route;
typedef struct req req;

struct sg_http {
  sg_http_params p;
  char *host, *token, *cors, *version;
  char **origins;
  int32_t n_origins;
  int any_origin;
  struct MHD_Daemon *d;
  int32_t port;
  sg_metrics *metrics;
  atomic_int ready, draining, stopping;
  sg_store *store;
  const sg_model_info *model;
  sg_model_info model_copy; /* the store's model when the caller has none (a frontend) */
  sg_job_request defaults;
  char devices[512];
  pthread_mutex_t mu;   /* the waiting list and the watchdog's flag */
  pthread_cond_t cv;    /* a waiting request ended; the watchdog should stop */
  req *waiting;
  int32_t n_waiting;
  int wd_stop;
  pthread_t wd;
  int wd_started;
  req *uploading;       /* requests whose body is being read (the watchdog looks for clients that left) */
  char start_err[256];  /* libmicrohttpd's last message while starting */
  int starting;
};

struct req {
  sg_http *h;
  struct MHD_Connection *conn;
  const route *rt;
  char method[12];
  char path[160];
  char id[72];
  int32_t index;
  char allow[64];       /* 405: the methods of the path */
  const char *origin;   /* an allowed Origin (libmicrohttpd's copy), or NULL */
  double t0;
  int status;
  uint64_t bytes;
  int responded;
  char job_id[SG_JOB_ID_LEN];
  int64_t seed;
  int submit_failed;    /* the job manager refused the job (and counted it) */
  /* the request body */
  body_kind body;
  _Atomic uint64_t received;
  int abort_conn;
  sg_request *q;        /* the parameters of a generation (request.c) */
  int has_err;          /* an error of the transport (body size, multipart framing); the parameters' own are q's */
  err_kind ekind;
  char eparam[32];
  char emsg[256];
  /* waiting on a job */
  phase ph;
  pthread_mutex_t mu;
  int mu_ok;
  int registered;
  req *wprev, *wnext;
  int fd;
  int suspended, done, gone;
  sg_store_watcher *watch;
  int want_json;
  sg_job_status st;
  int st_ok;
  uint8_t *png[SG_JOBS_MAX_IMAGES];
  size_t png_len[SG_JOBS_MAX_IMAGES];
  int32_t n_png;
  int png_failed;
  /* an event stream */
  sg_buf ev;
  size_t ev_off;
  int ev_end;
  double ev_t;          /* when the last event or keep-alive was queued */
  /* reading the body (h->uploading, h->mu) */
  int up_registered;
  req *uprev, *unext;
  int up_fd;
  int up_eof;           /* watchdog ticks that found the peer's end closed while the body was incomplete */
  uint64_t up_eof_at;   /* r->received when that was first seen */
  int close_conn;       /* the response says Connection: close (a refused request head) */
  int started;          /* the access handler has seen the request (on_uri allocates it, with the head unread) */
  sg_openai_format oai_format; /* an OpenAI route's response_format */
};

typedef enum MHD_Result (*handler_fn)(req *r);

enum { R_OPEN = 1, R_BODY = 2, R_METRICS = 4, R_HEAD = 8, R_OAI_GEN = 16, R_OAI_EDIT = 32 }; /* OAI: openai.h */
#define OAI(r) ((r)->rt && ((r)->rt->flags & (R_OAI_GEN | R_OAI_EDIT)))
#define OAI_ROUTE(r) ((r)->rt->flags & R_OAI_EDIT ? SG_OPENAI_EDITS : SG_OPENAI_GENERATIONS)

struct route {
  const char *method;
  const char *pattern; /* "{id}" and "{name}" match one segment, "{i}" a decimal index */
  handler_fn fn;
  int flags;
};

static void logf_(sg_http *h, sg_jobs_log_level level, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void logf_(sg_http *h, sg_jobs_log_level level, const char *fmt, ...) {
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
static enum MHD_Result send_response(req *r, int status, struct MHD_Response *resp, uint64_t bytes) {
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
static struct MHD_Response *json_response(json_t *body, size_t *n) {
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
static enum MHD_Result send_json(req *r, int status, json_t *body) {
  size_t n = 0;
  struct MHD_Response *resp = json_response(body, &n);
  return resp ? send_response(r, status, resp, n) : MHD_NO;
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
static enum MHD_Result send_error(req *r, err_kind k, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static enum MHD_Result send_error(req *r, err_kind k, const char *param, const char *fmt, ...) {
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  json_t *o = OAI(r) ? sg_openai_error_body(OAI_ROUTE(r), ERRORS[k].status, ERRORS[k].code, param, msg)
                     : json_pack("{s:{s:s,s:s,s:o}}", "error", "code", ERRORS[k].code, "message", msg, "param",
                                 param && *param ? json_string(param) : json_null());
  size_t n = 0;
  struct MHD_Response *resp = json_response(o, &n);
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
    snprintf(ra, sizeof ra, "%d", status == 429 ? retry_after_s(r->h) : k == E_NOT_READY ? 5 : k == E_UNAVAILABLE ? 2 : 30);
    MHD_add_response_header(resp, "Retry-After", ra);
  }
  if (r->rt && (r->rt->flags & R_BODY) && !r->job_id[0] && !r->submit_failed)
    sg_metrics_reject(r->h->metrics, ERRORS[k].reason);
  return send_response(r, status, resp, n);
}

/* Whether an error was recorded while reading the body, by the transport or by the parameters' parser. */
static int failed(const req *r) { return r->has_err || (r->q && sg_request_get_error(r->q)); }

/* Records the first error met while reading the body (unless the parser has one already); the body is drained and
 * the error sent at its end. */
static void record_error(req *r, err_kind k, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void record_error(req *r, err_kind k, const char *param, const char *fmt, ...) {
  if (failed(r)) return;
  r->has_err = 1;
  r->ekind = k;
  snprintf(r->eparam, sizeof r->eparam, "%s", param ? param : "");
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(r->emsg, sizeof r->emsg, fmt, ap);
  va_end(ap);
}

/* Sends the error recorded by the transport or by the parser. */
static enum MHD_Result send_recorded(req *r) {
  const sg_request_error *e = r->q ? sg_request_get_error(r->q) : NULL;
  if (e) return send_error(r, kind_of(D_REQUEST, e->code), e->param, "%s", e->message);
  return send_error(r, r->ekind, r->eparam, "%s", r->emsg);
}

/* Splits a module message "name: text" into its parameter name (written to param) when name is a request
 * parameter; returns the message unchanged. */
static const char *param_of_message(const char *msg, char *param, size_t cap) {
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

/* ---- the waiting list, suspension and the watchdog ---- */

static void reg_add(req *r) {
  sg_http *h = r->h;
  const union MHD_ConnectionInfo *ci = MHD_get_connection_info(r->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
  r->fd = ci ? ci->connect_fd : -1;
  pthread_mutex_lock(&h->mu);
  r->wprev = NULL;
  r->wnext = h->waiting;
  if (h->waiting) h->waiting->wprev = r;
  h->waiting = r;
  h->n_waiting++;
  r->registered = 1;
  pthread_mutex_unlock(&h->mu);
}

static void reg_remove(req *r) {
  if (!r->registered) return;
  sg_http *h = r->h;
  pthread_mutex_lock(&h->mu);
  if (r->wprev) r->wprev->wnext = r->wnext;
  else h->waiting = r->wnext;
  if (r->wnext) r->wnext->wprev = r->wprev;
  r->wprev = r->wnext = NULL;
  h->n_waiting--;
  r->registered = 0;
  pthread_cond_broadcast(&h->cv);
  pthread_mutex_unlock(&h->mu);
}

/* Suspends r's connection unless cond or a stop says otherwise; r->mu held. Returns 1 when suspended. The stop
 * flag is set before sg_http_stop walks the list, so a request either sees it here or is resumed by that walk. */
static int suspend_locked(req *r) {
  if (r->gone || atomic_load(&r->h->stopping)) return 0;
  MHD_suspend_connection(r->conn);
  r->suspended = 1;
  return 1;
}

/* Resumes r's connection if suspended; r->mu held. Every suspension gets exactly one resume. */
static void resume_locked(req *r) {
  if (!r->suspended) return;
  r->suspended = 0;
  MHD_resume_connection(r->conn);
}

/* Returns 1 when the peer of a connected socket has closed it or it failed (without consuming data). */
static int peer_gone(int fd) {
  if (fd < 0) return 0;
  char c;
  ssize_t n = recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
  return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
}

static void *watchdog_main(void *arg) {
  sg_http *h = arg;
  pthread_mutex_lock(&h->mu);
  while (!h->wd_stop) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += WATCHDOG_MS * 1000000L;
    ts.tv_sec += ts.tv_nsec / 1000000000L;
    ts.tv_nsec %= 1000000000L;
    pthread_cond_timedwait(&h->cv, &h->mu, &ts);
    if (h->wd_stop) break;
    double now = now_s();
    for (req *r = h->waiting; r; r = r->wnext) {
      pthread_mutex_lock(&r->mu);
      if (r->suspended && peer_gone(r->fd)) {
        r->gone = 1;
        resume_locked(r);
      } else if (r->suspended && r->ph == PH_STREAM && h->p.sse_keepalive_s > 0 &&
                 now - r->ev_t >= h->p.sse_keepalive_s) {
        if (sg_buf_add(&r->ev, ": keep-alive\n\n", 14)) r->gone = 1; /* a comment: EventSource ignores it */
        r->ev_t = now;
        resume_locked(r);
      }
      pthread_mutex_unlock(&r->mu);
    }
    /* a client that closed (or half-closed) its end before its body was complete will send no more: libmicrohttpd
     * would wait for the rest until connection_timeout_s. Seen on two ticks with no byte received in between (so
     * that a body whose last bytes arrived with the FIN is still handed over), the socket is shut down, which makes
     * libmicrohttpd close the connection at once. The fd stays valid: on_completed unlinks r under h->mu first. */
    for (req *r = h->uploading; r; r = r->unext) {
      uint64_t got = atomic_load(&r->received);
      if (r->up_eof < 0 || !peer_gone(r->up_fd)) {
        if (r->up_eof > 0) r->up_eof = 0;
        continue;
      }
      if (r->up_eof == 0 || r->up_eof_at != got) {
        r->up_eof = 1;
        r->up_eof_at = got;
      } else {
        logf_(h, SG_JOBS_LOG_DEBUG, "%s: a client left in the middle of its body (%llu bytes); closing", __func__,
              (unsigned long long)got);
        shutdown(r->up_fd, SHUT_RDWR);
        r->up_eof = -1;
      }
    }
  }
  pthread_mutex_unlock(&h->mu);
  return NULL;
}

/* Puts r on the list of requests whose body is being read, or takes it off. */
static void upload_add(req *r) {
  sg_http *h = r->h;
  const union MHD_ConnectionInfo *ci = MHD_get_connection_info(r->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
  if (!ci || r->up_registered) return;
  pthread_mutex_lock(&h->mu);
  r->up_fd = ci->connect_fd;
  r->up_eof = 0;
  r->uprev = NULL; /* r may have been on the list before (its head), with a link that is stale now */
  r->unext = h->uploading;
  if (h->uploading) h->uploading->uprev = r;
  h->uploading = r;
  r->up_registered = 1;
  pthread_mutex_unlock(&h->mu);
}

static void upload_remove(req *r) {
  if (!r->up_registered) return;
  sg_http *h = r->h;
  pthread_mutex_lock(&h->mu);
  if (r->uprev) r->uprev->unext = r->unext;
  else h->uploading = r->unext;
  if (r->unext) r->unext->uprev = r->uprev;
  r->uprev = r->unext = NULL;
  r->up_registered = 0;
  pthread_mutex_unlock(&h->mu);
}

/* ---- a synchronous generation: the watch callback and the answer ---- */

static void on_sync_event(void *user, const sg_job_event *ev, const char *event_id) {
  req *r = user;
  if (ev->kind != SG_JOB_EVENT_END) return;
  /* copy the result now, from the event (its record is held for this callback): a finished job may be evicted
   * before the connection is served again, or even before this callback runs (a tiny keep_finished_count with
   * other jobs finishing), when a copy by id would answer SG_JOBS_EEXPIRED */
  sg_job_status st;
  int ok = sg_store_event_status(r->h->store, ev, &st) == 0;
  uint8_t *png[SG_JOBS_MAX_IMAGES] = {0};
  size_t len[SG_JOBS_MAX_IMAGES] = {0};
  int32_t n = 0, failed = 0;
  if (ev->state == SG_JOB_SUCCEEDED)
    for (; n < ev->n_images && n < SG_JOBS_MAX_IMAGES; n++)
      if (sg_store_event_image(r->h->store, ev, n, &png[n], &len[n])) {
        failed = 1;
        break;
      }
  if (!ok) { /* not an END event (never here): what the event says */
    memset(&st, 0, sizeof st);
    snprintf(st.id, sizeof st.id, "%s", ev->id);
    st.state = ev->state;
    st.error = ev->error;
    snprintf(st.message, sizeof st.message, "%s", ev->message);
    st.seed = r->seed;
    st.n_images = ev->n_images;
  }
  pthread_mutex_lock(&r->mu);
  r->st = st;
  r->st_ok = 1;
  memcpy(r->png, png, sizeof png);
  memcpy(r->png_len, len, sizeof len);
  r->n_png = n;
  r->png_failed = failed;
  r->done = 1;
  resume_locked(r);
  pthread_mutex_unlock(&r->mu);
}

static void timing_headers(struct MHD_Response *resp, const sg_job_status *st) {
  char v[32];
  snprintf(v, sizeof v, "%lld", (long long)st->seed);
  MHD_add_response_header(resp, "X-Seed", v);
  snprintf(v, sizeof v, "%.0f", st->queue_ms);
  MHD_add_response_header(resp, "X-Queue-Time-Ms", v);
  snprintf(v, sizeof v, "%.0f", st->inference_ms);
  MHD_add_response_header(resp, "X-Inference-Time-Ms", v);
}

/* Answers a synchronous generation whose job ended (r->done). */
static enum MHD_Result sync_answer(req *r) {
  const sg_job_status *st = &r->st;
  if (st->state != SG_JOB_SUCCEEDED) {
    char param[32];
    err_kind k = kind_of(D_JOB_ERROR, st->error);
    const char *msg = param_of_message(st->message[0] ? st->message : sg_job_error_name(st->error), param,
                                       sizeof param);
    return send_error(r, k, k == E_INVALID ? param : NULL, "%s", msg);
  }
  if (r->png_failed || r->n_png < 1)
    return send_error(r, E_INTERNAL, NULL, "the job's images could not be copied (out of memory)");
  if (OAI(r)) {
    char base[300], keys[SG_JOBS_MAX_IMAGES][SG_STORE_FILE_KEY_LEN];
    const char *kp[SG_JOBS_MAX_IMAGES];
    sg_openai_base_url(MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "Host"),
                       MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "X-Forwarded-Proto"), base, sizeof base);
    double expires = (double)time(NULL) + r->h->p.result_ttl_s; /* as long as the job keeps its images */
    for (int32_t i = 0; r->oai_format == SG_OPENAI_URL && i < r->n_png && i < SG_JOBS_MAX_IMAGES; i++) {
      int rc = sg_store_file_put(r->h->store, st->id, i, expires, keys[i]); /* in the store: any replica serves it */
      if (rc == SG_STORE_EUNAVAILABLE)
        return send_error(r, E_UNAVAILABLE, NULL, "the job store (Redis) cannot be reached; try again shortly");
      if (rc) return send_error(r, E_INTERNAL, NULL, "the image's URL could not be made: %s", sg_store_strerror(rc));
      kp[i] = keys[i];
    }
    sg_openai_answer_params ap = {r->oai_format, (int64_t)time(NULL), r->h->model->image_size, base, kp};
    size_t n = 0;
    struct MHD_Response *resp = json_response(sg_openai_answer(&ap, r->png, r->png_len, r->n_png), &n);
    if (!resp) return send_error(r, E_INTERNAL, NULL, "out of memory");
    timing_headers(resp, st);
    return send_response(r, 200, resp, n);
  }
  if (r->n_png == 1 && !r->want_json) {
    struct MHD_Response *resp = MHD_create_response_from_buffer(r->png_len[0], r->png[0], MHD_RESPMEM_MUST_FREE);
    if (!resp) return MHD_NO;
    size_t n = r->png_len[0];
    r->png[0] = NULL; /* owned by the response now */
    MHD_add_response_header(resp, "Content-Type", "image/png");
    timing_headers(resp, st);
    return send_response(r, 200, resp, n);
  }
  json_t *o = json_object(), *imgs = json_array();
  if (!o || !imgs) {
    json_decref(o);
    json_decref(imgs);
    return MHD_NO;
  }
  json_object_set_new(o, "id", json_string(st->id));
  json_object_set_new(o, "seed", json_integer(st->seed));
  for (int32_t i = 0; i < r->n_png; i++) {
    char *b = sg_base64_encode(r->png[i], r->png_len[i]);
    if (!b) {
      json_decref(o);
      json_decref(imgs);
      return send_error(r, E_INTERNAL, NULL, "out of memory");
    }
    json_t *im = json_object();
    json_object_set_new(im, "index", json_integer(i));
    json_object_set_new(im, "seed", json_integer(st->seed + i));
    json_object_set_new(im, "mime_type", json_string("image/png"));
    json_object_set_new(im, "data", json_string(b));
    free(b);
    json_array_append_new(imgs, im);
  }
  json_object_set_new(o, "images", imgs);
  json_object_set_new(o, "queue_time_ms", sg_jobjson_ms(st->queue_ms));
  json_object_set_new(o, "inference_time_ms", sg_jobjson_ms(st->inference_ms));
  size_t n = 0;
  struct MHD_Response *resp = json_response(o, &n);
  if (!resp) return MHD_NO;
  timing_headers(resp, st);
  return send_response(r, 200, resp, n);
}

/* Called when a waiting generation's connection runs again: its job ended, its client left, or a stop. */
static enum MHD_Result sync_resumed(req *r) {
  pthread_mutex_lock(&r->mu);
  int gone = r->gone, done = r->done, again = 0;
  if (!gone && !done) again = suspend_locked(r);
  pthread_mutex_unlock(&r->mu);
  if (again) return MHD_YES;
  if (gone || !done) return MHD_NO; /* closes the connection; on_completed cancels the job */
  return sync_answer(r);
}

/* ---- request parameters (parsed by request.c) ---- */

/* A new parser with the service's limits and the model's defaults (only once the server is ready). Returns NULL
 * when out of memory. */
static sg_request *request_new(sg_http *h, const route *rt) {
  const sg_http_params *P = &h->p;
  sg_request_limits lim = sg_request_default_limits();
  lim.max_body_bytes = P->max_body_bytes;
  lim.max_image_pixels = P->max_image_pixels;
  lim.max_steps = P->max_steps;
  lim.max_images = P->max_images;
  lim.max_prompt_bytes = P->max_prompt_bytes;
  lim.default_timeout_ms = P->default_timeout_ms;
  lim.max_timeout_ms = P->max_timeout_ms;
  lim.image_size = h->model->image_size;
  lim.has_lgp = h->model->has_lgp;
  lim.defaults = h->defaults;
  if (rt->flags & (R_OAI_GEN | R_OAI_EDIT))
    sg_openai_limits(rt->flags & R_OAI_EDIT ? SG_OPENAI_EDITS : SG_OPENAI_GENERATIONS, &lim);
  return sg_request_new(&lim);
}

/* Whether a header's comma-separated list holds token (case-insensitive, parameters after ';' ignored). */
static int header_has(const char *v, const char *token) {
  size_t n = strlen(token);
  for (const char *p = v; p && *p;) {
    while (*p == ' ' || *p == '\t' || *p == ',') p++;
    if (!strncasecmp(p, token, n) && (p[n] == 0 || p[n] == ',' || p[n] == ';' || p[n] == ' ' || p[n] == '='))
      return 1;
    p = strchr(p, ',');
  }
  return 0;
}

/* ---- handlers ---- */

static int work_refused(req *r, enum MHD_Result *ret) {
  if (atomic_load(&r->h->draining)) {
    *ret = send_error(r, E_DRAINING, NULL, "the service is shutting down");
    return 1;
  }
  if (!atomic_load(&r->h->ready)) {
    *ret = send_error(r, E_NOT_READY, NULL, "the model is still loading");
    return 1;
  }
  if (r->h->p.probes_only) {
    *ret = send_error(r, E_NOT_FOUND, NULL, "this replica is a worker (role worker): it serves probes and metrics only");
    return 1;
  }
  if (!sg_store_ready(r->h->store)) {
    *ret = send_error(r, E_UNAVAILABLE, NULL, "the job store (Redis) cannot be reached; try again shortly");
    return 1;
  }
  return 0;
}

/* The Idempotency-Key of a request: NULL when absent; on a malformed one sends 400 and sets *bad. */
static const char *idempotency_key(req *r, enum MHD_Result *ret, int *bad) {
  const char *k = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "Idempotency-Key");
  *bad = 0;
  if (!k) return NULL;
  size_t n = strlen(k);
  int ok = n >= 1 && n <= SG_STORE_MAX_IDEM_KEY;
  for (size_t i = 0; ok && i < n; i++) ok = k[i] > 32 && k[i] < 127;
  if (!ok) {
    *bad = 1;
    *ret = send_error(r, E_BAD_REQUEST, "Idempotency-Key", "Idempotency-Key: 1 to %d printable ASCII characters, no spaces",
                      SG_STORE_MAX_IDEM_KEY);
  }
  return k;
}

static enum MHD_Result h_generate(req *r) {
  sg_http *h = r->h;
  if (r->ph == PH_WAIT) return sync_resumed(r);
  if (failed(r)) return send_recorded(r);
  enum MHD_Result ret;
  if (work_refused(r, &ret)) return ret;
  sg_request_params a;
  int rc = sg_request_parse(r->q, &a);
  if (rc) return send_recorded(r);
  sg_openai_options oo;
  sg_request_error oe;
  if (OAI(r) && sg_openai_check(r->q, h->model->name, h->model->image_size, &oo, &oe))
    return send_error(r, kind_of(D_OPENAI, oe.code), oe.param, "%s", oe.message);
  r->oai_format = OAI(r) ? oo.format : SG_OPENAI_B64_JSON;
  if (a.dry_run) {
    char *text = sg_request_describe(&a);
    if (!text) return send_error(r, E_INTERNAL, NULL, "out of memory");
    size_t n = strlen(text);
    struct MHD_Response *resp = MHD_create_response_from_buffer(n, text, MHD_RESPMEM_MUST_FREE);
    if (!resp) {
      free(text);
      return MHD_NO;
    }
    MHD_add_response_header(resp, "Content-Type", "application/json");
    return send_response(r, 200, resp, n);
  }
  char version[96];
  snprintf(version, sizeof version, "sketchguide %s", h->version);
  const char *extra[2] = {"software", version};
  a.jr.extra_text = extra;
  a.jr.n_extra_text = 1;
  a.jr.deadline = sg_jobs_now() + (double)a.timeout_ms / 1000.0;
  const char *prefer = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "Prefer");
  int async = prefer && header_has(prefer, "respond-async") && !OAI(r); /* OpenAI's routes answer at the end */
  r->seed = a.jr.seed;
  char err[256] = "";
  int bad_key = 0; /* Idempotency-Key: cluster mode's (a local replica forgets its jobs with its process) */
  sg_store_submit_opts so = {NULL, a.seed_random};
  if (!strcmp(sg_store_kind(h->store), "redis")) so.idempotency_key = idempotency_key(r, &ret, &bad_key);
  if (bad_key) return ret;
  int64_t seed = a.jr.seed;
  if (async) {
    rc = sg_store_submit(h->store, &a.jr, &so, NULL, NULL, r->job_id, &seed, NULL, err, sizeof err);
  } else {
    /* the watch goes in with the job: a fast job could otherwise end and be evicted before a later watch */
    const char *accept = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "Accept");
    r->want_json = accept && header_has(accept, "application/json") && !header_has(accept, "image/png");
    r->ph = PH_WAIT;
    reg_add(r);
    rc = sg_store_submit(h->store, &a.jr, &so, on_sync_event, r, r->job_id, &seed, &r->watch, err, sizeof err);
    if (rc) r->ph = PH_NEW;
  }
  r->seed = seed; /* another job's when an Idempotency-Key matched */
  if (rc) {
    char param[32];
    err_kind k = kind_of(D_JOBS, rc);
    param_of_message(err, param, sizeof param);
    r->submit_failed = 1;
    return send_error(r, k, k == E_INVALID ? param : k == E_CONFLICT ? "Idempotency-Key" : NULL, "%s",
                      err[0] ? err : sg_store_strerror(rc));
  }
  logf_(h, SG_JOBS_LOG_DEBUG, "%s: job %s (%s, %d steps, %d images, seed %lld) prompt \"%s\"", __func__, r->job_id,
        async ? "async" : "sync", (int)a.jr.steps, (int)a.jr.n_images, (long long)a.jr.seed, a.jr.prompt);
  if (async) {
    char url[96], ev[112], seed[32];
    snprintf(url, sizeof url, "/v1/jobs/%s", r->job_id);
    snprintf(ev, sizeof ev, "/v1/jobs/%s/events", r->job_id);
    snprintf(seed, sizeof seed, "%lld", (long long)r->seed);
    json_t *o = json_object();
    json_object_set_new(o, "id", json_string(r->job_id));
    sg_job_status now; /* a free worker may have started it already */
    int known = sg_store_status(h->store, r->job_id, &now) == 0;
    json_object_set_new(o, "status", json_string(known ? sg_job_state_name(now.state) : "queued"));
    json_object_set_new(o, "seed", json_integer(r->seed));
    json_object_set_new(o, "url", json_string(url));
    json_object_set_new(o, "events_url", json_string(ev));
    size_t n = 0;
    struct MHD_Response *resp = json_response(o, &n);
    if (!resp) return MHD_NO;
    MHD_add_response_header(resp, "Location", url);
    MHD_add_response_header(resp, "Preference-Applied", "respond-async");
    MHD_add_response_header(resp, "X-Seed", seed);
    return send_response(r, 202, resp, n);
  }
  pthread_mutex_lock(&r->mu);
  int suspended = !r->done && suspend_locked(r);
  int done = r->done;
  pthread_mutex_unlock(&r->mu);
  if (suspended) return MHD_YES;
  if (!done) { /* stopping: give the job back */
    sg_store_cancel(h->store, r->job_id);
    return send_error(r, E_DRAINING, NULL, "the service is shutting down");
  }
  return sync_answer(r);
}

static enum MHD_Result h_healthz(req *r) {
  json_t *o = json_object();
  json_object_set_new(o, "status", json_string("ok"));
  return send_json(r, 200, o);
}

static enum MHD_Result h_readyz(req *r) {
  if (atomic_load(&r->h->draining)) return send_error(r, E_DRAINING, NULL, "the service is shutting down");
  if (!atomic_load(&r->h->ready)) return send_error(r, E_NOT_READY, NULL, "the model is still loading");
  if (!sg_store_ready(r->h->store))
    return send_error(r, E_UNAVAILABLE, NULL, "the job store (Redis) cannot be reached");
  json_t *o = json_object();
  json_object_set_new(o, "status", json_string("ready"));
  return send_json(r, 200, o);
}

static enum MHD_Result h_metrics(req *r) {
  sg_http *h = r->h;
  sg_jobs_stats js;
  int ready = atomic_load(&h->ready);
  sg_metrics_state st = {ready, atomic_load(&h->draining), -1, NULL};
  if (ready && sg_store_stats(h->store, &js) == 0) st.jobs = &js;
  const union MHD_DaemonInfo *di = MHD_get_daemon_info(h->d, MHD_DAEMON_INFO_CURRENT_CONNECTIONS);
  if (di) st.connections = (int32_t)di->num_connections;
  char *text = sg_metrics_render(h->metrics, &st);
  if (!text) return send_error(r, E_INTERNAL, NULL, "out of memory");
  char *extra = ready ? sg_store_metrics_text(h->store, "sketchguide") : NULL; /* cluster mode's figures */
  if (extra) {
    size_t a = strlen(text), b = strlen(extra);
    char *both = realloc(text, a + b + 1);
    if (both) {
      memcpy(both + a, extra, b + 1);
      text = both;
    }
    free(extra);
  }
  size_t n = strlen(text);
  struct MHD_Response *resp = MHD_create_response_from_buffer(n, text, MHD_RESPMEM_MUST_FREE);
  if (!resp) {
    free(text);
    return MHD_NO;
  }
  MHD_add_response_header(resp, "Content-Type", "text/plain; version=0.0.4; charset=utf-8");
  return send_response(r, 200, resp, n);
}

static enum MHD_Result h_info(req *r) {
  sg_http *h = r->h;
  const sg_http_params *P = &h->p;
  json_t *o = json_object(), *lim = json_object(), *def = json_object(), *samplers = json_array();
  json_object_set_new(o, "service", json_string("sketchguide"));
  json_object_set_new(o, "version", json_string(h->version));
  json_object_set_new(o, "ready", json_boolean(atomic_load(&h->ready) && !atomic_load(&h->draining)));
  json_object_set_new(o, "auth", json_boolean(h->token != NULL));
  if (atomic_load(&h->ready)) {
    const sg_model_info *m = h->model;
    sg_jobs_stats js;
    if (sg_store_stats(h->store, &js)) memset(&js, 0, sizeof js);
    json_t *mo = json_object();
    json_object_set_new(mo, "name", json_string(m->name));
    json_object_set_new(mo, "image_size", json_integer(m->image_size));
    json_object_set_new(mo, "has_lgp", json_boolean(m->has_lgp));
    json_object_set_new(mo, "dtype", json_string(m->dtype));
    json_object_set_new(mo, "devices", json_string(h->devices));
    json_object_set_new(mo, "workers", json_integer(js.workers));
    json_t *bo = json_object(); /* the guarantees tests/core/test_generate_batch.c checks (docs/batching.md) */
    json_object_set_new(bo, "max_batch", json_integer(js.max_batch));
    json_object_set_new(bo, "unguided_latent_tolerance", json_real(5e-4));
    json_object_set_new(bo, "guided_pixel_tolerance", json_integer(32));
    json_object_set_new(bo, "solo_bit_exact", json_true());
    json_object_set_new(mo, "batching", bo);
    json_object_set_new(o, "model", mo);
    sg_job_request d = h->defaults;
    json_object_set_new(def, "steps", json_integer(d.steps < P->max_steps ? d.steps : P->max_steps));
    json_object_set_new(def, "cfg", json_real(d.cfg));
    json_object_set_new(def, "beta", json_real(d.beta));
    json_object_set_new(def, "stop", json_real(d.stop));
    json_object_set_new(def, "eta", json_real(d.eta));
    json_object_set_new(def, "sampler", json_string(sg_sampler_kind_name(d.sampler)));
  } else {
    json_object_set_new(o, "model", json_null());
  }
  json_object_set_new(def, "n", json_integer(1));
  json_object_set_new(def, "invert", json_string("auto"));
  json_object_set_new(def, "filled", json_string("auto"));
  json_object_set_new(def, "seed", json_string("random"));
  json_object_set_new(def, "timeout_ms", json_integer(P->default_timeout_ms));
  json_object_set_new(o, "defaults", def);
  json_object_set_new(lim, "max_body_bytes", json_integer(P->max_body_bytes));
  json_object_set_new(lim, "max_image_pixels", json_integer(P->max_image_pixels));
  json_object_set_new(lim, "max_steps", json_integer(P->max_steps));
  json_object_set_new(lim, "max_images", json_integer(P->max_images));
  json_object_set_new(lim, "max_prompt_bytes", json_integer(P->max_prompt_bytes));
  json_object_set_new(lim, "max_timeout_ms", json_integer(P->max_timeout_ms));
  json_object_set_new(lim, "max_connections", json_integer(P->max_connections));
  if (atomic_load(&h->ready)) {
    sg_jobs_stats js;
    if (sg_store_stats(h->store, &js)) memset(&js, 0, sizeof js);
    json_object_set_new(lim, "max_queue", json_integer(js.max_queue));
  }
  json_object_set_new(o, "limits", lim);
  for (int k = 0; k < 4; k++) json_array_append_new(samplers, json_string(sg_sampler_kind_name((sg_sampler_kind)k)));
  json_object_set_new(o, "samplers", samplers);
  return send_json(r, 200, o);
}

/* Looks the path's job up; on failure sends 404 or 410 and returns 1. */
static int job_missing(req *r, int rc, enum MHD_Result *ret) {
  if (!rc) return 0;
  char id[48];
  sg_request_safe_name(r->id, id, sizeof id);
  *ret = rc == SG_JOBS_EEXPIRED ? send_error(r, E_GONE, NULL, "job %s has expired (finished jobs are kept a while)", id)
         : rc == SG_STORE_EUNAVAILABLE
             ? send_error(r, E_UNAVAILABLE, NULL, "the job store (Redis) cannot be reached; try again shortly")
         : rc == SG_STORE_EBADDATA ? send_error(r, E_INTERNAL, NULL, "job %s: its record in the store is malformed", id)
         : rc == SG_JOBS_ENOMEM    ? send_error(r, E_INTERNAL, NULL, "out of memory")
                                   : send_error(r, E_NOT_FOUND, NULL, "no job %s", id);
  return 1;
}

static int not_ready(req *r, enum MHD_Result *ret) {
  if (atomic_load(&r->h->ready) && r->h->p.probes_only) {
    *ret = send_error(r, E_NOT_FOUND, NULL, "this replica is a worker (role worker): it serves probes and metrics only");
    return 1;
  }
  if (atomic_load(&r->h->ready)) return 0;
  *ret = send_error(r, E_NOT_READY, NULL, "the model is still loading");
  return 1;
}

static enum MHD_Result h_job_get(req *r) {
  enum MHD_Result ret;
  if (not_ready(r, &ret)) return ret;
  sg_job_status st;
  if (job_missing(r, sg_store_status(r->h->store, r->id, &st), &ret)) return ret;
  memcpy(r->job_id, st.id, sizeof r->job_id);
  return send_json(r, 200, sg_jobjson_status(&st));
}

static enum MHD_Result h_job_delete(req *r) {
  enum MHD_Result ret;
  if (not_ready(r, &ret)) return ret;
  int rc = sg_store_cancel(r->h->store, r->id);
  if (rc == SG_JOBS_EFINISHED) return send_error(r, E_CONFLICT, NULL, "the job has already finished");
  if (job_missing(r, rc, &ret)) return ret;
  sg_job_status st;
  if (job_missing(r, sg_store_status(r->h->store, r->id, &st), &ret)) return ret;
  memcpy(r->job_id, st.id, sizeof r->job_id);
  /* a running job stops at its next step: accepted, not done */
  return send_json(r, st.state == SG_JOB_RUNNING ? 202 : 200, sg_jobjson_status(&st));
}

static enum MHD_Result h_job_image(req *r) {
  enum MHD_Result ret;
  if (not_ready(r, &ret)) return ret;
  uint8_t *png = NULL;
  size_t len = 0;
  int rc = sg_store_image(r->h->store, r->id, r->index, &png, &len);
  if (rc == SG_JOBS_ENOIMAGE) {
    sg_job_status st;
    if (job_missing(r, sg_store_status(r->h->store, r->id, &st), &ret)) return ret;
    if (st.state == SG_JOB_QUEUED || st.state == SG_JOB_RUNNING)
      return send_error(r, E_CONFLICT, NULL, "the job is %s; its images are not ready", sg_job_state_name(st.state));
    return send_error(r, E_NOT_FOUND, NULL, "the job (%s) has no image %d", sg_job_state_name(st.state),
                      (int)r->index);
  }
  if (rc == SG_JOBS_ENOMEM) return send_error(r, E_INTERNAL, NULL, "out of memory");
  if (job_missing(r, rc, &ret)) return ret;
  memcpy(r->job_id, r->id, SG_JOB_ID_LEN - 1); /* an image was found: r->id is a whole job id */
  r->job_id[SG_JOB_ID_LEN - 1] = 0;
  struct MHD_Response *resp = MHD_create_response_from_buffer(len, png, MHD_RESPMEM_MUST_FREE);
  if (!resp) {
    free(png);
    return MHD_NO;
  }
  MHD_add_response_header(resp, "Content-Type", "image/png");
  return send_response(r, 200, resp, len);
}

/* GET /v1/images/files/{key}: an OpenAI url result, by its key until it expires (open: the key is the credential,
 * as OpenAI's signed URLs are), then as GET /v1/jobs/{id}/images/{i}. */
static enum MHD_Result h_file(req *r) {
  enum MHD_Result ret;
  if (not_ready(r, &ret)) return ret;
  double exp = 0;
  char key[sizeof r->id];
  memcpy(key, r->id, sizeof key);
  int rc = sg_store_file_get(r->h->store, key, (double)time(NULL), r->id, &r->index, &exp);
  if (rc == SG_JOBS_EEXPIRED) return send_error(r, E_GONE, NULL, "the URL expired at %.0f (Unix time)", exp);
  if (rc == SG_STORE_EUNAVAILABLE)
    return send_error(r, E_UNAVAILABLE, NULL, "the job store (Redis) cannot be reached; try again shortly");
  if (rc == SG_STORE_EBADDATA) return send_error(r, E_INTERNAL, NULL, "the URL's record in the store is malformed");
  if (rc) return send_error(r, E_NOT_FOUND, NULL, "no such file (URLs last %.0f s)", r->h->p.result_ttl_s);
  return h_job_image(r);
}

/* ---- server-sent events ---- */

/* Appends one event (with its id line when it has one) to the stream's buffer; r->mu held. */
static void stream_push_locked(req *r, const char *event, const char *event_id, json_t *data) {
  char *text = data ? json_dumps(data, JSON_COMPACT | JSON_REAL_PRECISION(15)) : NULL;
  if (!text) {
    r->gone = 1; /* out of memory: end the stream rather than lose events silently */
    return;
  }
  char headl[128];
  int n = event_id ? snprintf(headl, sizeof headl, "id: %s\nevent: %s\ndata: ", event_id, event)
                   : snprintf(headl, sizeof headl, "event: %s\ndata: ", event);
  if (sg_buf_add(&r->ev, headl, (size_t)n) || sg_buf_add(&r->ev, text, strlen(text)) ||
      sg_buf_add(&r->ev, "\n\n", 2))
    r->gone = 1;
  json_free_t jfree;
  json_get_alloc_funcs(NULL, &jfree);
  jfree(text);
  r->ev_t = now_s();
}

static void on_stream_event(void *user, const sg_job_event *ev, const char *event_id) {
  req *r = user;
  json_t *o = json_object();
  if (o) {
    json_object_set_new(o, "id", json_string(ev->id));
    json_object_set_new(o, "status", json_string(sg_job_state_name(ev->state)));
    json_object_set_new(o, "step", json_integer(ev->step));
    json_object_set_new(o, "total", json_integer(ev->total));
    if (ev->kind == SG_JOB_EVENT_END) {
      if (ev->error != SG_JOB_ERR_NONE) {
        json_t *e = json_object();
        json_object_set_new(e, "code", json_string(sg_job_error_name(ev->error)));
        json_object_set_new(e, "message", json_string(ev->message));
        json_object_set_new(o, "error", e);
      } else {
        json_object_set_new(o, "error", json_null());
      }
      json_object_set_new(o, "images", sg_jobjson_images(ev->id, r->seed, ev->n_images)); /* r->seed: h_job_events */
    }
  }
  pthread_mutex_lock(&r->mu);
  stream_push_locked(r, ev->kind == SG_JOB_EVENT_END ? "end" : "progress", event_id, o);
  if (ev->kind == SG_JOB_EVENT_END) r->ev_end = 1;
  resume_locked(r);
  pthread_mutex_unlock(&r->mu);
  json_decref(o);
}

/* libmicrohttpd's content reader of an event stream: what is buffered, the end, or a suspension until more. */
static ssize_t stream_read(void *cls, uint64_t pos, char *out, size_t max) {
  req *r = cls;
  ssize_t ret;
  pthread_mutex_lock(&r->mu);
  if (r->ev.len > r->ev_off) {
    size_t n = r->ev.len - r->ev_off < max ? r->ev.len - r->ev_off : max;
    memcpy(out, r->ev.data + r->ev_off, n);
    r->ev_off += n;
    if (r->ev_off == r->ev.len) r->ev.len = r->ev_off = 0;
    r->bytes += n;
    ret = (ssize_t)n;
  } else if (r->gone) {
    ret = MHD_CONTENT_READER_END_WITH_ERROR;
  } else if (r->ev_end) {
    ret = MHD_CONTENT_READER_END_OF_STREAM;
  } else {
    ret = suspend_locked(r) ? 0 : MHD_CONTENT_READER_END_WITH_ERROR;
  }
  pthread_mutex_unlock(&r->mu);
  return ret;
}

static enum MHD_Result h_job_events(req *r) {
  enum MHD_Result ret;
  if (not_ready(r, &ret)) return ret;
  sg_http *h = r->h;
  sg_job_status st;
  if (job_missing(r, sg_store_status(h->store, r->id, &st), &ret)) return ret;
  /* a client resuming (EventSource sends the id of the last event it got) gets the events after it and no status
   * snapshot, so that nothing is repeated; only a store with event ids (redis) can resume */
  const char *last = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "Last-Event-ID");
  if (last && !*last) last = NULL;
  if (last && strcmp(sg_store_kind(h->store), "redis"))
    return send_error(r, E_BAD_REQUEST, "Last-Event-ID", "Last-Event-ID: this replica keeps no event history (local "
                                                          "job store); reconnect without it");
  r->seed = st.seed; /* for the end event's images */
  if (!last) {
    json_t *o = sg_jobjson_status(&st);
    pthread_mutex_lock(&r->mu);
    stream_push_locked(r, "status", NULL, o);
    pthread_mutex_unlock(&r->mu);
    json_decref(o);
  }
  r->ph = PH_STREAM;
  reg_add(r);
  int wrc = sg_store_watch(h->store, r->id, last, on_stream_event, r, &r->watch);
  if (wrc == SG_JOBS_EINVAL)
    return send_error(r, E_BAD_REQUEST, "Last-Event-ID", "Last-Event-ID: not an event id of this job's stream");
  if (job_missing(r, wrc, &ret)) return ret;
  struct MHD_Response *resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, stream_read, r, NULL);
  if (!resp) return MHD_NO;
  MHD_add_response_header(resp, "Content-Type", "text/event-stream");
  MHD_add_response_header(resp, "X-Accel-Buffering", "no");
  snprintf(r->job_id, sizeof r->job_id, "%s", st.id);
  return send_response(r, 200, resp, 0);
}

/* ---- the sketch pad ---- */

/* The page's policy: its own scripts, styles and images only (results are shown through blob: URLs), no framing. */
static const char UI_CSP[] = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
                             "connect-src 'self'; manifest-src 'self'; base-uri 'none'; form-action 'none'; "
                             "frame-ancestors 'none'";

/* Whether an If-None-Match value (a list of entity tags, or "*") names etag; weak tags compare equal too. */
static int etag_matches(const char *inm, const char *etag) {
  size_t n = strlen(etag);
  for (const char *p = inm; *p;) {
    while (*p == ' ' || *p == ',' || *p == '\t') p++;
    if (*p == '*') return 1;
    if (!strncmp(p, "W/", 2)) p += 2;
    if (!strncmp(p, etag, n) && (p[n] == 0 || p[n] == ',' || p[n] == ' ' || p[n] == '\t')) return 1;
    while (*p && *p != ',') p++;
  }
  return 0;
}

/* GET / and /ui/{name}: the embedded files of server/web/, revalidated by entity tag (304 when unchanged). */
static enum MHD_Result h_ui(req *r) {
  sg_http *h = r->h;
  if (!h->p.ui) return send_error(r, E_NOT_FOUND, NULL, "the sketch pad is turned off (setting ui)");
  const char *name = !strcmp(r->rt->pattern, "/") ? "index.html" : r->id;
  const sg_web_asset *a = NULL;
  for (size_t i = 0; i < SG_WEB_N_ASSETS && !a; i++)
    if (!strcmp(SG_WEB_ASSETS[i].name, name)) a = &SG_WEB_ASSETS[i];
  char shown[80];
  if (!a) return send_error(r, E_NOT_FOUND, NULL, "no such file: %s", sg_request_safe_name(name, shown, sizeof shown));
  const char *inm = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_IF_NONE_MATCH);
  int fresh = inm && etag_matches(inm, a->etag);
  struct MHD_Response *resp = fresh ? MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT)
                                    : MHD_create_response_from_buffer(a->len, (void *)a->data, MHD_RESPMEM_PERSISTENT);
  if (!resp) return MHD_NO;
  if (!fresh) MHD_add_response_header(resp, "Content-Type", a->content_type);
  MHD_add_response_header(resp, "ETag", a->etag);
  MHD_add_response_header(resp, "Cache-Control", "no-cache"); /* cached, but revalidated: a new build shows at once */
  MHD_add_response_header(resp, "X-Content-Type-Options", "nosniff");
  MHD_add_response_header(resp, "Referrer-Policy", "no-referrer");
  if (!strncmp(a->content_type, "text/html", 9)) {
    MHD_add_response_header(resp, "Content-Security-Policy", UI_CSP);
    MHD_add_response_header(resp, "X-Frame-Options", "DENY");
  }
  return send_response(r, fresh ? 304 : 200, resp, fresh ? 0 : a->len);
}

/* ---- routing ---- */

static const route ROUTES[] = {
    {"GET", "/", h_ui, R_OPEN | R_HEAD},
    {"GET", "/ui/{name}", h_ui, R_OPEN | R_HEAD},
    {"GET", "/healthz", h_healthz, R_OPEN | R_HEAD},
    {"GET", "/readyz", h_readyz, R_OPEN | R_HEAD},
    {"GET", "/metrics", h_metrics, R_METRICS | R_HEAD},
    {"GET", "/v1/info", h_info, R_HEAD},
    {"POST", "/v1/generate", h_generate, R_BODY},
    {"POST", "/v1/images/generations", h_generate, R_BODY | R_OAI_GEN},
    {"POST", "/v1/images/edits", h_generate, R_BODY | R_OAI_EDIT},
    {"GET", "/v1/images/files/{id}", h_file, R_OPEN},
    {"GET", "/v1/jobs/{id}", h_job_get, R_HEAD},
    {"DELETE", "/v1/jobs/{id}", h_job_delete, 0},
    {"GET", "/v1/jobs/{id}/images/{i}", h_job_image, R_HEAD},
    {"GET", "/v1/jobs/{id}/events", h_job_events, 0},
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
static const route *route_find(req *r, const char *method, const char *url, int *path_known) {
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
static const char *allowed_origin(sg_http *h, struct MHD_Connection *c) {
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

static int authorized(sg_http *h, struct MHD_Connection *c) {
  const char *a = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
  if (!a || strncasecmp(a, "Bearer ", 7)) return 0;
  a += 7;
  while (*a == ' ') a++;
  return token_equal(a, h->token);
}

static enum MHD_Result options_answer(req *r) {
  struct MHD_Response *resp = MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
  if (!resp) return MHD_NO;
  MHD_add_response_header(resp, "Allow", r->allow);
  if (r->origin) {
    MHD_add_response_header(resp, "Access-Control-Allow-Methods", r->allow);
    MHD_add_response_header(resp, "Access-Control-Allow-Headers", "Authorization, Content-Type, Prefer, Accept");
    MHD_add_response_header(resp, "Access-Control-Max-Age", "600");
  }
  return send_response(r, 204, resp, 0);
}

/* ---- the request head: framing checks before any body byte is read ---- */

typedef struct {
  int n, n_cl, n_te, n_host, bad_name, bad_value, folded;
  size_t bytes;
  const char *cl, *te;
} head_scan;

/* RFC 9110 token characters, those of a header name. */
static int is_tchar(unsigned char c) { return c > 32 && c < 127 && !strchr("\"(),/:;<=>?@[\\]{}", c); }

static enum MHD_Result on_header(void *cls, enum MHD_ValueKind kind, const char *key, size_t key_size,
                                 const char *value, size_t value_size) {
  head_scan *s = cls;
  s->n++;
  /* a NUL (the value is longer than its C string) or another control character but HTAB in a value: a peer may
   * read the head otherwise ("chunked\0", a bare CR that another parser ends the line at) */
  if ((key && strlen(key) != key_size) || (value && strlen(value) != value_size)) s->bad_value = 1;
  for (const unsigned char *v = (const unsigned char *)value; v && *v; v++)
    if ((*v < 0x20 && *v != '\t') || *v == 0x7f) s->bad_value = 1;
  s->bytes += (key ? strlen(key) : 0) + (value ? strlen(value) : 0);
  if (!key || !*key) s->bad_name = 1;
  for (const unsigned char *k = (const unsigned char *)key; k && *k; k++)
    if (!is_tchar(*k)) s->bad_name = 1;
  /* libmicrohttpd 0.9.75 appends a folded continuation line to the header's name ("Transfer-Encoding:\r\n chunked"
   * becomes a field "Transfer-Encodingchunked" with an empty value): a proxy that unfolds reads a framing header
   * where this server would not */
  if (key && ((key_size > 14 && !strncasecmp(key, "Content-Length", 14)) ||
              (key_size > 17 && !strncasecmp(key, "Transfer-Encoding", 17))))
    s->folded = 1;
  if (key && !strcasecmp(key, "Content-Length")) {
    s->n_cl++;
    s->cl = value ? value : "";
  } else if (key && !strcasecmp(key, "Transfer-Encoding")) {
    s->n_te++;
    s->te = value ? value : "";
  } else if (key && !strcasecmp(key, "Host")) {
    s->n_host++;
  }
  return MHD_YES;
}

static enum MHD_Result on_query_arg(void *cls, enum MHD_ValueKind kind, const char *key, const char *value) {
  (*(int *)cls)++;
  return MHD_YES;
}

/* Refuses a request whose head could frame its body in more than one way (the way requests are smuggled past a
 * proxy), or that has too many header fields or query arguments: the answer says Connection: close, so that no
 * byte after the head is ever read as another request. Returns 1 after queuing the refusal in *ret. */
static int head_refused(req *r, const char *version, enum MHD_Result *ret) {
  head_scan s;
  memset(&s, 0, sizeof s);
  MHD_get_connection_values_n(r->conn, MHD_HEADER_KIND, on_header, &s);
  int n_args = 0;
  MHD_get_connection_values(r->conn, MHD_GET_ARGUMENT_KIND, on_query_arg, &n_args);
  char shown[48];
  r->close_conn = 1;
  if (s.n > MAX_HEADERS)
    *ret = send_error(r, E_HEADERS_TOO_LARGE, NULL, "more than %d header fields", MAX_HEADERS);
  else if (s.bytes > MAX_HEADER_BYTES)
    *ret = send_error(r, E_HEADERS_TOO_LARGE, NULL, "header fields of more than %d bytes in all", MAX_HEADER_BYTES);
  else if (n_args > MAX_QUERY_ARGS)
    *ret = send_error(r, E_URI_TOO_LONG, NULL, "more than %d query arguments", MAX_QUERY_ARGS);
  else if (s.bad_name)
    *ret = send_error(r, E_BAD_REQUEST, NULL, "a malformed header name (white space or a separator in it)");
  else if (s.folded)
    *ret = send_error(r, E_BAD_REQUEST, NULL,
                      "a malformed Content-Length or Transfer-Encoding header (a folded header line?)");
  else if (s.bad_value)
    *ret = send_error(r, E_BAD_REQUEST, NULL, "a header value with a NUL, CR or other control character in it");
  else if (s.n_cl && s.n_te)
    *ret = send_error(r, E_BAD_REQUEST, NULL, "Content-Length and Transfer-Encoding together");
  else if (s.n_cl > 1 || s.n_te > 1 || s.n_host > 1)
    *ret = send_error(r, E_BAD_REQUEST, NULL, "more than one %s header",
                      s.n_cl > 1 ? "Content-Length" : s.n_te > 1 ? "Transfer-Encoding" : "Host");
  else if (!s.n_host && version && !strcmp(version, MHD_HTTP_VERSION_1_1))
    *ret = send_error(r, E_BAD_REQUEST, NULL, "a Host header is required (HTTP version 1.1)");
  else if (s.n_cl && (!*s.cl || strspn(s.cl, "0123456789") != strlen(s.cl)))
    *ret = send_error(r, E_BAD_REQUEST, NULL, "Content-Length '%s' is not one decimal number", sg_request_safe_name(s.cl, shown, sizeof shown));
  else if (s.n_te && strcasecmp(s.te, "chunked"))
    *ret = send_error(r, E_BAD_REQUEST, NULL, "Transfer-Encoding '%s' is not supported (only chunked)",
                      sg_request_safe_name(s.te, shown, sizeof shown));
  else {
    r->close_conn = 0;
    return 0;
  }
  return 1;
}

/* Called with the request line before the query is parsed. A query of more arguments than libmicrohttpd's
 * connection memory holds leaves the request unanswered until connection_timeout_s (0.9.75), so a query over
 * MAX_QUERY_ARGS is refused here, before that parse: the JSON 414 goes out on the socket directly (nothing else has
 * been written on it yet) and the socket is shut down, which closes the connection at once. Returns 1 when
 * refused. */
static int too_many_args(sg_http *h, const char *uri, struct MHD_Connection *c) {
  const char *q = uri ? strchr(uri, '?') : NULL;
  int n = 0;
  for (const char *p = q; p && *p; p++) n += *p == '&' || p == q;
  if (n <= MAX_QUERY_ARGS) return 0;
  const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
  if (!ci) return 0;
  char body[160], resp[512];
  int bn = snprintf(body, sizeof body,
                    "{\"error\":{\"code\":\"uri_too_long\",\"message\":\"more than %d query arguments\",\"param\":null}}",
                    MAX_QUERY_ARGS);
  int rn = snprintf(resp, sizeof resp,
                    "HTTP/1.1 414 URI Too Long\r\nConnection: close\r\nContent-Type: application/json\r\n"
                    "Cache-Control: no-store\r\nContent-Length: %d\r\n\r\n%s",
                    bn, body);
  ssize_t sent = send(ci->connect_fd, resp, (size_t)rn, MSG_NOSIGNAL | MSG_DONTWAIT);
  shutdown(ci->connect_fd, SHUT_RDWR);
  logf_(h, SG_JOBS_LOG_INFO, "%s: a query of %d arguments refused (414%s)", __func__, n, sent == rn ? "" : ", not sent");
  sg_metrics_request(h->metrics, "OTHER", "other", 414, 0.0);
  return 1;
}

static req *req_new(sg_http *h, struct MHD_Connection *c, const char *url, const char *method);

/* libmicrohttpd's URI callback: allocates the request's state (freed in on_completed) and watches its socket
 * until the head is complete, so that a client that half-closes in the middle of its head is let go at once
 * (with this callback set, libmicrohttpd 0.9.75 would hold it until connection_timeout_s); refuses a query of
 * too many arguments (too_many_args). Returns the state, or NULL (out of memory, or refused). */
static void *on_uri(void *cls, const char *uri, struct MHD_Connection *c) {
  sg_http *h = cls;
  if (too_many_args(h, uri, c)) return NULL;
  req *r = req_new(h, c, NULL, NULL);
  if (r) upload_add(r);
  return r;
}

/* The first call of a request: route, auth, early refusals (answered before the body, which is then skipped),
 * and the body's parser. */
static enum MHD_Result first_call(req *r, const char *url, const char *method, const char *version) {
  sg_http *h = r->h;
  struct MHD_Connection *c = r->conn;
  r->origin = allowed_origin(h, c);
  enum MHD_Result hret;
  if (head_refused(r, version, &hret)) return hret;
  int known = 0;
  if (!strcmp(method, "OPTIONS")) {
    route_find(r, "OPTIONS", url, &known);
    if (!known) return send_error(r, E_NOT_FOUND, NULL, "no such route");
    return options_answer(r);
  }
  r->rt = route_find(r, method, url, &known);
  if (!r->rt) {
    if (known) return send_error(r, E_METHOD, NULL, "%s is not allowed here (allowed: %s)", r->method, r->allow);
    return send_error(r, E_NOT_FOUND, NULL, "no such route");
  }
  int needs_token = h->token && !(r->rt->flags & R_OPEN) && (!(r->rt->flags & R_METRICS) || h->p.metrics_require_token);
  if (needs_token && !authorized(h, c)) return send_error(r, E_UNAUTHORIZED, NULL, "a valid bearer token is required");
  const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
  if (cl) {
    char *end;
    errno = 0;
    unsigned long long n = strtoull(cl, &end, 10);
    if (!errno && end != cl && n > (unsigned long long)h->p.max_body_bytes)
      return send_error(r, E_TOO_LARGE, NULL, "the body (%llu bytes) is over the limit of %lld bytes", n,
                        (long long)h->p.max_body_bytes);
  }
  if (!(r->rt->flags & R_BODY)) {
    r->body = BODY_DISCARD;
    return MHD_YES;
  }
  enum MHD_Result ret;
  if (work_refused(r, &ret)) return ret;
  if (!(r->q = request_new(h, r->rt))) return send_error(r, E_INTERNAL, NULL, "out of memory");
  if (sg_request_begin(r->q, MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_TYPE)))
    return send_recorded(r); /* another media type, or multipart without a boundary */
  r->body = BODY_PARSED;
  upload_add(r);
  return MHD_YES;
}

/* One piece of the body: counted against the limit, then handed to the parser or dropped. */
static void body_chunk(req *r, const char *data, size_t n) {
  uint64_t limit = (uint64_t)r->h->p.max_body_bytes;
  r->received += n;
  if (r->received > limit) {
    record_error(r, E_TOO_LARGE, NULL, "the body is over the limit of %llu bytes", (unsigned long long)limit);
    if (r->received > 2 * limit) r->abort_conn = 1; /* stop draining an endless chunked body */
    return;
  }
  if (failed(r)) return;
  if (r->body == BODY_PARSED) sg_request_add_body(r->q, data, n);
}

/* Records the request's method (one of the known ones, or OTHER) and path for the log and metrics. */
static void req_name(req *r, const char *url, const char *method) {
  static const char *const known[] = {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"};
  snprintf(r->method, sizeof r->method, "OTHER");
  for (size_t i = 0; i < sizeof known / sizeof *known; i++)
    if (!strcmp(method, known[i])) snprintf(r->method, sizeof r->method, "%s", known[i]);
  sg_request_safe_name(url, r->path, sizeof r->path);
}

/* A new request's state (url and method may be NULL: named later by req_name). Returns NULL when out of memory. */
static req *req_new(sg_http *h, struct MHD_Connection *c, const char *url, const char *method) {
  req *r = calloc(1, sizeof *r);
  if (!r) return NULL;
  if (pthread_mutex_init(&r->mu, NULL)) {
    free(r);
    return NULL;
  }
  r->mu_ok = 1;
  r->h = h;
  r->conn = c;
  r->t0 = now_s();
  r->fd = -1;
  snprintf(r->method, sizeof r->method, "OTHER");
  snprintf(r->path, sizeof r->path, "?");
  if (method && url) req_name(r, url, method);
  return r;
}

static void req_free(req *r) {
  sg_request_free(r->q);
  for (int32_t i = 0; i < r->n_png; i++) free(r->png[i]);
  sg_buf_free(&r->ev);
  if (r->mu_ok) pthread_mutex_destroy(&r->mu);
  free(r);
}

static enum MHD_Result on_access(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                 const char *version, const char *upload, size_t *upload_size, void **con_cls) {
  sg_http *h = cls;
  req *r = *con_cls;
  if (!r) { /* on_uri ran out of memory */
    if (!(r = req_new(h, c, url, method))) return MHD_NO;
    *con_cls = r;
  }
  if (!r->started) { /* the head is complete */
    r->started = 1;
    req_name(r, url, method);
    upload_remove(r);
    return first_call(r, url, method, version);
  }
  if (r->responded) { /* answered early: the body is being skipped */
    *upload_size = 0;
    return MHD_YES;
  }
  if (*upload_size) {
    body_chunk(r, upload, *upload_size);
    *upload_size = 0;
    return r->abort_conn ? MHD_NO : MHD_YES;
  }
  upload_remove(r); /* the body is complete */
  if (failed(r) && r->ph == PH_NEW) return send_recorded(r);
  return r->rt->fn(r);
}

/* The one place where a request's state is freed: after its response was sent, or its connection failed. */
static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode toe) {
  sg_http *h = cls;
  req *r = *con_cls;
  if (!r) return;
  *con_cls = NULL;
  if (r->watch) {
    sg_store_unwatch(h->store, r->watch); /* no callback runs after this: nobody resumes a closed connection */
    r->watch = NULL;
  }
  int cancelled = 0;
  pthread_mutex_lock(&r->mu);
  int unfinished = r->ph == PH_WAIT && r->job_id[0] && !r->done;
  pthread_mutex_unlock(&r->mu);
  if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK && unfinished)
    cancelled = sg_store_cancel(h->store, r->job_id) == 0;
  reg_remove(r);
  upload_remove(r);
  double ms = (now_s() - r->t0) * 1000.0;
  int status = r->responded ? r->status : 499; /* 499: the client went away before an answer */
  static const char *const why[] = {"", " (connection failed)", " (timed out)", " (server stopped)",
                                    " (read failed)", " (client left)"};
  logf_(h, SG_JOBS_LOG_INFO, "%s %s %d %llu B %.1f ms%s%s%s%s", r->method, r->path, status,
        (unsigned long long)r->bytes, ms, r->job_id[0] ? " job=" : "", r->job_id,
        toe < sizeof why / sizeof *why ? why[toe] : " (aborted)", cancelled ? "; job cancelled" : "");
  sg_metrics_request(h->metrics, r->method, r->rt ? r->rt->pattern : "other", status, ms / 1000.0);
  req_free(r);
}

static void mhd_log(void *cls, const char *fmt, va_list ap) {
  sg_http *h = cls;
  char line[512];
  vsnprintf(line, sizeof line, fmt, ap);
  size_t n = strlen(line);
  while (n && (line[n - 1] == '\n' || line[n - 1] == '\r')) line[--n] = 0;
  if (h->starting) snprintf(h->start_err, sizeof h->start_err, "%s", line);
  logf_(h, SG_JOBS_LOG_DEBUG, "libmicrohttpd: %s", line);
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
  h->d = MHD_start_daemon(flags, (uint16_t)p.port, NULL, NULL, on_access, h,    //
                          MHD_OPTION_EXTERNAL_LOGGER, mhd_log, h,               //
                          MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa,         //
                          MHD_OPTION_NOTIFY_COMPLETED, on_completed, h,         //
                          MHD_OPTION_URI_LOG_CALLBACK, on_uri, h,               //
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
  if (pthread_create(&h->wd, NULL, watchdog_main, h)) {
    MHD_stop_daemon(h->d);
    destroy(h);
    sg_set_err(err, errlen, "cannot start the watchdog thread");
    return NULL;
  }
  h->wd_started = 1;
  logf_(h, SG_JOBS_LOG_DEBUG, "%s: %d event-loop thread(s), at most %d connections, auth %s, CORS %s", __func__,
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
  double end = now_s() + (grace_s > 0 ? grace_s : 0);
  while (h->n_waiting > 0 && now_s() < end) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += 50 * 1000000L;
    ts.tv_sec += ts.tv_nsec / 1000000000L;
    ts.tv_nsec %= 1000000000L;
    pthread_cond_timedwait(&h->cv, &h->mu, &ts);
  }
  if (h->n_waiting > 0) logf_(h, SG_JOBS_LOG_WARN, "%s: closing %d waiting request(s)", __func__, (int)h->n_waiting);
  atomic_store(&h->stopping, 1);
  for (req *r = h->waiting; r; r = r->wnext) { /* libmicrohttpd must not be stopped with suspended connections */
    pthread_mutex_lock(&r->mu);
    r->gone = 1;
    resume_locked(r);
    pthread_mutex_unlock(&r->mu);
  }
  h->wd_stop = 1;
  pthread_cond_broadcast(&h->cv);
  pthread_mutex_unlock(&h->mu);
  if (h->wd_started) pthread_join(h->wd, NULL);
  MHD_stop_daemon(h->d);
  destroy(h);
}
