/* Private to server/http*.c: the state of the server and of a request, and what the files of the HTTP API share. */
#ifndef SG_HTTP_IMPL_H
#define SG_HTTP_IMPL_H

#include <jansson.h>
#include <microhttpd.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "http.h"
#include "openai.h"
#include "request.h"
#include "store.h"

#define WATCHDOG_MS 200
#define MAX_HEADERS 64      /* header fields of a request; more get 431 */
#define MAX_QUERY_ARGS 32   /* query arguments of a request; more get 414 */
#define MAX_HEADER_BYTES 32768 /* names and values of a request's header fields together; more get 431 */
#define CONN_MEMORY 131072  /* libmicrohttpd's memory per connection (32 KiB by default): the request head, its
                               header fields and query arguments must fit in it for http_head.c's checks to see them */

/* ---- errors: the kinds of the one table (ERRORS, in http.c) and the modules whose codes map onto it ---- */

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

typedef enum { D_JOBS, D_JOB_ERROR, D_IMAGE, D_REQUEST, D_OPENAI } err_domain;

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
  int started;          /* the access handler has seen the request (sg_http_on_uri allocates it, with the head unread) */
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

/* ---- the functions the files share (each one's comment is at its definition) ---- */

/* http.c: errors, the log, responses */
err_kind sg_http_kind_of(err_domain d, int code);
double sg_http_now_s(void);
void sg_http_logf(sg_http *h, sg_jobs_log_level level, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
enum MHD_Result sg_http_send_response(req *r, int status, struct MHD_Response *resp, uint64_t bytes);
struct MHD_Response *sg_http_json_response(json_t *body, size_t *n);
enum MHD_Result sg_http_send_json(req *r, int status, json_t *body);
enum MHD_Result sg_http_send_error(req *r, err_kind k, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
int sg_http_failed(const req *r);
void sg_http_record_error(req *r, err_kind k, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
enum MHD_Result sg_http_send_recorded(req *r);
const char *sg_http_param_of_message(const char *msg, char *param, size_t cap);

/* http.c: routing */
const route *sg_http_route_find(req *r, const char *method, const char *url, int *path_known);
const char *sg_http_allowed_origin(sg_http *h, struct MHD_Connection *c);
int sg_http_authorized(sg_http *h, struct MHD_Connection *c);
enum MHD_Result sg_http_options_answer(req *r);

/* http_events.c: the waiting list, suspension, the watchdog; the event stream's handler */
void sg_http_reg_add(req *r);
void sg_http_reg_remove(req *r);
int sg_http_suspend_locked(req *r);
void sg_http_resume_locked(req *r);
void *sg_http_watchdog_main(void *arg);
void sg_http_upload_add(req *r);
void sg_http_upload_remove(req *r);
enum MHD_Result sg_http_h_job_events(req *r);

/* http_handlers.c: request parameters, the refusals that other files share, the handlers */
sg_request *sg_http_request_new(sg_http *h, const route *rt);
int sg_http_work_refused(req *r, enum MHD_Result *ret);
int sg_http_job_missing(req *r, int rc, enum MHD_Result *ret);
int sg_http_not_ready(req *r, enum MHD_Result *ret);
enum MHD_Result sg_http_h_generate(req *r);
enum MHD_Result sg_http_h_healthz(req *r);
enum MHD_Result sg_http_h_readyz(req *r);
enum MHD_Result sg_http_h_metrics(req *r);
enum MHD_Result sg_http_h_info(req *r);
enum MHD_Result sg_http_h_job_get(req *r);
enum MHD_Result sg_http_h_job_delete(req *r);
enum MHD_Result sg_http_h_job_image(req *r);
enum MHD_Result sg_http_h_file(req *r);
enum MHD_Result sg_http_h_ui(req *r);

/* http_head.c: libmicrohttpd's callbacks */
void *sg_http_on_uri(void *cls, const char *uri, struct MHD_Connection *c);
enum MHD_Result sg_http_on_access(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                  const char *version, const char *upload, size_t *upload_size, void **con_cls);
void sg_http_on_completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode toe);
void sg_http_mhd_log(void *cls, const char *fmt, va_list ap);

#endif
