/* The HTTP API's handlers: generations and a synchronous one's answer, probes, metrics, info, jobs, the sketch pad. */
#include "http.h"

#include <jansson.h>
#include <microhttpd.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "base64.h"
#include "http_impl.h"
#include "jobjson.h"
#include "openai.h"
#include "request.h"
#include "sampler.h"
#include "store.h"
#include "web_assets.h"

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
  sg_http_resume_locked(r);
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
    err_kind k = sg_http_kind_of(D_JOB_ERROR, st->error);
    const char *msg = sg_http_param_of_message(st->message[0] ? st->message : sg_job_error_name(st->error), param,
                                               sizeof param);
    return sg_http_send_error(r, k, k == E_INVALID ? param : NULL, "%s", msg);
  }
  if (r->png_failed || r->n_png < 1)
    return sg_http_send_error(r, E_INTERNAL, NULL, "the job's images could not be copied (out of memory)");
  if (OAI(r)) {
    char base[300], keys[SG_JOBS_MAX_IMAGES][SG_STORE_FILE_KEY_LEN];
    const char *kp[SG_JOBS_MAX_IMAGES];
    sg_openai_base_url(MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "Host"),
                       MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "X-Forwarded-Proto"), base, sizeof base);
    double expires = (double)time(NULL) + r->h->p.result_ttl_s; /* as long as the job keeps its images */
    for (int32_t i = 0; r->oai_format == SG_OPENAI_URL && i < r->n_png && i < SG_JOBS_MAX_IMAGES; i++) {
      int rc = sg_store_file_put(r->h->store, st->id, i, expires, keys[i]); /* in the store: any replica serves it */
      if (rc == SG_STORE_EUNAVAILABLE)
        return sg_http_send_error(r, E_UNAVAILABLE, NULL, "the job store (Redis) cannot be reached; try again shortly");
      if (rc) return sg_http_send_error(r, E_INTERNAL, NULL, "the image's URL could not be made: %s",
                                        sg_store_strerror(rc));
      kp[i] = keys[i];
    }
    sg_openai_answer_params ap = {r->oai_format, (int64_t)time(NULL), r->h->model->image_size, base, kp};
    size_t n = 0;
    struct MHD_Response *resp = sg_http_json_response(sg_openai_answer(&ap, r->png, r->png_len, r->n_png), &n);
    if (!resp) return sg_http_send_error(r, E_INTERNAL, NULL, "out of memory");
    timing_headers(resp, st);
    return sg_http_send_response(r, 200, resp, n);
  }
  if (r->n_png == 1 && !r->want_json) {
    struct MHD_Response *resp = MHD_create_response_from_buffer(r->png_len[0], r->png[0], MHD_RESPMEM_MUST_FREE);
    if (!resp) return MHD_NO;
    size_t n = r->png_len[0];
    r->png[0] = NULL; /* owned by the response now */
    MHD_add_response_header(resp, "Content-Type", "image/png");
    timing_headers(resp, st);
    return sg_http_send_response(r, 200, resp, n);
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
      return sg_http_send_error(r, E_INTERNAL, NULL, "out of memory");
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
  struct MHD_Response *resp = sg_http_json_response(o, &n);
  if (!resp) return MHD_NO;
  timing_headers(resp, st);
  return sg_http_send_response(r, 200, resp, n);
}

/* Called when a waiting generation's connection runs again: its job ended, its client left, or a stop. */
static enum MHD_Result sync_resumed(req *r) {
  pthread_mutex_lock(&r->mu);
  int gone = r->gone, done = r->done, again = 0;
  if (!gone && !done) again = sg_http_suspend_locked(r);
  pthread_mutex_unlock(&r->mu);
  if (again) return MHD_YES;
  if (gone || !done) return MHD_NO; /* closes the connection; sg_http_on_completed cancels the job */
  return sync_answer(r);
}

/* ---- request parameters (parsed by request.c) ---- */

/* A new parser with the service's limits and the model's defaults (only once the server is ready). Returns NULL
 * when out of memory. */
sg_request *sg_http_request_new(sg_http *h, const route *rt) {
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

int sg_http_work_refused(req *r, enum MHD_Result *ret) {
  if (atomic_load(&r->h->draining)) {
    *ret = sg_http_send_error(r, E_DRAINING, NULL, "the service is shutting down");
    return 1;
  }
  if (!atomic_load(&r->h->ready)) {
    *ret = sg_http_send_error(r, E_NOT_READY, NULL, "the model is still loading");
    return 1;
  }
  if (r->h->p.probes_only) {
    *ret = sg_http_send_error(r, E_NOT_FOUND, NULL, "this replica is a worker (role worker): it serves probes and metrics only");
    return 1;
  }
  if (!sg_store_ready(r->h->store)) {
    *ret = sg_http_send_error(r, E_UNAVAILABLE, NULL, "the job store (Redis) cannot be reached; try again shortly");
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
    *ret = sg_http_send_error(r, E_BAD_REQUEST, "Idempotency-Key", "Idempotency-Key: 1 to %d printable ASCII characters, no spaces",
                              SG_STORE_MAX_IDEM_KEY);
  }
  return k;
}

enum MHD_Result sg_http_h_generate(req *r) {
  sg_http *h = r->h;
  if (r->ph == PH_WAIT) return sync_resumed(r);
  if (sg_http_failed(r)) return sg_http_send_recorded(r);
  enum MHD_Result ret;
  if (sg_http_work_refused(r, &ret)) return ret;
  sg_request_params a;
  int rc = sg_request_parse(r->q, &a);
  if (rc) return sg_http_send_recorded(r);
  sg_openai_options oo;
  sg_request_error oe;
  if (OAI(r) && sg_openai_check(r->q, h->model->name, h->model->image_size, &oo, &oe))
    return sg_http_send_error(r, sg_http_kind_of(D_OPENAI, oe.code), oe.param, "%s", oe.message);
  r->oai_format = OAI(r) ? oo.format : SG_OPENAI_B64_JSON;
  if (a.dry_run) {
    char *text = sg_request_describe(&a);
    if (!text) return sg_http_send_error(r, E_INTERNAL, NULL, "out of memory");
    size_t n = strlen(text);
    struct MHD_Response *resp = MHD_create_response_from_buffer(n, text, MHD_RESPMEM_MUST_FREE);
    if (!resp) {
      free(text);
      return MHD_NO;
    }
    MHD_add_response_header(resp, "Content-Type", "application/json");
    return sg_http_send_response(r, 200, resp, n);
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
    sg_http_reg_add(r);
    rc = sg_store_submit(h->store, &a.jr, &so, on_sync_event, r, r->job_id, &seed, &r->watch, err, sizeof err);
    if (rc) r->ph = PH_NEW;
  }
  r->seed = seed; /* another job's when an Idempotency-Key matched */
  if (rc) {
    char param[32];
    err_kind k = sg_http_kind_of(D_JOBS, rc);
    sg_http_param_of_message(err, param, sizeof param);
    r->submit_failed = 1;
    return sg_http_send_error(r, k, k == E_INVALID ? param : k == E_CONFLICT ? "Idempotency-Key" : NULL, "%s",
                              err[0] ? err : sg_store_strerror(rc));
  }
  sg_http_logf(h, SG_JOBS_LOG_DEBUG, "%s: job %s (%s, %d steps, %d images, seed %lld) prompt \"%s\"", __func__,
               r->job_id, async ? "async" : "sync", (int)a.jr.steps, (int)a.jr.n_images, (long long)a.jr.seed,
               a.jr.prompt);
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
    struct MHD_Response *resp = sg_http_json_response(o, &n);
    if (!resp) return MHD_NO;
    MHD_add_response_header(resp, "Location", url);
    MHD_add_response_header(resp, "Preference-Applied", "respond-async");
    MHD_add_response_header(resp, "X-Seed", seed);
    return sg_http_send_response(r, 202, resp, n);
  }
  pthread_mutex_lock(&r->mu);
  int suspended = !r->done && sg_http_suspend_locked(r);
  int done = r->done;
  pthread_mutex_unlock(&r->mu);
  if (suspended) return MHD_YES;
  if (!done) { /* stopping: give the job back */
    sg_store_cancel(h->store, r->job_id);
    return sg_http_send_error(r, E_DRAINING, NULL, "the service is shutting down");
  }
  return sync_answer(r);
}

enum MHD_Result sg_http_h_healthz(req *r) {
  json_t *o = json_object();
  json_object_set_new(o, "status", json_string("ok"));
  return sg_http_send_json(r, 200, o);
}

enum MHD_Result sg_http_h_readyz(req *r) {
  if (atomic_load(&r->h->draining)) return sg_http_send_error(r, E_DRAINING, NULL, "the service is shutting down");
  if (!atomic_load(&r->h->ready)) return sg_http_send_error(r, E_NOT_READY, NULL, "the model is still loading");
  if (!sg_store_ready(r->h->store))
    return sg_http_send_error(r, E_UNAVAILABLE, NULL, "the job store (Redis) cannot be reached");
  json_t *o = json_object();
  json_object_set_new(o, "status", json_string("ready"));
  return sg_http_send_json(r, 200, o);
}

enum MHD_Result sg_http_h_metrics(req *r) {
  sg_http *h = r->h;
  sg_jobs_stats js;
  int ready = atomic_load(&h->ready);
  sg_metrics_state st = {ready, atomic_load(&h->draining), -1, NULL};
  if (ready && sg_store_stats(h->store, &js) == 0) st.jobs = &js;
  const union MHD_DaemonInfo *di = MHD_get_daemon_info(h->d, MHD_DAEMON_INFO_CURRENT_CONNECTIONS);
  if (di) st.connections = (int32_t)di->num_connections;
  char *text = sg_metrics_render(h->metrics, &st);
  if (!text) return sg_http_send_error(r, E_INTERNAL, NULL, "out of memory");
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
  return sg_http_send_response(r, 200, resp, n);
}

enum MHD_Result sg_http_h_info(req *r) {
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
  return sg_http_send_json(r, 200, o);
}

/* Looks the path's job up; on failure sends 404 or 410 and returns 1. */
int sg_http_job_missing(req *r, int rc, enum MHD_Result *ret) {
  if (!rc) return 0;
  char id[48];
  sg_request_safe_name(r->id, id, sizeof id);
  *ret = rc == SG_JOBS_EEXPIRED ? sg_http_send_error(r, E_GONE, NULL, "job %s has expired (finished jobs are kept a while)", id)
         : rc == SG_STORE_EUNAVAILABLE
             ? sg_http_send_error(r, E_UNAVAILABLE, NULL, "the job store (Redis) cannot be reached; try again shortly")
         : rc == SG_STORE_EBADDATA ? sg_http_send_error(r, E_INTERNAL, NULL,
                                                        "job %s: its record in the store is malformed", id)
         : rc == SG_JOBS_ENOMEM    ? sg_http_send_error(r, E_INTERNAL, NULL, "out of memory")
                                   : sg_http_send_error(r, E_NOT_FOUND, NULL, "no job %s", id);
  return 1;
}

int sg_http_not_ready(req *r, enum MHD_Result *ret) {
  if (atomic_load(&r->h->ready) && r->h->p.probes_only) {
    *ret = sg_http_send_error(r, E_NOT_FOUND, NULL, "this replica is a worker (role worker): it serves probes and metrics only");
    return 1;
  }
  if (atomic_load(&r->h->ready)) return 0;
  *ret = sg_http_send_error(r, E_NOT_READY, NULL, "the model is still loading");
  return 1;
}

enum MHD_Result sg_http_h_job_get(req *r) {
  enum MHD_Result ret;
  if (sg_http_not_ready(r, &ret)) return ret;
  sg_job_status st;
  if (sg_http_job_missing(r, sg_store_status(r->h->store, r->id, &st), &ret)) return ret;
  memcpy(r->job_id, st.id, sizeof r->job_id);
  return sg_http_send_json(r, 200, sg_jobjson_status(&st));
}

enum MHD_Result sg_http_h_job_delete(req *r) {
  enum MHD_Result ret;
  if (sg_http_not_ready(r, &ret)) return ret;
  int rc = sg_store_cancel(r->h->store, r->id);
  if (rc == SG_JOBS_EFINISHED) return sg_http_send_error(r, E_CONFLICT, NULL, "the job has already finished");
  if (sg_http_job_missing(r, rc, &ret)) return ret;
  sg_job_status st;
  if (sg_http_job_missing(r, sg_store_status(r->h->store, r->id, &st), &ret)) return ret;
  memcpy(r->job_id, st.id, sizeof r->job_id);
  /* a running job stops at its next step: accepted, not done */
  return sg_http_send_json(r, st.state == SG_JOB_RUNNING ? 202 : 200, sg_jobjson_status(&st));
}

enum MHD_Result sg_http_h_job_image(req *r) {
  enum MHD_Result ret;
  if (sg_http_not_ready(r, &ret)) return ret;
  uint8_t *png = NULL;
  size_t len = 0;
  int rc = sg_store_image(r->h->store, r->id, r->index, &png, &len);
  if (rc == SG_JOBS_ENOIMAGE) {
    sg_job_status st;
    if (sg_http_job_missing(r, sg_store_status(r->h->store, r->id, &st), &ret)) return ret;
    if (st.state == SG_JOB_QUEUED || st.state == SG_JOB_RUNNING)
      return sg_http_send_error(r, E_CONFLICT, NULL, "the job is %s; its images are not ready",
                                sg_job_state_name(st.state));
    return sg_http_send_error(r, E_NOT_FOUND, NULL, "the job (%s) has no image %d", sg_job_state_name(st.state),
                              (int)r->index);
  }
  if (rc == SG_JOBS_ENOMEM) return sg_http_send_error(r, E_INTERNAL, NULL, "out of memory");
  if (sg_http_job_missing(r, rc, &ret)) return ret;
  memcpy(r->job_id, r->id, SG_JOB_ID_LEN - 1); /* an image was found: r->id is a whole job id */
  r->job_id[SG_JOB_ID_LEN - 1] = 0;
  struct MHD_Response *resp = MHD_create_response_from_buffer(len, png, MHD_RESPMEM_MUST_FREE);
  if (!resp) {
    free(png);
    return MHD_NO;
  }
  MHD_add_response_header(resp, "Content-Type", "image/png");
  return sg_http_send_response(r, 200, resp, len);
}

/* GET /v1/images/files/{key}: an OpenAI url result, by its key until it expires (open: the key is the credential,
 * as OpenAI's signed URLs are), then as GET /v1/jobs/{id}/images/{i}. */
enum MHD_Result sg_http_h_file(req *r) {
  enum MHD_Result ret;
  if (sg_http_not_ready(r, &ret)) return ret;
  double exp = 0;
  char key[sizeof r->id];
  memcpy(key, r->id, sizeof key);
  int rc = sg_store_file_get(r->h->store, key, (double)time(NULL), r->id, &r->index, &exp);
  if (rc == SG_JOBS_EEXPIRED) return sg_http_send_error(r, E_GONE, NULL, "the URL expired at %.0f (Unix time)", exp);
  if (rc == SG_STORE_EUNAVAILABLE)
    return sg_http_send_error(r, E_UNAVAILABLE, NULL, "the job store (Redis) cannot be reached; try again shortly");
  if (rc == SG_STORE_EBADDATA) return sg_http_send_error(r, E_INTERNAL, NULL,
                                                         "the URL's record in the store is malformed");
  if (rc) return sg_http_send_error(r, E_NOT_FOUND, NULL, "no such file (URLs last %.0f s)", r->h->p.result_ttl_s);
  return sg_http_h_job_image(r);
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
enum MHD_Result sg_http_h_ui(req *r) {
  sg_http *h = r->h;
  if (!h->p.ui) return sg_http_send_error(r, E_NOT_FOUND, NULL, "the sketch pad is turned off (setting ui)");
  const char *name = !strcmp(r->rt->pattern, "/") ? "index.html" : r->id;
  const sg_web_asset *a = NULL;
  for (size_t i = 0; i < SG_WEB_N_ASSETS && !a; i++)
    if (!strcmp(SG_WEB_ASSETS[i].name, name)) a = &SG_WEB_ASSETS[i];
  char shown[80];
  if (!a)
    return sg_http_send_error(r, E_NOT_FOUND, NULL, "no such file: %s",
                              sg_request_safe_name(name, shown, sizeof shown));
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
  return sg_http_send_response(r, fresh ? 304 : 200, resp, fresh ? 0 : a->len);
}
