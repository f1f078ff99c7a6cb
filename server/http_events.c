/* The HTTP API's waiting list, suspension and watchdog, and its server-sent events (GET /v1/jobs/{id}/events). */
#include "http.h"

#include <errno.h>
#include <jansson.h>
#include <microhttpd.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "buf.h"
#include "http_impl.h"
#include "jobjson.h"
#include "store.h"

/* ---- the waiting list, suspension and the watchdog ---- */

void sg_http_reg_add(req *r) {
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

void sg_http_reg_remove(req *r) {
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
int sg_http_suspend_locked(req *r) {
  if (r->gone || atomic_load(&r->h->stopping)) return 0;
  MHD_suspend_connection(r->conn);
  r->suspended = 1;
  return 1;
}

/* Resumes r's connection if suspended; r->mu held. Every suspension gets exactly one resume. */
void sg_http_resume_locked(req *r) {
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

void *sg_http_watchdog_main(void *arg) {
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
    double now = sg_http_now_s();
    for (req *r = h->waiting; r; r = r->wnext) {
      pthread_mutex_lock(&r->mu);
      if (r->suspended && peer_gone(r->fd)) {
        r->gone = 1;
        sg_http_resume_locked(r);
      } else if (r->suspended && r->ph == PH_STREAM && h->p.sse_keepalive_s > 0 &&
                 now - r->ev_t >= h->p.sse_keepalive_s) {
        if (sg_buf_add(&r->ev, ": keep-alive\n\n", 14)) r->gone = 1; /* a comment: EventSource ignores it */
        r->ev_t = now;
        sg_http_resume_locked(r);
      }
      pthread_mutex_unlock(&r->mu);
    }
    /* a client that closed (or half-closed) its end before its body was complete will send no more: libmicrohttpd
     * would wait for the rest until connection_timeout_s. Seen on two ticks with no byte received in between (so
     * that a body whose last bytes arrived with the FIN is still handed over), the socket is shut down, which makes
     * libmicrohttpd close the connection at once. The fd stays valid: sg_http_on_completed unlinks r under h->mu first. */
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
        sg_http_logf(h, SG_JOBS_LOG_DEBUG, "%s: a client left in the middle of its body (%llu bytes); closing",
                     __func__, (unsigned long long)got);
        shutdown(r->up_fd, SHUT_RDWR);
        r->up_eof = -1;
      }
    }
  }
  pthread_mutex_unlock(&h->mu);
  return NULL;
}

/* Puts r on the list of requests whose body is being read, or takes it off. */
void sg_http_upload_add(req *r) {
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

void sg_http_upload_remove(req *r) {
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
  r->ev_t = sg_http_now_s();
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
      /* r->seed: set by sg_http_h_job_events */
      json_object_set_new(o, "images", sg_jobjson_images(ev->id, r->seed, ev->n_images));
    }
  }
  pthread_mutex_lock(&r->mu);
  stream_push_locked(r, ev->kind == SG_JOB_EVENT_END ? "end" : "progress", event_id, o);
  if (ev->kind == SG_JOB_EVENT_END) r->ev_end = 1;
  sg_http_resume_locked(r);
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
    ret = sg_http_suspend_locked(r) ? 0 : MHD_CONTENT_READER_END_WITH_ERROR;
  }
  pthread_mutex_unlock(&r->mu);
  return ret;
}

enum MHD_Result sg_http_h_job_events(req *r) {
  enum MHD_Result ret;
  if (sg_http_not_ready(r, &ret)) return ret;
  sg_http *h = r->h;
  sg_job_status st;
  if (sg_http_job_missing(r, sg_store_status(h->store, r->id, &st), &ret)) return ret;
  /* a client resuming (EventSource sends the id of the last event it got) gets the events after it and no status
   * snapshot, so that nothing is repeated; only a store with event ids (redis) can resume */
  const char *last = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "Last-Event-ID");
  if (last && !*last) last = NULL;
  if (last && strcmp(sg_store_kind(h->store), "redis"))
    return sg_http_send_error(r, E_BAD_REQUEST, "Last-Event-ID",
                              "Last-Event-ID: this replica keeps no event history (local job store); reconnect "
                              "without it");
  r->seed = st.seed; /* for the end event's images */
  if (!last) {
    json_t *o = sg_jobjson_status(&st);
    pthread_mutex_lock(&r->mu);
    stream_push_locked(r, "status", NULL, o);
    pthread_mutex_unlock(&r->mu);
    json_decref(o);
  }
  r->ph = PH_STREAM;
  sg_http_reg_add(r);
  int wrc = sg_store_watch(h->store, r->id, last, on_stream_event, r, &r->watch);
  if (wrc == SG_JOBS_EINVAL)
    return sg_http_send_error(r, E_BAD_REQUEST, "Last-Event-ID", "Last-Event-ID: not an event id of this job's stream");
  if (sg_http_job_missing(r, wrc, &ret)) return ret;
  struct MHD_Response *resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, stream_read, r, NULL);
  if (!resp) return MHD_NO;
  MHD_add_response_header(resp, "Content-Type", "text/event-stream");
  MHD_add_response_header(resp, "X-Accel-Buffering", "no");
  snprintf(r->job_id, sizeof r->job_id, "%s", st.id);
  return sg_http_send_response(r, 200, resp, 0);
}
