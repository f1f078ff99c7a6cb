/* The job manager: a bounded FIFO, worker threads stepping batches of generations, a timer for deadlines and eviction,
 * refcounted job records, watches and counters (see jobs.h).
 *
 * One mutex guards everything below; it is released around inference, PNG encoding, callbacks and logging. A job
 * record is freed when its last reference goes: the id table holds one until eviction, a worker one while it runs
 * the job, a watch one until unwatched, and any thread dispatching events or copying images one for that time.
 */
#include "jobs.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "errbuf.h"
#include "image.h"

#define ID_BYTES 16
#define MAX_WORKERS 64

/* The allocator of the copies that sg_jobs_image and sg_jobs_event_image hand out. A test-only fault-injection
 * point: tests/server/test_jobs.c includes this file with its own definition to make a copy fail; the library
 * itself is always built with malloc. */
#ifndef SG_JOBS_COPY_ALLOC
#define SG_JOBS_COPY_ALLOC malloc
#endif

typedef struct job job;

struct sg_job_watch {
  sg_jobs *q;
  job *j;
  sg_job_watch_fn cb;
  void *user;
  sg_job_watch *prev, *next; /* in j->watchers */
  int in_cb;                 /* a dispatcher is calling cb */
  pthread_t cb_thread;
  int dead;                  /* unwatched from inside its own callback: the dispatcher frees it */
};

typedef struct {
  uint8_t *data;
  size_t len;
} blob;

struct job {
  uint8_t key[ID_BYTES];
  char id[SG_JOB_ID_LEN];
  int32_t refs;
  int in_table;
  sg_job_state state;
  sg_job_error error;
  char message[256];
  /* the request */
  char *prompt, *negative, *model_name;
  float *sketch;
  char **extra; /* 2 x n_extra strings */
  int32_t n_extra;
  double beta, stop, cfg, eta, deadline;
  int32_t stop_step, steps, n_images;
  int64_t seed;
  sg_sampler_kind sampler;
  int solo; /* batching off: runs alone */
  /* progress and result */
  int32_t step;
  int32_t worker;
  sg_job_error cancel; /* the reason a running job should stop at its next step; NONE = keep going */
  double t_created, t_started, t_finished; /* monotonic */
  double w_created, w_started, w_finished; /* wall clock */
  sg_timings timings;
  int32_t guided_steps;
  blob *images;
  int32_t n_ready;
  uint64_t fetched;  /* bit i: a copy of image i went out (sg_jobs_image, sg_jobs_event_image) */
  int collected;     /* its outcome reached someone: every image fetched, (no images) its final status read or its
                        END delivered to a watcher, or a cancel asked for */
  int counted;       /* it is one of q->n_uncollected: set when it finishes uncollected, cleared (and the count
                        decremented) exactly once, when it is collected or evicted, whichever comes first */
  sg_job_watch *watchers;
  job *hnext;       /* id table chain */
  job *prev, *next; /* queue, or finished list */
  job *anext, *aprev; /* every live record, for sg_jobs_free */
  job *dnext;       /* a caller's local list of END events to send */
};

typedef struct {
  sg_jobs *q;
  sg_model *m;
  int32_t index;
  pthread_t th;
  int started;
} worker;

struct sg_jobs {
  pthread_mutex_t mu;
  pthread_cond_t work_cv;  /* a job was queued, or stopping */
  pthread_cond_t idle_cv;  /* a job finished (drain) */
  pthread_cond_t timer_cv; /* a deadline or an eviction time came earlier, or stopping */
  pthread_cond_t cb_cv;    /* a callback returned (unwatch) */
  sg_jobs_params p;
  int32_t n_workers;
  worker *workers;
  pthread_t timer;
  int timer_started;
  int32_t image_size, has_lgp;
  sg_schedule_params schedule; /* worker 0's: the most steps of each sampler */
  sg_generate_params defaults;
  job **table;
  size_t table_mask;
  job *qhead, *qtail;
  int32_t n_queued, n_running;
  int32_t n_solo_running; /* running jobs with solo set: each leaves its worker's batch no free place */
  job *fhead, *ftail; /* finished jobs in the table, oldest first */
  int32_t n_finished;
  int32_t n_uncollected; /* finished jobs kept whose outcome nobody has collected (stats.uncollected): the number
                            of records in the finished list with counted set, never negative */
  job *all;
  uint8_t (*expired)[ID_BYTES];
  int32_t n_expired, expired_next;
  int draining, stopping;
  sg_jobs_stats st; /* counters and histograms; the "now" fields are filled on copy */
};

static const double HIST_LE[SG_JOBS_HIST_BUCKETS] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,
                                                      2.5,   5,    10,    25,   60,  120,  300, 600};

/* ---- small helpers ---- */

double sg_jobs_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static double wall_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static struct timespec to_timespec(double t) {
  struct timespec ts;
  if (!(t > 0)) t = 0;
  if (t > 1e15) t = 1e15;
  ts.tv_sec = (time_t)t;
  ts.tv_nsec = (long)((t - (double)ts.tv_sec) * 1e9);
  if (ts.tv_nsec >= 1000000000L) ts.tv_sec++, ts.tv_nsec -= 1000000000L;
  if (ts.tv_nsec < 0) ts.tv_nsec = 0;
  return ts;
}

/* Sends one line to params.log; never call it with the lock held. */
static void log_line(const sg_jobs *q, sg_jobs_log_level level, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void log_line(const sg_jobs *q, sg_jobs_log_level level, const char *fmt, ...) {
  if (!q->p.log) return;
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  q->p.log(q->p.log_user, level, buf);
}

static char *dup_str(const char *s) {
  if (!s) s = "";
  size_t n = strlen(s) + 1;
  char *d = malloc(n);
  if (d) memcpy(d, s, n);
  return d;
}

/* Fills buf with n random bytes. Returns 0 or -1. */
static int random_bytes(uint8_t *buf, size_t n) {
  size_t got = 0;
  while (got < n) {
    ssize_t r = getrandom(buf + got, n - got, 0);
    if (r > 0) {
      got += (size_t)r;
      continue;
    }
    if (r < 0 && errno == EINTR) continue;
    break;
  }
  if (got == n) return 0;
  int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  while (got < n) {
    ssize_t r = read(fd, buf + got, n - got);
    if (r > 0) got += (size_t)r;
    else if (!(r < 0 && errno == EINTR)) break;
  }
  close(fd);
  return got == n ? 0 : -1;
}

static void key_to_id(const uint8_t *key, char *id) {
  static const char hex[] = "0123456789abcdef";
  for (int i = 0; i < ID_BYTES; i++) {
    id[2 * i] = hex[key[i] >> 4];
    id[2 * i + 1] = hex[key[i] & 15];
  }
  id[2 * ID_BYTES] = 0;
}

int sg_jobs_random_id(char out[SG_JOB_ID_LEN]) {
  uint8_t key[ID_BYTES];
  out[0] = 0;
  if (random_bytes(key, sizeof key)) return -1;
  key_to_id(key, out);
  return 0;
}

/* Parses a 32-character lowercase hex id. Returns 0 or -1 (anything else: NULL, other length, other characters). */
static int id_to_key(const char *id, uint8_t *key) {
  if (!id) return -1;
  for (int i = 0; i < 2 * ID_BYTES; i++) {
    char c = id[i];
    int v = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
    if (v < 0) return -1;
    if (i % 2 == 0) key[i / 2] = (uint8_t)(v << 4);
    else key[i / 2] |= (uint8_t)v;
  }
  return id[2 * ID_BYTES] == 0 ? 0 : -1;
}

static size_t key_hash(const sg_jobs *q, const uint8_t *key) {
  uint64_t h;
  memcpy(&h, key, sizeof h); /* random bytes: already uniform */
  return (size_t)h & q->table_mask;
}

static void hist_observe(sg_jobs_hist *h, double v) {
  if (!(v >= 0)) v = 0;
  for (int i = 0; i < SG_JOBS_HIST_BUCKETS; i++)
    if (v <= HIST_LE[i]) h->buckets[i]++;
  h->count++;
  h->sum += v;
}

/* ---- job records (lock held) ---- */

static void job_free(job *j) {
  free(j->prompt);
  free(j->negative);
  free(j->model_name);
  free(j->sketch);
  if (j->extra)
    for (int32_t i = 0; i < 2 * j->n_extra; i++) free(j->extra[i]);
  free(j->extra);
  if (j->images)
    for (int32_t i = 0; i < j->n_images; i++) free(j->images[i].data);
  free(j->images);
  free(j);
}

static void unref_locked(sg_jobs *q, job *j) {
  if (--j->refs > 0) return;
  if (j->aprev) j->aprev->anext = j->anext;
  else q->all = j->anext;
  if (j->anext) j->anext->aprev = j->aprev;
  job_free(j);
}

static job *table_find(const sg_jobs *q, const uint8_t *key) {
  for (job *j = q->table[key_hash(q, key)]; j; j = j->hnext)
    if (!memcmp(j->key, key, ID_BYTES)) return j;
  return NULL;
}

static void table_remove(sg_jobs *q, job *j) {
  job **pp = &q->table[key_hash(q, j->key)];
  while (*pp && *pp != j) pp = &(*pp)->hnext;
  if (*pp) *pp = j->hnext;
  j->hnext = NULL;
  j->in_table = 0;
}

static int expired_has(const sg_jobs *q, const uint8_t *key) {
  for (int32_t i = 0; i < q->n_expired; i++)
    if (!memcmp(q->expired[i], key, ID_BYTES)) return 1;
  return 0;
}

static void list_remove(job **head, job **tail, job *j) {
  if (j->prev) j->prev->next = j->next;
  else *head = j->next;
  if (j->next) j->next->prev = j->prev;
  else *tail = j->prev;
  j->prev = j->next = NULL;
}

static void list_append(job **head, job **tail, job *j) {
  j->next = NULL;
  j->prev = *tail;
  if (*tail) (*tail)->next = j;
  else *head = j;
  *tail = j;
}

/* Takes j out of q->n_uncollected if it is in it (the one place that decrements the count). */
static void uncount_locked(sg_jobs *q, job *j) {
  if (!j->counted) return;
  j->counted = 0;
  q->n_uncollected--;
}

/* Marks j's outcome as received by someone (see sg_jobs_stats.uncollected). A job collected before it finishes
 * (a cancel) is never counted; one collected after it finished leaves the count, unless its eviction already
 * took it out (an END delivered, or an image copied, after the record left the table). */
static void collect_locked(sg_jobs *q, job *j) {
  j->collected = 1;
  uncount_locked(q, j);
}

/* Drops a finished job from the table (and from the uncollected count) and remembers its id as expired. */
static void evict_locked(sg_jobs *q, job *j) {
  list_remove(&q->fhead, &q->ftail, j);
  q->n_finished--;
  uncount_locked(q, j);
  table_remove(q, j);
  if (q->p.expired_ids_kept > 0) {
    memcpy(q->expired[q->expired_next], j->key, ID_BYTES);
    q->expired_next = (q->expired_next + 1) % q->p.expired_ids_kept;
    if (q->n_expired < q->p.expired_ids_kept) q->n_expired++;
  }
  unref_locked(q, j);
}

/* Evicts finished jobs beyond keep_finished_count and those older than keep_finished_seconds. */
static void evict_due_locked(sg_jobs *q, double now) {
  while (q->fhead && (q->n_finished > q->p.keep_finished_count ||
                      now - q->fhead->t_finished >= q->p.keep_finished_seconds))
    evict_locked(q, q->fhead);
}

/* Finds a job by id in the table. Returns 0, SG_JOBS_ENOTFOUND or SG_JOBS_EEXPIRED. */
static int lookup_locked(sg_jobs *q, const char *id, job **out) {
  uint8_t key[ID_BYTES];
  *out = NULL;
  evict_due_locked(q, sg_jobs_now());
  if (id_to_key(id, key)) return SG_JOBS_ENOTFOUND;
  job *j = table_find(q, key);
  if (j) {
    *out = j;
    return 0;
  }
  return expired_has(q, key) ? SG_JOBS_EEXPIRED : SG_JOBS_ENOTFOUND;
}

/* Moves j (already off the queue, or just back from its worker) to its final state and counts it. */
static void finish_locked(sg_jobs *q, job *j, sg_job_state state, sg_job_error error, const char *msg) {
  int ran = j->state == SG_JOB_RUNNING;
  j->state = state;
  j->error = error;
  snprintf(j->message, sizeof j->message, "%s", msg ? msg : "");
  j->t_finished = sg_jobs_now();
  j->w_finished = wall_now();
  if (ran) hist_observe(&q->st.inference_seconds, j->t_finished - j->t_started);
  if (state == SG_JOB_SUCCEEDED) {
    q->st.succeeded++;
    q->st.images += (uint64_t)j->n_ready;
  } else if (state == SG_JOB_FAILED) {
    q->st.failed++;
    if (error == SG_JOB_ERR_TIMEOUT) q->st.timed_out++;
  } else {
    q->st.cancelled++;
    if (error == SG_JOB_ERR_SHUTDOWN) q->st.shutdown++;
  }
  list_append(&q->fhead, &q->ftail, j);
  q->n_finished++;
  if (!j->collected) { /* the one place that increments the count: once per job, as it finishes */
    j->counted = 1;
    q->n_uncollected++;
  }
  pthread_cond_broadcast(&q->idle_cv);
  pthread_cond_signal(&q->timer_cv);
}

/* Ends a queued job without running it and puts it (with a reference for the caller) on *pending, whose END
 * events the caller sends with send_ends once the lock is released. */
static void end_queued_locked(sg_jobs *q, job *j, sg_job_state state, sg_job_error error, const char *msg,
                              job **pending) {
  list_remove(&q->qhead, &q->qtail, j);
  q->n_queued--;
  finish_locked(q, j, state, error, msg);
  j->refs++;
  j->dnext = *pending;
  *pending = j;
}

/* ---- events ---- */

/* Calls every watcher of j with ev, one at a time, without the lock. The caller holds a reference to j and not
 * the lock. */
static void dispatch(sg_jobs *q, job *j, const sg_job_event *ev) {
  pthread_t self = pthread_self();
  pthread_mutex_lock(&q->mu);
  sg_job_watch *w = j->watchers;
  while (w) {
    if (w->in_cb || w->dead) {
      w = w->next;
      continue;
    }
    w->in_cb = 1;
    w->cb_thread = self;
    pthread_mutex_unlock(&q->mu);
    w->cb(w->user, ev);
    pthread_mutex_lock(&q->mu);
    w->in_cb = 0;
    if (ev->kind == SG_JOB_EVENT_END && !j->n_ready) collect_locked(q, j); /* the END told the failure */
    sg_job_watch *next = w->next; /* read under the lock: unwatch of the others updates the links */
    if (w->dead) {
      if (w->prev) w->prev->next = w->next;
      else j->watchers = w->next;
      if (w->next) w->next->prev = w->prev;
      unref_locked(q, j); /* not the last: the caller holds one */
      free(w);
    }
    pthread_cond_broadcast(&q->cb_cv);
    w = next;
  }
  pthread_mutex_unlock(&q->mu);
}

/* Fills the END event of finished j; its private fields let the callback read the record (sg_jobs_event_status,
 * sg_jobs_event_image) while the dispatcher's reference keeps it, even after its eviction. */
static void end_event(sg_jobs *q, job *j, sg_job_event *ev) {
  memset(ev, 0, sizeof *ev);
  ev->kind = SG_JOB_EVENT_END;
  ev->id = j->id;
  ev->state = j->state;
  ev->step = j->step;
  ev->total = j->steps;
  ev->error = j->error;
  ev->message = j->message;
  ev->n_images = j->n_ready;
  ev->_q = q;
  ev->_job = j;
}

/* Sends the END events of a pending list and drops the references it held. Lock not held. */
static void send_ends(sg_jobs *q, job *pending) {
  for (job *j = pending; j; j = j->dnext) {
    sg_job_event ev;
    end_event(q, j, &ev); /* a finished record no longer changes */
    dispatch(q, j, &ev);
    log_line(q, SG_JOBS_LOG_INFO, "%s: job %s %s (%s)", __func__, j->id, sg_job_state_name(j->state), j->message);
  }
  if (!pending) return;
  pthread_mutex_lock(&q->mu);
  while (pending) {
    job *next = pending->dnext;
    pending->dnext = NULL;
    unref_locked(q, pending);
    pending = next;
  }
  pthread_mutex_unlock(&q->mu);
}

/* Cancels everything queued (at once, onto *pending) and flags everything running, with reason `why`. */
static void cancel_all_locked(sg_jobs *q, sg_job_error why, const char *msg, job **pending) {
  while (q->qhead) end_queued_locked(q, q->qhead, SG_JOB_CANCELLED, why, msg, pending);
  for (job *j = q->all; j; j = j->anext)
    if (j->state == SG_JOB_RUNNING && j->cancel == SG_JOB_ERR_NONE) j->cancel = why;
}

/* ---- workers ---- */

/* Records a step of running j, checks its cancel flag and deadline, sends the progress event. Returns 1 when j
 * should stop. Lock not held. */
static int on_progress(sg_jobs *q, job *j, int32_t step, int32_t total) {
  pthread_mutex_lock(&q->mu);
  j->step = step;
  q->st.steps++;
  if (j->cancel == SG_JOB_ERR_NONE && j->deadline > 0 && sg_jobs_now() >= j->deadline)
    j->cancel = SG_JOB_ERR_TIMEOUT;
  int stop = j->cancel != SG_JOB_ERR_NONE, watched = j->watchers != NULL;
  pthread_mutex_unlock(&q->mu);
  if (watched) {
    sg_job_event ev = {SG_JOB_EVENT_PROGRESS, j->id, SG_JOB_RUNNING, step, total, SG_JOB_ERR_NONE, "", 0, NULL, NULL};
    dispatch(q, j, &ev);
  }
  return stop;
}

static sg_job_error error_of(int rc, const char *msg) {
  switch (rc) {
    case SG_GENERATE_EINVAL:
    case SG_GENERATE_ENOLGP: return SG_JOB_ERR_INVALID;
    case SG_GENERATE_ENOMEM: return SG_JOB_ERR_NOMEM;
    case SG_GENERATE_ECANCEL: return SG_JOB_ERR_CANCELLED;
    default: return strstr(msg, "out of memory") ? SG_JOB_ERR_NOMEM : SG_JOB_ERR_RUNTIME; /* CUDA's OOM */
  }
}

/* Encodes image k of r as PNG with the job's text chunks. Returns 0 or a negative SG_IMAGE_E* code. */
static int encode_png(const job *j, const sg_model *m, const sg_result *r, int32_t k, blob *out, char *err,
                      size_t errlen) {
  char seed[32], beta[32], stop[32], steps[32], cfg[32];
  snprintf(seed, sizeof seed, "%" PRId64, r->seeds ? r->seeds[k] : j->seed + k);
  snprintf(beta, sizeof beta, "%g", j->beta);
  snprintf(stop, sizeof stop, "%g", j->stop);
  snprintf(steps, sizeof steps, "%" PRId32, j->steps);
  snprintf(cfg, sizeof cfg, "%g", j->cfg);
  sg_png_text text[9 + SG_JOBS_MAX_EXTRA_TEXT] = {
      {"prompt", j->prompt},
      {"negative_prompt", j->negative},
      {"seed", seed},
      {"beta", beta},
      {"stop", stop},
      {"steps", steps},
      {"cfg", cfg},
      {"sampler", sg_sampler_kind_name(j->sampler)},
      {"model", j->model_name ? j->model_name : sg_model_get_info(m)->name},
  };
  int32_t n = 9;
  for (int32_t i = 0; i < j->n_extra; i++) text[n++] = (sg_png_text){j->extra[2 * i], j->extra[2 * i + 1]};
  size_t px = (size_t)r->width * r->height * 3;
  return sg_png_encode(r->pixels + (size_t)k * px, r->width, r->height, 3, text, n, &out->data, &out->len, err,
                       errlen);
}

/* The generation parameters of job j. */
static sg_generate_params params_of(const sg_jobs *q, const job *j) {
  sg_generate_params p = q->defaults;
  p.prompt = j->prompt;
  p.negative_prompt = j->negative;
  p.sketch = j->sketch;
  p.beta = j->beta;
  p.stop = j->stop;
  p.stop_step = j->stop_step;
  p.steps = j->steps;
  p.cfg = j->cfg;
  p.seed = j->seed;
  p.sampler = j->sampler;
  p.eta = j->eta;
  p.n_images = j->n_images;
  p.progress = NULL;
  p.cancel = NULL; /* the flag lives under the lock; on_progress reads it */
  return p;
}

/* Ends running j (referenced by the caller) on w: with rc 0 encodes r's images (and frees r), else records the
 * failure err (SG_GENERATE_ECANCEL: the reason set on the job); then finishes it, sends its END and drops the
 * worker's hold on it. Lock not held. */
static void end_job(worker *w, job *j, int rc, char *err, size_t errlen, sg_result *r) {
  sg_jobs *q = w->q;
  sg_job_error e = rc ? error_of(rc, err) : SG_JOB_ERR_NONE;
  blob *images = NULL;
  if (rc == 0) {
    images = calloc((size_t)r->n, sizeof *images);
    if (!images) {
      e = SG_JOB_ERR_NOMEM;
      snprintf(err, errlen, "out of memory");
    }
    for (int32_t k = 0; images && k < r->n && e == SG_JOB_ERR_NONE; k++) {
      char perr[200] = "";
      int prc = encode_png(j, w->m, r, k, &images[k], perr, sizeof perr);
      if (prc) {
        e = prc == SG_IMAGE_ENOMEM ? SG_JOB_ERR_NOMEM : SG_JOB_ERR_RUNTIME;
        snprintf(err, errlen, "PNG encoding: %s", perr);
      }
    }
    if (e != SG_JOB_ERR_NONE && images) {
      for (int32_t k = 0; k < r->n; k++) free(images[k].data);
      free(images);
      images = NULL;
    }
  }
  pthread_mutex_lock(&q->mu);
  sg_job_state state = SG_JOB_FAILED;
  if (e == SG_JOB_ERR_NONE) {
    state = SG_JOB_SUCCEEDED;
    j->images = images;
    j->n_ready = r->n;
    j->timings = r->timings;
    j->guided_steps = r->guided_steps;
    err[0] = 0;
  } else if (e == SG_JOB_ERR_CANCELLED) {
    e = j->cancel != SG_JOB_ERR_NONE ? j->cancel : SG_JOB_ERR_CANCELLED;
    state = e == SG_JOB_ERR_TIMEOUT ? SG_JOB_FAILED : SG_JOB_CANCELLED;
    snprintf(err, errlen, "%s at step %d of %d",
             e == SG_JOB_ERR_TIMEOUT ? "deadline passed" : e == SG_JOB_ERR_SHUTDOWN ? "shut down" : "cancelled",
             (int)j->step, (int)j->steps);
  }
  finish_locked(q, j, state, e, err);
  sg_job_event ev;
  end_event(q, j, &ev);
  pthread_mutex_unlock(&q->mu);
  if (rc == 0) sg_result_free(r);
  dispatch(q, j, &ev);
  log_line(q, state == SG_JOB_SUCCEEDED ? SG_JOBS_LOG_INFO : SG_JOBS_LOG_WARN, "%s: job %s %s in %.3f s%s%s", __func__,
        j->id, sg_job_state_name(state), j->t_finished - j->t_started, ev.message[0] ? ": " : "", ev.message);
  pthread_mutex_lock(&q->mu);
  q->n_running--; /* only now, so that drain returns after the END events went out */
  q->n_solo_running -= j->solo;
  pthread_cond_broadcast(&q->idle_cv);
  unref_locked(q, j);
  pthread_mutex_unlock(&q->mu);
}

/* Takes queued jobs for w's batch (lock held): FIFO, up to max_batch members in all; a solo job (batching off)
 * waits until the batch is empty and then runs alone. Jobs whose deadline passed are ended onto *pending. Returns
 * how many were taken into out. */
static int32_t admit_locked(sg_jobs *q, worker *w, int32_t cap, int32_t n_active, int solo_active, job **out,
                            job **pending) {
  int32_t n = 0;
  double now = sg_jobs_now();
  evict_due_locked(q, now);
  while (q->qhead && !solo_active && n_active + n < cap) {
    job *j = q->qhead;
    if (j->deadline > 0 && now >= j->deadline) { /* the timer has not got to it yet */
      end_queued_locked(q, j, SG_JOB_FAILED, SG_JOB_ERR_TIMEOUT, "deadline passed while queued", pending);
      continue;
    }
    if (j->solo && n_active + n > 0) break; /* it waits at the head, so that the batch empties for it */
    list_remove(&q->qhead, &q->qtail, j);
    q->n_queued--;
    q->n_running++;
    j->state = SG_JOB_RUNNING;
    j->worker = w->index;
    j->t_started = now;
    j->w_started = wall_now();
    j->refs++; /* the worker's, until end_job */
    hist_observe(&q->st.queue_seconds, now - j->t_created);
    out[n++] = j;
    if (j->solo) solo_active = 1, q->n_solo_running++;
  }
  return n;
}

/* A worker: at every step boundary it retires the members that are done, failed or told to stop, admits queued
 * jobs up to max_batch, and advances every member by one step in one batch call (server/jobs.h). */
static void *worker_main(void *arg) {
  worker *w = arg;
  sg_jobs *q = w->q;
  int32_t cap = q->p.max_batch;
  job **jobs = calloc((size_t)cap, sizeof *jobs), **fresh = calloc((size_t)cap, sizeof *fresh);
  sg_generation **gens = calloc((size_t)cap, sizeof *gens);
  int *rcs = calloc((size_t)cap, sizeof *rcs);
  char(*errs)[256] = calloc((size_t)cap, sizeof *errs);
  job *jobs1[1], *fresh1[1];
  sg_generation *gens1[1];
  int rcs1[1];
  char errs1[1][256];
  if (!jobs || !fresh || !gens || !rcs || !errs) { /* out of memory: batches of one */
    free(jobs), free(fresh), free(gens), free(rcs), free(errs);
    jobs = jobs1, fresh = fresh1, gens = gens1, rcs = rcs1, errs = errs1, cap = 1;
    log_line(q, SG_JOBS_LOG_WARN, "%s: worker %d: out of memory for a batch of %d; running one job at a time",
             __func__, (int)w->index, (int)q->p.max_batch);
  }
  int32_t n = 0;
  pthread_mutex_lock(&q->mu);
  for (;;) {
    while (!q->stopping && !q->qhead && n == 0) pthread_cond_wait(&q->work_cv, &q->mu);
    if (q->stopping && n == 0) break; /* sg_jobs_free emptied the queue */
    job *pending = NULL;
    int solo_active = n > 0 && jobs[0]->solo;
    int32_t nf = admit_locked(q, w, cap, n, solo_active, fresh, &pending);
    pthread_mutex_unlock(&q->mu);
    send_ends(q, pending);
    for (int32_t k = 0; k < nf; k++) {
      job *j = fresh[k];
      log_line(q, SG_JOBS_LOG_DEBUG, "%s: job %s on worker %d (%d steps, %d images, batch of %d)", __func__, j->id,
               (int)w->index, (int)j->steps, (int)j->n_images, (int)(n + 1));
      sg_generate_params p = params_of(q, j);
      char err[256] = "";
      sg_generation *g = NULL;
      int rc = sg_generation_start(w->m, &p, &g, err, sizeof err);
      if (rc) {
        end_job(w, j, rc, err, sizeof err, NULL);
        continue;
      }
      jobs[n] = j;
      gens[n++] = g;
    }
    if (n > 0) {
      sg_generation_step_batch(gens, n, rcs, errs[0], sizeof errs[0]);
      int32_t kept = 0;
      for (int32_t k = 0; k < n; k++) {
        job *j = jobs[k];
        sg_generation *g = gens[k];
        int rc = rcs[k];
        char *err = errs[k];
        sg_result r;
        if (rc == 0 && on_progress(q, j, sg_generation_step_index(g), sg_generation_steps(g))) {
          rc = SG_GENERATE_ECANCEL;
          snprintf(err, sizeof errs[k], "cancelled");
        }
        if (rc == 0 && !sg_generation_done(g)) {
          jobs[kept] = j;
          gens[kept++] = g;
          continue;
        }
        if (rc == 0) rc = sg_generation_finish(g, &r, err, sizeof errs[k]);
        sg_generation_free(g);
        end_job(w, j, rc, err, sizeof errs[k], &r);
      }
      n = kept;
    }
    pthread_mutex_lock(&q->mu);
  }
  pthread_mutex_unlock(&q->mu);
  if (jobs != jobs1) free(jobs), free(fresh), free(gens), free(rcs), free(errs);
  return NULL;
}

/* Fails queued jobs whose deadline passed and evicts old finished jobs, sleeping until the next such time. */
static void *timer_main(void *arg) {
  sg_jobs *q = arg;
  pthread_mutex_lock(&q->mu);
  while (!q->stopping) {
    double now = sg_jobs_now(), wake = INFINITY;
    job *pending = NULL;
    for (job *j = q->qhead, *next; j; j = next) {
      next = j->next;
      if (j->deadline > 0 && now >= j->deadline)
        end_queued_locked(q, j, SG_JOB_FAILED, SG_JOB_ERR_TIMEOUT, "deadline passed while queued", &pending);
      else if (j->deadline > 0 && j->deadline < wake)
        wake = j->deadline;
    }
    evict_due_locked(q, now);
    if (pending) {
      pthread_mutex_unlock(&q->mu);
      send_ends(q, pending);
      pthread_mutex_lock(&q->mu);
      continue;
    }
    if (q->fhead && q->fhead->t_finished + q->p.keep_finished_seconds < wake)
      wake = q->fhead->t_finished + q->p.keep_finished_seconds;
    if (wake == INFINITY) {
      pthread_cond_wait(&q->timer_cv, &q->mu);
    } else {
      struct timespec ts = to_timespec(wake);
      pthread_cond_timedwait(&q->timer_cv, &q->mu, &ts);
    }
  }
  pthread_mutex_unlock(&q->mu);
  return NULL;
}

/* ---- public ---- */

sg_jobs_params sg_jobs_default_params(void) {
  sg_jobs_params p = {16, 256, 600.0, 4096, NULL, NULL, 1};
  return p;
}

const double *sg_jobs_hist_bounds(void) { return HIST_LE; }

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
  int rc = pthread_create(&q->timer, NULL, timer_main, q);
  q->timer_started = rc == 0;
  for (int32_t i = 0; i < n_workers && rc == 0; i++) {
    q->workers[i] = (worker){q, models[i], i, 0, 0};
    rc = pthread_create(&q->workers[i].th, NULL, worker_main, &q->workers[i]);
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
  j->prompt = dup_str(r->prompt);
  j->negative = dup_str(r->negative_prompt);
  j->model_name = r->model_name ? dup_str(r->model_name) : NULL;
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
        if (!(j->extra[i] = dup_str(r->extra_text[i]))) bad = 1;
    } else {
      bad = 1;
    }
  }
  if (bad) {
    job_free(j);
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
    if (j) job_free(j);
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
      if (random_bytes(j->key, ID_BYTES)) {
        rc = SG_JOBS_ESYS;
        sg_set_err(err, errlen, "no random bytes for a job id");
        break;
      }
    } while (table_find(q, j->key) || expired_has(q, j->key));
  }
  if (rc) {
    pthread_mutex_unlock(&q->mu);
    job_free(j);
    free(w);
    return rc;
  }
  key_to_id(j->key, j->id);
  j->state = SG_JOB_QUEUED;
  j->t_created = sg_jobs_now();
  j->w_created = wall_now();
  j->refs = 1; /* the table's */
  j->in_table = 1;
  size_t h = key_hash(q, j->key);
  j->hnext = q->table[h];
  q->table[h] = j;
  j->anext = q->all;
  if (q->all) q->all->aprev = j;
  q->all = j;
  list_append(&q->qhead, &q->qtail, j);
  q->n_queued++;
  q->st.submitted++;
  memcpy(id, j->id, SG_JOB_ID_LEN);
  if (w) {
    *w = (sg_job_watch){.q = q, .j = j, .cb = cb, .user = user};
    j->watchers = w;
    j->refs++; /* the watch's */
    *handle = w;
  }
  evict_due_locked(q, j->t_created);
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
  if (j->state >= SG_JOB_SUCCEEDED && !j->n_ready) collect_locked(q, j); /* a failure's outcome is its status */
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
  int rc = lookup_locked(q, id, &j);
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
    if (j->fetched == (j->n_ready >= 64 ? ~(uint64_t)0 : ((uint64_t)1 << j->n_ready) - 1)) collect_locked(q, j);
  }
  unref_locked(q, j); /* may free j */
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
  int rc = lookup_locked(q, id, &j);
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
  int rc = lookup_locked(q, id, &j);
  if (!rc) {
    if (j->state == SG_JOB_QUEUED)
      end_queued_locked(q, j, SG_JOB_CANCELLED, SG_JOB_ERR_CANCELLED, "cancelled while queued", &pending);
    else if (j->state == SG_JOB_RUNNING && j->cancel == SG_JOB_ERR_NONE)
      j->cancel = SG_JOB_ERR_CANCELLED;
    else if (j->state != SG_JOB_RUNNING)
      rc = SG_JOBS_EFINISHED;
    if (!rc) collect_locked(q, j); /* whoever cancelled it expects no result */
  }
  pthread_mutex_unlock(&q->mu);
  send_ends(q, pending);
  return rc;
}

int sg_jobs_watch(sg_jobs *q, const char *id, sg_job_watch_fn cb, void *user, sg_job_watch **handle) {
  if (handle) *handle = NULL;
  if (!q || !cb || !handle) return SG_JOBS_EINVAL;
  sg_job_watch *w = calloc(1, sizeof *w);
  if (!w) return SG_JOBS_ENOMEM;
  pthread_mutex_lock(&q->mu);
  job *j;
  int rc = lookup_locked(q, id, &j);
  if (rc) {
    pthread_mutex_unlock(&q->mu);
    free(w);
    return rc;
  }
  if (j->state >= SG_JOB_SUCCEEDED) {
    sg_job_event ev;
    end_event(q, j, &ev); /* a finished record no longer changes; our reference keeps it for the callback */
    j->refs++;
    if (!j->n_ready) collect_locked(q, j); /* the END about to be delivered tells the failure */
    pthread_mutex_unlock(&q->mu);
    free(w);
    cb(user, &ev);
    pthread_mutex_lock(&q->mu);
    unref_locked(q, j); /* may free j, evicted meanwhile */
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
  unref_locked(q, j);
  pthread_mutex_unlock(&q->mu);
  free(w);
}

int sg_jobs_stats_get(sg_jobs *q, sg_jobs_stats *out) {
  if (!q || !out) return SG_JOBS_EINVAL;
  pthread_mutex_lock(&q->mu);
  evict_due_locked(q, sg_jobs_now());
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
  struct timespec ts = to_timespec(end);
  while ((q->n_queued || q->n_running) && sg_jobs_now() < end) pthread_cond_timedwait(&q->idle_cv, &q->mu, &ts);
  if (!q->n_queued && !q->n_running) {
    pthread_mutex_unlock(&q->mu);
    return 0;
  }
  int32_t queued = q->n_queued, running = q->n_running;
  job *pending = NULL;
  cancel_all_locked(q, SG_JOB_ERR_SHUTDOWN, "shut down while queued", &pending);
  pthread_mutex_unlock(&q->mu);
  log_line(q, SG_JOBS_LOG_WARN, "%s: %.1f s passed; cancelling %d queued and %d running jobs", __func__, timeout_s,
        (int)queued, (int)running);
  send_ends(q, pending);
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
  cancel_all_locked(q, SG_JOB_ERR_SHUTDOWN, "shut down while queued", &pending);
  pthread_cond_broadcast(&q->work_cv);
  pthread_cond_broadcast(&q->timer_cv);
  pthread_mutex_unlock(&q->mu);
  send_ends(q, pending);
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
    job_free(j);
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
