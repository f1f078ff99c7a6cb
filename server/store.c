/* The job store's dispatch (store.h) and its `local` implementation over this process's job manager (sg_jobs). */
#include "store.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "store_impl.h"

/* ---- dispatch ---- */

void sg_store_free(sg_store *s) {
  if (s) s->ops->free_(s);
}

const char *sg_store_kind(const sg_store *s) { return s ? s->ops->kind : "none"; }

int sg_store_ready(sg_store *s) { return s && s->ops->ready(s); }

int sg_store_model(sg_store *s, sg_model_info *info, sg_job_request *defaults) {
  return s->ops->model(s, info, defaults);
}

int sg_store_submit(sg_store *s, const sg_job_request *req, const sg_store_submit_opts *o, sg_store_watch_fn cb,
                    void *user, char id[SG_JOB_ID_LEN], int64_t *seed, sg_store_watcher **w, char *err, size_t errlen) {
  static const sg_store_submit_opts none = {NULL, 0};
  if (w) *w = NULL;
  if (err && errlen) *err = 0;
  return s->ops->submit(s, req, o ? o : &none, cb, user, id, seed, w, err, errlen);
}

int sg_store_status(sg_store *s, const char *id, sg_job_status *out) { return s->ops->status(s, id, out); }

int sg_store_image(sg_store *s, const char *id, int32_t i, uint8_t **png, size_t *len) {
  *png = NULL;
  *len = 0;
  return s->ops->image(s, id, i, png, len);
}

int sg_store_cancel(sg_store *s, const char *id) { return s->ops->cancel(s, id); }

int sg_store_watch(sg_store *s, const char *id, const char *after_event_id, sg_store_watch_fn cb, void *user,
                   sg_store_watcher **w) {
  *w = NULL;
  if (!cb) return SG_JOBS_EINVAL;
  return s->ops->watch(s, id, after_event_id, cb, user, w);
}

void sg_store_unwatch(sg_store *s, sg_store_watcher *w) {
  if (s && w) s->ops->unwatch(s, w);
}

int sg_store_event_status(sg_store *s, const sg_job_event *ev, sg_job_status *out) {
  return s->ops->event_status(s, ev, out);
}

int sg_store_event_image(sg_store *s, const sg_job_event *ev, int32_t i, uint8_t **png, size_t *len) {
  *png = NULL;
  *len = 0;
  return s->ops->event_image(s, ev, i, png, len);
}

int sg_store_stats(sg_store *s, sg_jobs_stats *out) { return s->ops->stats(s, out); }

char *sg_store_metrics_text(sg_store *s, const char *prefix) {
  return s->ops->metrics_text ? s->ops->metrics_text(s, prefix) : NULL;
}

/* Whether s is 32 lowercase hex digits (a job id, a file key). */
static int is_hex32(const char *s) {
  if (!s) return 0;
  size_t n = 0;
  for (; s[n] && n < 33; n++)
    if (!((s[n] >= '0' && s[n] <= '9') || (s[n] >= 'a' && s[n] <= 'f'))) return 0;
  return n == 32;
}

int sg_store_file_put(sg_store *s, const char *job_id, int32_t index, double expires, char key[SG_STORE_FILE_KEY_LEN]) {
  key[0] = 0;
  if (!is_hex32(job_id) || index < 0 || index >= SG_JOBS_MAX_IMAGES || !(expires == expires)) return SG_JOBS_EINVAL;
  if (sg_jobs_random_id(key)) return SG_JOBS_ESYS;
  int rc = s->ops->file_put(s, key, job_id, index, expires);
  if (rc) key[0] = 0;
  return rc;
}

int sg_store_file_get(sg_store *s, const char *key, double now, char job_id[SG_JOB_ID_LEN], int32_t *index,
                      double *expires) {
  if (!is_hex32(key)) return SG_JOBS_ENOTFOUND;
  char id[SG_JOB_ID_LEN];
  int32_t i = -1;
  double exp = 0;
  int rc = s->ops->file_get(s, key, id, &i, &exp);
  if (rc) return rc;
  if (expires) *expires = exp;
  if (now >= exp) return SG_JOBS_EEXPIRED;
  memcpy(job_id, id, SG_JOB_ID_LEN);
  *index = i;
  return 0;
}

const char *sg_store_strerror(int code) {
  switch (code) {
    case SG_STORE_EUNAVAILABLE: return "the job store (Redis) cannot be reached";
    case SG_STORE_ECONFLICT: return "the Idempotency-Key was used with another request";
    case SG_STORE_EBADDATA: return "the job's record in the store is malformed";
    case SG_STORE_EUNSUPPORTED: return "not supported by this job store";
    default: return sg_jobs_strerror(code);
  }
}

/* ---- local: a thin layer over sg_jobs ---- */

/* A url result's key in the local table. */
typedef struct {
  char key[SG_STORE_FILE_KEY_LEN];
  char job_id[SG_JOB_ID_LEN];
  int32_t index;
  double expires;
} local_file;

typedef struct {
  sg_store base;
  sg_jobs *jobs;
  pthread_mutex_t fmu; /* the file keys: a ring of the newest files_cap */
  local_file *files;
  int32_t files_cap, files_next, n_files;
} local_store;

/* A local watch: the job manager's handle and the caller's callback (which takes an event id, NULL here). */
struct sg_store_watcher {
  sg_job_watch *h;
  sg_store_watch_fn cb;
  void *user;
};

static sg_jobs *J(sg_store *s) { return ((local_store *)s)->jobs; }

static void local_free(sg_store *s) {
  local_store *l = (local_store *)s;
  pthread_mutex_destroy(&l->fmu);
  free(l->files);
  free(l);
}

static int local_ready(sg_store *s) { return 1; }

static int local_model(sg_store *s, sg_model_info *info, sg_job_request *defaults) {
  *defaults = sg_jobs_default_request(J(s));
  memset(info, 0, sizeof *info); /* the caller has the model itself */
  return 0;
}

static void local_event(void *user, const sg_job_event *ev) {
  sg_store_watcher *w = user;
  w->cb(w->user, ev, NULL);
}

static int local_submit(sg_store *s, const sg_job_request *req, const sg_store_submit_opts *o, sg_store_watch_fn cb,
                        void *user, char id[SG_JOB_ID_LEN], int64_t *seed, sg_store_watcher **w, char *err,
                        size_t errlen) {
  if (seed) *seed = req ? req->seed : 0;
  if (!cb) return sg_jobs_submit(J(s), req, id, err, errlen);
  sg_store_watcher *lw = calloc(1, sizeof *lw);
  if (!lw) return SG_JOBS_ENOMEM;
  lw->cb = cb;
  lw->user = user;
  *w = lw; /* set before any event: the callback may run before submit returns */
  int rc = sg_jobs_submit_watch(J(s), req, local_event, lw, id, &lw->h, err, errlen);
  if (rc) {
    *w = NULL;
    free(lw);
  }
  return rc;
}

static int local_status(sg_store *s, const char *id, sg_job_status *out) { return sg_jobs_status(J(s), id, out); }

static int local_image(sg_store *s, const char *id, int32_t i, uint8_t **png, size_t *len) {
  return sg_jobs_image(J(s), id, i, png, len);
}

static int local_cancel(sg_store *s, const char *id) { return sg_jobs_cancel(J(s), id); }

static int local_watch(sg_store *s, const char *id, const char *after, sg_store_watch_fn cb, void *user,
                       sg_store_watcher **w) {
  if (after) return SG_STORE_EUNSUPPORTED;
  sg_store_watcher *lw = calloc(1, sizeof *lw);
  if (!lw) return SG_JOBS_ENOMEM;
  lw->cb = cb;
  lw->user = user;
  int rc = sg_jobs_watch(J(s), id, local_event, lw, &lw->h);
  if (rc || !lw->h) { /* failed, or finished: the END went out already and no handle is left */
    free(lw);
    return rc;
  }
  *w = lw;
  return 0;
}

static void local_unwatch(sg_store *s, sg_store_watcher *w) {
  sg_jobs_unwatch(w->h);
  free(w);
}

static int local_event_status(sg_store *s, const sg_job_event *ev, sg_job_status *out) {
  return sg_jobs_event_status(ev, out);
}

static int local_event_image(sg_store *s, const sg_job_event *ev, int32_t i, uint8_t **png, size_t *len) {
  return sg_jobs_event_image(ev, i, png, len);
}

static int local_stats(sg_store *s, sg_jobs_stats *out) { return sg_jobs_stats_get(J(s), out); }

static int local_file_put(sg_store *s, const char *key, const char *job_id, int32_t index, double expires) {
  local_store *l = (local_store *)s;
  pthread_mutex_lock(&l->fmu);
  local_file *e = &l->files[l->files_next]; /* the oldest when full */
  memcpy(e->key, key, SG_STORE_FILE_KEY_LEN);
  memcpy(e->job_id, job_id, SG_JOB_ID_LEN);
  e->index = index;
  e->expires = expires;
  l->files_next = (l->files_next + 1) % l->files_cap;
  if (l->n_files < l->files_cap) l->n_files++;
  pthread_mutex_unlock(&l->fmu);
  return 0;
}

/* Compares two keys in time that does not depend on where they differ. */
static int key_equal(const char *a, const char *b) {
  unsigned char d = 0;
  for (size_t i = 0; i < SG_STORE_FILE_KEY_LEN; i++) d |= (unsigned char)(a[i] ^ b[i]);
  return d == 0;
}

static int local_file_get(sg_store *s, const char *key, char job_id[SG_JOB_ID_LEN], int32_t *index, double *expires) {
  local_store *l = (local_store *)s;
  int rc = SG_JOBS_ENOTFOUND;
  pthread_mutex_lock(&l->fmu);
  for (int32_t i = 0; i < l->n_files; i++) {
    const local_file *e = &l->files[i];
    if (!key_equal(e->key, key)) continue;
    memcpy(job_id, e->job_id, SG_JOB_ID_LEN);
    *index = e->index;
    *expires = e->expires;
    rc = 0;
    break;
  }
  pthread_mutex_unlock(&l->fmu);
  return rc;
}

static const sg_store_ops LOCAL_OPS = {
    "local",      local_free,  local_ready,   local_model,        local_submit,      local_status,
    local_image,  local_cancel, local_watch,  local_unwatch,      local_event_status, local_event_image,
    local_stats,  NULL,         local_file_put, local_file_get,
};

/* A local store keeping files_cap (>= 1) url keys (tests give a small one). Returns NULL when out of memory. */
static sg_store *local_new(sg_jobs *jobs, int32_t files_cap) {
  local_store *l = calloc(1, sizeof *l);
  if (!l) return NULL;
  if (files_cap < 1 || !(l->files = calloc((size_t)files_cap, sizeof *l->files)) ||
      pthread_mutex_init(&l->fmu, NULL)) {
    free(l->files);
    free(l);
    return NULL;
  }
  l->base.ops = &LOCAL_OPS;
  l->jobs = jobs;
  l->files_cap = files_cap;
  return &l->base;
}

sg_store *sg_store_local_new(sg_jobs *jobs) { return jobs ? local_new(jobs, SG_STORE_LOCAL_FILES) : NULL; }
