/* The HTTP API's request head (framing checks before any body byte is read), its body, and a request's life. */
#include "http.h"

#include <errno.h>
#include <microhttpd.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include "buf.h"
#include "http_impl.h"
#include "request.h"
#include "store.h"

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
    *ret = sg_http_send_error(r, E_HEADERS_TOO_LARGE, NULL, "more than %d header fields", MAX_HEADERS);
  else if (s.bytes > MAX_HEADER_BYTES)
    *ret = sg_http_send_error(r, E_HEADERS_TOO_LARGE, NULL, "header fields of more than %d bytes in all", MAX_HEADER_BYTES);
  else if (n_args > MAX_QUERY_ARGS)
    *ret = sg_http_send_error(r, E_URI_TOO_LONG, NULL, "more than %d query arguments", MAX_QUERY_ARGS);
  else if (s.bad_name)
    *ret = sg_http_send_error(r, E_BAD_REQUEST, NULL, "a malformed header name (white space or a separator in it)");
  else if (s.folded)
    *ret = sg_http_send_error(r, E_BAD_REQUEST, NULL,
                              "a malformed Content-Length or Transfer-Encoding header (a folded header line?)");
  else if (s.bad_value)
    *ret = sg_http_send_error(r, E_BAD_REQUEST, NULL, "a header value with a NUL, CR or other control character in it");
  else if (s.n_cl && s.n_te)
    *ret = sg_http_send_error(r, E_BAD_REQUEST, NULL, "Content-Length and Transfer-Encoding together");
  else if (s.n_cl > 1 || s.n_te > 1 || s.n_host > 1)
    *ret = sg_http_send_error(r, E_BAD_REQUEST, NULL, "more than one %s header",
                              s.n_cl > 1 ? "Content-Length" : s.n_te > 1 ? "Transfer-Encoding" : "Host");
  else if (!s.n_host && version && !strcmp(version, MHD_HTTP_VERSION_1_1))
    *ret = sg_http_send_error(r, E_BAD_REQUEST, NULL, "a Host header is required (HTTP version 1.1)");
  else if (s.n_cl && (!*s.cl || strspn(s.cl, "0123456789") != strlen(s.cl)))
    *ret = sg_http_send_error(r, E_BAD_REQUEST, NULL, "Content-Length '%s' is not one decimal number", sg_request_safe_name(s.cl, shown, sizeof shown));
  else if (s.n_te && strcasecmp(s.te, "chunked"))
    *ret = sg_http_send_error(r, E_BAD_REQUEST, NULL, "Transfer-Encoding '%s' is not supported (only chunked)",
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
  sg_http_logf(h, SG_JOBS_LOG_INFO, "%s: a query of %d arguments refused (414%s)", __func__, n,
               sent == rn ? "" : ", not sent");
  sg_metrics_request(h->metrics, "OTHER", "other", 414, 0.0);
  return 1;
}

static req *req_new(sg_http *h, struct MHD_Connection *c, const char *url, const char *method);

/* libmicrohttpd's URI callback: allocates the request's state (freed in sg_http_on_completed) and watches its socket
 * until the head is complete, so that a client that half-closes in the middle of its head is let go at once
 * (with this callback set, libmicrohttpd 0.9.75 would hold it until connection_timeout_s); refuses a query of
 * too many arguments (too_many_args). Returns the state, or NULL (out of memory, or refused). */
void *sg_http_on_uri(void *cls, const char *uri, struct MHD_Connection *c) {
  sg_http *h = cls;
  if (too_many_args(h, uri, c)) return NULL;
  req *r = req_new(h, c, NULL, NULL);
  if (r) sg_http_upload_add(r);
  return r;
}

/* The first call of a request: route, auth, early refusals (answered before the body, which is then skipped),
 * and the body's parser. */
static enum MHD_Result first_call(req *r, const char *url, const char *method, const char *version) {
  sg_http *h = r->h;
  struct MHD_Connection *c = r->conn;
  r->origin = sg_http_allowed_origin(h, c);
  enum MHD_Result hret;
  if (head_refused(r, version, &hret)) return hret;
  int known = 0;
  if (!strcmp(method, "OPTIONS")) {
    sg_http_route_find(r, "OPTIONS", url, &known);
    if (!known) return sg_http_send_error(r, E_NOT_FOUND, NULL, "no such route");
    return sg_http_options_answer(r);
  }
  r->rt = sg_http_route_find(r, method, url, &known);
  if (!r->rt) {
    if (known) return sg_http_send_error(r, E_METHOD, NULL, "%s is not allowed here (allowed: %s)", r->method,
                                         r->allow);
    return sg_http_send_error(r, E_NOT_FOUND, NULL, "no such route");
  }
  int needs_token = h->token && !(r->rt->flags & R_OPEN) && (!(r->rt->flags & R_METRICS) || h->p.metrics_require_token);
  if (needs_token && !sg_http_authorized(h, c)) return sg_http_send_error(r, E_UNAUTHORIZED, NULL,
                                                                          "a valid bearer token is required");
  const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
  if (cl) {
    char *end;
    errno = 0;
    unsigned long long n = strtoull(cl, &end, 10);
    if (!errno && end != cl && n > (unsigned long long)h->p.max_body_bytes)
      return sg_http_send_error(r, E_TOO_LARGE, NULL, "the body (%llu bytes) is over the limit of %lld bytes", n,
                                (long long)h->p.max_body_bytes);
  }
  if (!(r->rt->flags & R_BODY)) {
    r->body = BODY_DISCARD;
    return MHD_YES;
  }
  enum MHD_Result ret;
  if (sg_http_work_refused(r, &ret)) return ret;
  if (!(r->q = sg_http_request_new(h, r->rt))) return sg_http_send_error(r, E_INTERNAL, NULL, "out of memory");
  if (sg_request_begin(r->q, MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_TYPE)))
    return sg_http_send_recorded(r); /* another media type, or multipart without a boundary */
  r->body = BODY_PARSED;
  sg_http_upload_add(r);
  return MHD_YES;
}

/* One piece of the body: counted against the limit, then handed to the parser or dropped. */
static void body_chunk(req *r, const char *data, size_t n) {
  uint64_t limit = (uint64_t)r->h->p.max_body_bytes;
  r->received += n;
  if (r->received > limit) {
    sg_http_record_error(r, E_TOO_LARGE, NULL, "the body is over the limit of %llu bytes", (unsigned long long)limit);
    if (r->received > 2 * limit) r->abort_conn = 1; /* stop draining an endless chunked body */
    return;
  }
  if (sg_http_failed(r)) return;
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
  r->t0 = sg_http_now_s();
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

enum MHD_Result sg_http_on_access(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                  const char *version, const char *upload, size_t *upload_size, void **con_cls) {
  sg_http *h = cls;
  req *r = *con_cls;
  if (!r) { /* sg_http_on_uri ran out of memory */
    if (!(r = req_new(h, c, url, method))) return MHD_NO;
    *con_cls = r;
  }
  if (!r->started) { /* the head is complete */
    r->started = 1;
    req_name(r, url, method);
    sg_http_upload_remove(r);
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
  sg_http_upload_remove(r); /* the body is complete */
  if (sg_http_failed(r) && r->ph == PH_NEW) return sg_http_send_recorded(r);
  return r->rt->fn(r);
}

/* The one place where a request's state is freed: after its response was sent, or its connection failed. */
void sg_http_on_completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode toe) {
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
  sg_http_reg_remove(r);
  sg_http_upload_remove(r);
  double ms = (sg_http_now_s() - r->t0) * 1000.0;
  int status = r->responded ? r->status : 499; /* 499: the client went away before an answer */
  static const char *const why[] = {"", " (connection failed)", " (timed out)", " (server stopped)",
                                    " (read failed)", " (client left)"};
  sg_http_logf(h, SG_JOBS_LOG_INFO, "%s %s %d %llu B %.1f ms%s%s%s%s", r->method, r->path, status,
               (unsigned long long)r->bytes, ms, r->job_id[0] ? " job=" : "", r->job_id,
               toe < sizeof why / sizeof *why ? why[toe] : " (aborted)", cancelled ? "; job cancelled" : "");
  sg_metrics_request(h->metrics, r->method, r->rt ? r->rt->pattern : "other", status, ms / 1000.0);
  req_free(r);
}

void sg_http_mhd_log(void *cls, const char *fmt, va_list ap) {
  sg_http *h = cls;
  char line[512];
  vsnprintf(line, sizeof line, fmt, ap);
  size_t n = strlen(line);
  while (n && (line[n - 1] == '\n' || line[n - 1] == '\r')) line[--n] = 0;
  if (h->starting) snprintf(h->start_err, sizeof h->start_err, "%s", line);
  sg_http_logf(h, SG_JOBS_LOG_DEBUG, "libmicrohttpd: %s", line);
}
