/* The job manager: a bounded FIFO, worker threads stepping batches of generations, a timer for deadlines and eviction,
 * refcounted job records, watches and counters (see jobs.h).
 *
 * One mutex guards everything below; it is released around inference, PNG encoding, callbacks and logging. A job
 * record is freed when its last reference goes: the id table holds one until eviction, a worker one while it runs
 * the job, a watch one until unwatched, and any thread dispatching events or copying images one for that time.
 *
 * This file is the public API (sg_jobs_*); jobs_records.c holds the records, their lists and the events,
 * jobs_worker.c the worker and timer threads, and jobs_impl.h the structs and the sg_jm_* functions they share.
 */
#include "jobs.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "errbuf.h"
#include "image.h"
#include "jobs_impl.h"

/* The allocator of the copies that sg_jobs_image and sg_jobs_event_image hand out. A test-only fault-injection
 * point: tests/server/test_jobs.c includes this file with its own definition to make a copy fail; the library
 * itself is always built with malloc. */
#ifndef SG_JOBS_COPY_ALLOC
#define SG_JOBS_COPY_ALLOC malloc
#endif

/* ---- public ---- */

sg_jobs_params sg_jobs_default_params(void) {
  sg_jobs_params p = {16, 256, 600.0, 4096, NULL, NULL, 1};
  return p;
}

const char *sg_job_state_name(sg_job_state s) {
  switch (s) {
    case SG_JOB_QUEUED: return "queued";
    case SG_JOB_RUNNING: return "running";
    case SG_JOB_SUCCEEDED: return "succeeded";
    case SG_JOB_FAILED: return "failed";
    case SG_JOB_CANCELLED: return "cancelled";
  }
  return "unknown";
}

const char *sg_job_error_name(sg_job_error e) {
  switch (e) {
    case SG_JOB_ERR_NONE: return "none";
    case SG_JOB_ERR_INVALID: return "invalid";
    case SG_JOB_ERR_TIMEOUT: return "timeout";
    case SG_JOB_ERR_CANCELLED: return "cancelled";
    case SG_JOB_ERR_RUNTIME: return "runtime";
    case SG_JOB_ERR_NOMEM: return "out_of_memory";
    case SG_JOB_ERR_SHUTDOWN: return "shutdown";
  }
  return "unknown";
}

const char *sg_jobs_strerror(int code) {
  switch (code) {
    case SG_JOBS_OK: return "ok";
    case SG_JOBS_EINVAL: return "invalid request";
    case SG_JOBS_EFULL: return "queue full";
    case SG_JOBS_EDRAINING: return "shutting down";
    case SG_JOBS_ENOTFOUND: return "no such job";
    case SG_JOBS_EEXPIRED: return "job expired";
    case SG_JOBS_EFINISHED: return "job already finished";
    case SG_JOBS_ENOIMAGE: return "no such image";
    case SG_JOBS_ETIMEDOUT: return "timed out";
    case SG_JOBS_ENOMEM: return "out of memory";
    case SG_JOBS_ESYS: return "system error";
  }
  return "unknown error";
}

static void destroy(sg_jobs *q);

sg_jobs *sg_jobs_new(sg_model *const *models, int32_t n_workers, sg_jobs_params p, char *err, size_t errlen) {
  if (!models || n_workers < 1 || n_workers > MAX_WORKERS) {
    sg_set_err(err, errlen, "workers: between 1 and %d models are needed", MAX_WORKERS);
    return NULL;
  }
  for (int32_t i = 0; i < n_workers; i++) {
    if (!models[i]) {
      sg_set_err(err, errlen, "models[%d]: NULL", (int)i);
      return NULL;
    }
    if (sg_model_get_info(models[i])->image_size != sg_model_get_info(models[0])->image_size) {
      sg_set_err(err, errlen, "models[%d]: image size differs from models[0]'s", (int)i);
      return NULL;
    }
  }
  if (p.max_queue < 0 || p.max_queue > 1000000) {
    sg_set_err(err, errlen, "max_queue: must be between 0 and 1000000");
    return NULL;
  }
  if (p.keep_finished_count < 0 || p.keep_finished_count > 10000000) {
    sg_set_err(err, errlen, "keep_finished_count: must be between 0 and 10000000");
    return NULL;
  }
  if (!(p.keep_finished_seconds >= 0 && p.keep_finished_seconds <= 1e9)) {
    sg_set_err(err, errlen, "keep_finished_seconds: must be between 0 and 1e9");
    return NULL;
  }
  if (p.max_batch < 1 || p.max_batch > SG_JOBS_MAX_BATCH) {
    sg_set_err(err, errlen, "max_batch: must be between 1 and %d", SG_JOBS_MAX_BATCH);
    return NULL;
  }
  if (p.expired_ids_kept < 0 || p.expired_ids_kept > 10000000) {
    sg_set_err(err, errlen, "expired_ids_kept: must be between 0 and 10000000");
    return NULL;
  }
  sg_jobs *q = calloc(1, sizeof *q);
  if (!q) {
    sg_set_err(err, errlen, "out of memory");
    return NULL;
  }
  q->p = p;
  q->n_workers = n_workers;
  const sg_model_info *info = sg_model_get_info(models[0]);
  q->image_size = info->image_size;
  q->schedule = info->schedule;
  q->has_lgp = sg_model_lgp(models[0]) != NULL;
  q->defaults = sg_generate_default_params(models[0]);
  size_t want = (size_t)p.max_queue + (size_t)n_workers + (size_t)p.keep_finished_count, size = 64;
  while (size < want && size < ((size_t)1 << 20)) size <<= 1;
  q->table = calloc(size, sizeof *q->table);
  q->table_mask = size - 1;
  q->expired = p.expired_ids_kept ? calloc((size_t)p.expired_ids_kept, ID_BYTES) : NULL;
  q->workers = calloc((size_t)n_workers, sizeof *q->workers);
  pthread_condattr_t ca;
  int sync_ok = !pthread_condattr_init(&ca) && !pthread_condattr_setclock(&ca, CLOCK_MONOTONIC) &&
                !pthread_mutex_init(&q->mu, NULL) && !pthread_cond_init(&q->work_cv, &ca) &&
                !pthread_cond_init(&q->idle_cv, &ca) && !pthread_cond_init(&q->timer_cv, &ca) &&
                !pthread_cond_init(&q->cb_cv, &ca);
  pthread_condattr_destroy(&ca);
  if (!sync_ok || !q->table || (p.expired_ids_kept && !q->expired) || !q->workers) {
    sg_set_err(err, errlen, sync_ok ? "out of memory" : "cannot create locks");
    free(q->table);
    free(q->expired);
    free(q->workers);
    free(q);
    return NULL;
  }
  q->st.workers = n_workers;
  q->st.max_queue = p.max_queue;
  q->st.max_batch = p.max_batch;
  int rc = pthread_create(&q->timer, NULL, sg_jm_timer_main, q);
  q->timer_started = rc == 0;
  for (int32_t i = 0; i < n_workers && rc == 0; i++) {
    q->workers[i] = (worker){q, models[i], i, 0, 0};
    rc = pthread_create(&q->workers[i].th, NULL, sg_jm_worker_main, &q->workers[i]);
    q->workers[i].started = rc == 0;
  }
  if (rc) {
    sg_set_err(err, errlen, "cannot start threads: %s", strerror(rc));
    destroy(q);
    return NULL;
  }
  return q;
}

sg_job_request sg_jobs_default_request(const sg_jobs *q) {
  sg_job_request r;
  memset(&r, 0, sizeof r);
  const sg_generate_params *d = &q->defaults;
  r.beta = d->beta;
  r.stop = d->stop;
  r.stop_step = d->stop_step;
  r.steps = d->steps;
  r.cfg = d->cfg;
  r.sampler = d->sampler;
  r.eta = d->eta;
  r.n_images = 1;
  return r;
}

/* A PNG keyword as sg_png_encode wants it: 1..79 printable ASCII, no leading, trailing or double spaces. */
static int png_key_ok(const char *k) {
  size_t n = strlen(k);
  if (n < 1 || n > 79 || k[0] == ' ' || k[n - 1] == ' ') return 0;
  for (size_t i = 0; i < n; i++)
    if (k[i] < 32 || k[i] > 126 || (k[i] == ' ' && k[i + 1] == ' ')) return 0;
  return 1;
}

/* The checks of sg_generate (so that a bad request is refused at once), plus the request's own fields. */
static int validate(const sg_jobs *q, const sg_job_request *r, char *err, size_t errlen) {
#define BAD(...)                          \
  do {                                    \
    sg_set_err(err, errlen, __VA_ARGS__); \
    return SG_JOBS_EINVAL;                \
  } while (0)
  if (!r) BAD("request: missing");
  if (!r->prompt) BAD("prompt: required");
  if (sg_sampler_kind_parse(sg_sampler_kind_name(r->sampler)) < 0) BAD("sampler: unknown");
  int32_t max_steps = sg_sampler_max_steps(q->schedule, r->sampler);
  if (r->steps < 1 || r->steps > max_steps)
    BAD("steps: must be between 1 and %d for %s", (int)max_steps, sg_sampler_kind_name(r->sampler));
  if (!(r->cfg >= 0 && r->cfg <= 100)) BAD("cfg: must be between 0 and 100");
  if (!(r->beta >= 0 && r->beta <= 100)) BAD("beta: must be between 0 and 100");
  if (!(r->stop >= 0 && r->stop <= 1)) BAD("stop: must be between 0 and 1");
  if (r->stop_step < -1 || r->stop_step > r->steps) BAD("stop_step: must be between 0 and steps");
  if (r->seed < 0 || r->seed > INT64_MAX - SG_JOBS_MAX_IMAGES) BAD("seed: must be between 0 and 2^63 - 65");
  if (r->n_images < 1 || r->n_images > SG_JOBS_MAX_IMAGES) BAD("n: must be between 1 and %d", SG_JOBS_MAX_IMAGES);
  if (!(r->eta >= 0 && r->eta <= 10)) BAD("eta: must be between 0 and 10");
  if (!(r->deadline >= 0 && r->deadline < 1e15)) BAD("deadline: must be 0 or a monotonic time in seconds");
  if (r->sketch && r->beta > 0 && !q->has_lgp && sg_generate_guided_steps(r->steps, r->stop, r->stop_step) > 0)
    BAD("beta: this model has no LGP, so it cannot follow a sketch");
  if (r->n_extra_text < 0 || r->n_extra_text > SG_JOBS_MAX_EXTRA_TEXT)
    BAD("extra_text: at most %d chunks", SG_JOBS_MAX_EXTRA_TEXT);
  if (r->n_extra_text > 0 && !r->extra_text) BAD("extra_text: missing");
  for (int32_t i = 0; i < r->n_extra_text; i++) {
    if (!r->extra_text[2 * i] || !png_key_ok(r->extra_text[2 * i]))
      BAD("extra_text: key %d must be 1 to 79 printable ASCII characters without leading, trailing or double spaces",
          (int)i);
    if (!r->extra_text[2 * i + 1]) BAD("extra_text: value %d missing", (int)i);
  }
#undef BAD
  return 0;
}

/* Deep-copies a validated request into a new record (refs 0). Returns NULL when out of memory. */
static job *job_from_request(const sg_jobs *q, const sg_job_request *r) {
  job *j = calloc(1, sizeof *j);
  if (!j) return NULL;
  j->prompt = sg_jm_dup_str(r->prompt);
  j->negative = sg_jm_dup_str(r->negative_prompt);
  j->model_name = r->model_name ? sg_jm_dup_str(r->model_name) : NULL;
  int bad = !j->prompt || !j->negative || (r->model_name && !j->model_name);
  if (r->sketch) {
    size_t n = (size_t)q->image_size * q->image_size;
    j->sketch = malloc(n * sizeof *j->sketch);
    if (j->sketch) memcpy(j->sketch, r->sketch, n * sizeof *j->sketch);
    else bad = 1;
  }
  if (r->n_extra_text > 0) {
    j->extra = calloc(2 * (size_t)r->n_extra_text, sizeof *j->extra);
    if (j->extra) {
      j->n_extra = r->n_extra_text;
      for (int32_t i = 0; i < 2 * r->n_extra_text; i++)
        if (!(j->extra[i] = sg_jm_dup_str(r->extra_text[i]))) bad = 1;
    } else {
      bad = 1;
    }
  }
  if (bad) {
    sg_jm_job_free(j);
    return NULL;
  }
  j->beta = r->beta;
  j->stop = r->stop;
  j->stop_step = r->stop_step;
  j->steps = r->steps;
  j->cfg = r->cfg;
  j->seed = r->seed;
  j->sampler = r->sampler;
  j->eta = r->eta;
  j->n_images = r->n_images;
  j->deadline = r->deadline;
  j->solo = r->solo != 0;
  j->worker = -1;
  return j;
}

/* sg_jobs_submit, and with cb set sg_jobs_submit_watch: the watch is attached under the lock that queues the job,
 * so that no event, and no eviction, can come first. */
static int submit(sg_jobs *q, const sg_job_request *req, sg_job_watch_fn cb, void *user, char id[SG_JOB_ID_LEN],
                  sg_job_watch **handle, char *err, size_t errlen) {
  if (err && errlen) *err = 0;
  if (handle) *handle = NULL;
  if (!q || !id || (cb && !handle)) {
    sg_set_err(err, errlen, "missing argument");
    return SG_JOBS_EINVAL;
  }
  id[0] = 0;
  int rc = validate(q, req, err, errlen);
  if (rc) {
    pthread_mutex_lock(&q->mu);
    q->st.rejected_invalid++;
    pthread_mutex_unlock(&q->mu);
    return rc;
  }
  job *j = job_from_request(q, req);
  sg_job_watch *w = cb ? calloc(1, sizeof *w) : NULL;
  if (!j || (cb && !w)) {
    if (j) sg_jm_job_free(j);
    free(w);
    sg_set_err(err, errlen, "out of memory");
    return SG_JOBS_ENOMEM;
  }
  pthread_mutex_lock(&q->mu);
  if (q->draining) {
    q->st.rejected_draining++;
    rc = SG_JOBS_EDRAINING;
    sg_set_err(err, errlen, "the service is shutting down");
  } else if (q->n_queued >= q->p.max_queue + (q->n_workers * q->p.max_batch - q->n_running -
                                              q->n_solo_running * (q->p.max_batch - 1))) {
    q->st.rejected_full++;
    rc = SG_JOBS_EFULL;
    sg_set_err(err, errlen, "the queue is full (%d jobs waiting)", (int)q->n_queued);
  } else {
    do {
      if (sg_jm_random_bytes(j->key, ID_BYTES)) {
        rc = SG_JOBS_ESYS;
        sg_set_err(err, errlen, "no random bytes for a job id");
        break;
      }
    } while (sg_jm_table_find(q, j->key) || sg_jm_expired_has(q, j->key));
  }
  if (rc) {
    pthread_mutex_unlock(&q->mu);
    sg_jm_job_free(j);
    free(w);
    return rc;
  }
  sg_jm_key_to_id(j->key, j->id);
  j->state = SG_JOB_QUEUED;
  j->t_created = sg_jobs_now();
  j->w_created = sg_jm_wall_now();
  j->refs = 1; /* the table's */
  j->in_table = 1;
  size_t h = sg_jm_key_hash(q, j->key);
  j->hnext = q->table[h];
  q->table[h] = j;
  j->anext = q->all;
  if (q->all) q->all->aprev = j;
  q->all = j;
  sg_jm_list_append(&q->qhead, &q->qtail, j);
  q->n_queued++;
  q->st.submitted++;
  memcpy(id, j->id, SG_JOB_ID_LEN);
  if (w) {
    *w = (sg_job_watch){.q = q, .j = j, .cb = cb, .user = user};
    j->watchers = w;
    j->refs++; /* the watch's */
    *handle = w;
  }
  sg_jm_evict_due_locked(q, j->t_created);
  pthread_cond_signal(&q->work_cv);
  if (j->deadline > 0) pthread_cond_signal(&q->timer_cv);
  pthread_mutex_unlock(&q->mu);
  return 0;
}

int sg_jobs_submit(sg_jobs *q, const sg_job_request *req, char id[SG_JOB_ID_LEN], char *err, size_t errlen) {
  return submit(q, req, NULL, NULL, id, NULL, err, errlen);
}

int sg_jobs_submit_watch(sg_jobs *q, const sg_job_request *req, sg_job_watch_fn cb, void *user,
                         char id[SG_JOB_ID_LEN], sg_job_watch **handle, char *err, size_t errlen) {
  if (handle) *handle = NULL;
  if (!cb || !handle) {
    sg_set_err(err, errlen, "missing argument");
    return SG_JOBS_EINVAL;
  }
  return submit(q, req, cb, user, id, handle, err, errlen);
}

/* Copies j's state into *out (lock held); reading a finished job without images collects it. */
static void status_locked(sg_jobs *q, job *j, sg_job_status *out) {
  double now = sg_jobs_now();
  memset(out, 0, sizeof *out);
  memcpy(out->id, j->id, SG_JOB_ID_LEN);
  out->state = j->state;
  if (j->state >= SG_JOB_SUCCEEDED && !j->n_ready) sg_jm_collect_locked(q, j); /* a failure's outcome is its status */
  out->queue_position = -1;
  if (j->state == SG_JOB_QUEUED) {
    int32_t pos = 0;
    for (const job *k = q->qhead; k && k != j; k = k->next) pos++;
    out->queue_position = pos;
  }
  out->step = j->step;
  out->total = j->steps;
  out->worker = j->worker;
  out->created = j->w_created;
  out->started = j->t_started > 0 ? j->w_started : 0;
  out->finished = j->state >= SG_JOB_SUCCEEDED ? j->w_finished : 0;
  double ran_from = j->t_started > 0 ? j->t_started : 0;
  double end = j->state >= SG_JOB_SUCCEEDED ? j->t_finished : now;
  out->queue_ms = 1000.0 * ((ran_from > 0 ? ran_from : end) - j->t_created);
  out->inference_ms = ran_from > 0 ? 1000.0 * (end - ran_from) : 0;
  out->timings = j->timings;
  out->guided_steps = j->guided_steps;
  out->error = j->error;
  memcpy(out->message, j->message, sizeof out->message);
  out->n_images = j->n_images;
  out->n_ready = j->n_ready;
  out->seed = j->seed;
}

int sg_jobs_status(sg_jobs *q, const char *id, sg_job_status *out) {
  if (!q || !out) return SG_JOBS_EINVAL;
  memset(out, 0, sizeof *out);
  pthread_mutex_lock(&q->mu);
  job *j;
  int rc = sg_jm_lookup_locked(q, id, &j);
  if (!rc) status_locked(q, j, out);
  pthread_mutex_unlock(&q->mu);
  return rc;
}

/* Copies image i of j (SUCCEEDED, 0 <= i < n_ready) into a new buffer; the lock is held on entry and on return,
 * released around the copy (a succeeded record's images never change). The image counts as fetched only once its
 * copy exists: a copy that fails for lack of memory leaves the job uncollected. Returns 0 or SG_JOBS_ENOMEM. */
static int image_copy_locked(sg_jobs *q, job *j, int32_t i, uint8_t **png, size_t *len) {
  j->refs++;
  pthread_mutex_unlock(&q->mu);
  size_t n = j->images[i].len;
  uint8_t *copy = SG_JOBS_COPY_ALLOC(n ? n : 1);
  if (copy) memcpy(copy, j->images[i].data, n);
  pthread_mutex_lock(&q->mu);
  if (copy) {
    j->fetched |= (uint64_t)1 << i;
    if (j->fetched == (j->n_ready >= 64 ? ~(uint64_t)0 : ((uint64_t)1 << j->n_ready) - 1)) sg_jm_collect_locked(q, j);
  }
  sg_jm_unref_locked(q, j); /* may free j */
  if (!copy) return SG_JOBS_ENOMEM;
  *png = copy;
  *len = n;
  return 0;
}

int sg_jobs_image(sg_jobs *q, const char *id, int32_t i, uint8_t **png, size_t *len) {
  if (png) *png = NULL;
  if (len) *len = 0;
  if (!q || !png || !len) return SG_JOBS_EINVAL;
  pthread_mutex_lock(&q->mu);
  job *j;
  int rc = sg_jm_lookup_locked(q, id, &j);
  if (!rc && (j->state != SG_JOB_SUCCEEDED || i < 0 || i >= j->n_ready)) rc = SG_JOBS_ENOIMAGE;
  if (!rc) rc = image_copy_locked(q, j, i, png, len);
  pthread_mutex_unlock(&q->mu);
  return rc;
}

int sg_jobs_event_status(const sg_job_event *ev, sg_job_status *out) {
  if (out) memset(out, 0, sizeof *out);
  if (!ev || !out || ev->kind != SG_JOB_EVENT_END || !ev->_q || !ev->_job) return SG_JOBS_EINVAL;
  sg_jobs *q = ev->_q;
  pthread_mutex_lock(&q->mu);
  status_locked(q, ev->_job, out);
  pthread_mutex_unlock(&q->mu);
  return 0;
}

int sg_jobs_event_image(const sg_job_event *ev, int32_t i, uint8_t **png, size_t *len) {
  if (png) *png = NULL;
  if (len) *len = 0;
  if (!ev || !png || !len || ev->kind != SG_JOB_EVENT_END || !ev->_q || !ev->_job) return SG_JOBS_EINVAL;
  sg_jobs *q = ev->_q;
  job *j = ev->_job;
  pthread_mutex_lock(&q->mu);
  int rc = j->state != SG_JOB_SUCCEEDED || i < 0 || i >= j->n_ready ? SG_JOBS_ENOIMAGE
                                                                   : image_copy_locked(q, j, i, png, len);
  pthread_mutex_unlock(&q->mu);
  return rc;
}

int sg_jobs_cancel(sg_jobs *q, const char *id) {
  if (!q) return SG_JOBS_EINVAL;
  pthread_mutex_lock(&q->mu);
  job *j, *pending = NULL;
  int rc = sg_jm_lookup_locked(q, id, &j);
  if (!rc) {
    if (j->state == SG_JOB_QUEUED)
      sg_jm_end_queued_locked(q, j, SG_JOB_CANCELLED, SG_JOB_ERR_CANCELLED, "cancelled while queued", &pending);
    else if (j->state == SG_JOB_RUNNING && j->cancel == SG_JOB_ERR_NONE)
      j->cancel = SG_JOB_ERR_CANCELLED;
    else if (j->state != SG_JOB_RUNNING)
      rc = SG_JOBS_EFINISHED;
    if (!rc) sg_jm_collect_locked(q, j); /* whoever cancelled it expects no result */
  }
  pthread_mutex_unlock(&q->mu);
  sg_jm_send_ends(q, pending);
  return rc;
}

int sg_jobs_watch(sg_jobs *q, const char *id, sg_job_watch_fn cb, void *user, sg_job_watch **handle) {
  if (handle) *handle = NULL;
  if (!q || !cb || !handle) return SG_JOBS_EINVAL;
  sg_job_watch *w = calloc(1, sizeof *w);
  if (!w) return SG_JOBS_ENOMEM;
  pthread_mutex_lock(&q->mu);
  job *j;
  int rc = sg_jm_lookup_locked(q, id, &j);
  if (rc) {
    pthread_mutex_unlock(&q->mu);
    free(w);
    return rc;
  }
  if (j->state >= SG_JOB_SUCCEEDED) {
    sg_job_event ev;
    sg_jm_end_event(q, j, &ev); /* a finished record no longer changes; our reference keeps it for the callback */
    j->refs++;
    if (!j->n_ready) sg_jm_collect_locked(q, j); /* the END about to be delivered tells the failure */
    pthread_mutex_unlock(&q->mu);
    free(w);
    cb(user, &ev);
    pthread_mutex_lock(&q->mu);
    sg_jm_unref_locked(q, j); /* may free j, evicted meanwhile */
    pthread_mutex_unlock(&q->mu);
    return 0;
  }
  w->q = q;
  w->j = j;
  w->cb = cb;
  w->user = user;
  w->next = j->watchers;
  if (j->watchers) j->watchers->prev = w;
  j->watchers = w;
  j->refs++;
  pthread_mutex_unlock(&q->mu);
  *handle = w;
  return 0;
}

void sg_jobs_unwatch(sg_job_watch *w) {
  if (!w) return;
  sg_jobs *q = w->q;
  pthread_mutex_lock(&q->mu);
  if (w->in_cb && pthread_equal(w->cb_thread, pthread_self())) {
    w->dead = 1; /* its dispatcher frees it when the callback returns */
    pthread_mutex_unlock(&q->mu);
    return;
  }
  while (w->in_cb) pthread_cond_wait(&q->cb_cv, &q->mu);
  job *j = w->j;
  if (w->prev) w->prev->next = w->next;
  else j->watchers = w->next;
  if (w->next) w->next->prev = w->prev;
  sg_jm_unref_locked(q, j);
  pthread_mutex_unlock(&q->mu);
  free(w);
}

int sg_jobs_stats_get(sg_jobs *q, sg_jobs_stats *out) {
  if (!q || !out) return SG_JOBS_EINVAL;
  pthread_mutex_lock(&q->mu);
  sg_jm_evict_due_locked(q, sg_jobs_now());
  *out = q->st;
  out->queued = q->n_queued;
  out->running = q->n_running;
  out->finished_kept = q->n_finished;
  out->uncollected = q->n_uncollected;
  out->draining = q->draining;
  pthread_mutex_unlock(&q->mu);
  return 0;
}

int sg_jobs_drain(sg_jobs *q, double timeout_s) {
  if (!q) return SG_JOBS_EINVAL;
  if (!(timeout_s > 0)) timeout_s = 0;
  if (timeout_s > 1e9) timeout_s = 1e9;
  pthread_mutex_lock(&q->mu);
  q->draining = 1;
  double end = sg_jobs_now() + timeout_s;
  struct timespec ts = sg_jm_to_timespec(end);
  while ((q->n_queued || q->n_running) && sg_jobs_now() < end) pthread_cond_timedwait(&q->idle_cv, &q->mu, &ts);
  if (!q->n_queued && !q->n_running) {
    pthread_mutex_unlock(&q->mu);
    return 0;
  }
  int32_t queued = q->n_queued, running = q->n_running;
  job *pending = NULL;
  sg_jm_cancel_all_locked(q, SG_JOB_ERR_SHUTDOWN, "shut down while queued", &pending);
  pthread_mutex_unlock(&q->mu);
  sg_jm_log_line(q, SG_JOBS_LOG_WARN, "%s: %.1f s passed; cancelling %d queued and %d running jobs", __func__, timeout_s,
        (int)queued, (int)running);
  sg_jm_send_ends(q, pending);
  pthread_mutex_lock(&q->mu);
  while (q->n_running) pthread_cond_wait(&q->idle_cv, &q->mu);
  pthread_mutex_unlock(&q->mu);
  return SG_JOBS_ETIMEDOUT;
}

/* Stops and joins the threads (after cancelling what remains), then frees every record, watch and table. */
static void destroy(sg_jobs *q) {
  job *pending = NULL;
  pthread_mutex_lock(&q->mu);
  q->draining = 1;
  q->stopping = 1;
  sg_jm_cancel_all_locked(q, SG_JOB_ERR_SHUTDOWN, "shut down while queued", &pending);
  pthread_cond_broadcast(&q->work_cv);
  pthread_cond_broadcast(&q->timer_cv);
  pthread_mutex_unlock(&q->mu);
  sg_jm_send_ends(q, pending);
  for (int32_t i = 0; i < q->n_workers; i++)
    if (q->workers[i].started) pthread_join(q->workers[i].th, NULL);
  if (q->timer_started) pthread_join(q->timer, NULL);
  /* no thread is left: free without the lock */
  while (q->all) {
    job *j = q->all;
    q->all = j->anext;
    for (sg_job_watch *w = j->watchers, *next; w; w = next) {
      next = w->next;
      free(w);
    }
    sg_jm_job_free(j);
  }
  pthread_cond_destroy(&q->cb_cv);
  pthread_cond_destroy(&q->timer_cv);
  pthread_cond_destroy(&q->idle_cv);
  pthread_cond_destroy(&q->work_cv);
  pthread_mutex_destroy(&q->mu);
  free(q->table);
  free(q->expired);
  free(q->workers);
  free(q);
}

void sg_jobs_free(sg_jobs *q) {
  if (q) destroy(q);
}
