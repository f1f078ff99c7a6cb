/* The job manager's records (see jobs.c): clocks, ids, histograms, the id table and lists, finishing, and events. */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include "jobs_impl.h"

static const double HIST_LE[SG_JOBS_HIST_BUCKETS] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,
                                                      2.5,   5,    10,    25,   60,  120,  300, 600};

/* ---- small helpers ---- */

double sg_jobs_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

double sg_jm_wall_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

struct timespec sg_jm_to_timespec(double t) {
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
void sg_jm_log_line(const sg_jobs *q, sg_jobs_log_level level, const char *fmt, ...) {
  if (!q->p.log) return;
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  q->p.log(q->p.log_user, level, buf);
}

char *sg_jm_dup_str(const char *s) {
  if (!s) s = "";
  size_t n = strlen(s) + 1;
  char *d = malloc(n);
  if (d) memcpy(d, s, n);
  return d;
}

/* Fills buf with n random bytes. Returns 0 or -1. */
int sg_jm_random_bytes(uint8_t *buf, size_t n) {
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

void sg_jm_key_to_id(const uint8_t *key, char *id) {
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
  if (sg_jm_random_bytes(key, sizeof key)) return -1;
  sg_jm_key_to_id(key, out);
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

size_t sg_jm_key_hash(const sg_jobs *q, const uint8_t *key) {
  uint64_t h;
  memcpy(&h, key, sizeof h); /* random bytes: already uniform */
  return (size_t)h & q->table_mask;
}

const double *sg_jobs_hist_bounds(void) { return HIST_LE; }

void sg_jm_hist_observe(sg_jobs_hist *h, double v) {
  if (!(v >= 0)) v = 0;
  for (int i = 0; i < SG_JOBS_HIST_BUCKETS; i++)
    if (v <= HIST_LE[i]) h->buckets[i]++;
  h->count++;
  h->sum += v;
}

/* ---- job records (lock held) ---- */

void sg_jm_job_free(job *j) {
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

void sg_jm_unref_locked(sg_jobs *q, job *j) {
  if (--j->refs > 0) return;
  if (j->aprev) j->aprev->anext = j->anext;
  else q->all = j->anext;
  if (j->anext) j->anext->aprev = j->aprev;
  sg_jm_job_free(j);
}

job *sg_jm_table_find(const sg_jobs *q, const uint8_t *key) {
  for (job *j = q->table[sg_jm_key_hash(q, key)]; j; j = j->hnext)
    if (!memcmp(j->key, key, ID_BYTES)) return j;
  return NULL;
}

static void table_remove(sg_jobs *q, job *j) {
  job **pp = &q->table[sg_jm_key_hash(q, j->key)];
  while (*pp && *pp != j) pp = &(*pp)->hnext;
  if (*pp) *pp = j->hnext;
  j->hnext = NULL;
  j->in_table = 0;
}

int sg_jm_expired_has(const sg_jobs *q, const uint8_t *key) {
  for (int32_t i = 0; i < q->n_expired; i++)
    if (!memcmp(q->expired[i], key, ID_BYTES)) return 1;
  return 0;
}

void sg_jm_list_remove(job **head, job **tail, job *j) {
  if (j->prev) j->prev->next = j->next;
  else *head = j->next;
  if (j->next) j->next->prev = j->prev;
  else *tail = j->prev;
  j->prev = j->next = NULL;
}

void sg_jm_list_append(job **head, job **tail, job *j) {
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
void sg_jm_collect_locked(sg_jobs *q, job *j) {
  j->collected = 1;
  uncount_locked(q, j);
}

/* Drops a finished job from the table (and from the uncollected count) and remembers its id as expired. */
static void evict_locked(sg_jobs *q, job *j) {
  sg_jm_list_remove(&q->fhead, &q->ftail, j);
  q->n_finished--;
  uncount_locked(q, j);
  table_remove(q, j);
  if (q->p.expired_ids_kept > 0) {
    memcpy(q->expired[q->expired_next], j->key, ID_BYTES);
    q->expired_next = (q->expired_next + 1) % q->p.expired_ids_kept;
    if (q->n_expired < q->p.expired_ids_kept) q->n_expired++;
  }
  sg_jm_unref_locked(q, j);
}

/* Evicts finished jobs beyond keep_finished_count and those older than keep_finished_seconds. */
void sg_jm_evict_due_locked(sg_jobs *q, double now) {
  while (q->fhead && (q->n_finished > q->p.keep_finished_count ||
                      now - q->fhead->t_finished >= q->p.keep_finished_seconds))
    evict_locked(q, q->fhead);
}

/* Finds a job by id in the table. Returns 0, SG_JOBS_ENOTFOUND or SG_JOBS_EEXPIRED. */
int sg_jm_lookup_locked(sg_jobs *q, const char *id, job **out) {
  uint8_t key[ID_BYTES];
  *out = NULL;
  sg_jm_evict_due_locked(q, sg_jobs_now());
  if (id_to_key(id, key)) return SG_JOBS_ENOTFOUND;
  job *j = sg_jm_table_find(q, key);
  if (j) {
    *out = j;
    return 0;
  }
  return sg_jm_expired_has(q, key) ? SG_JOBS_EEXPIRED : SG_JOBS_ENOTFOUND;
}

/* Moves j (already off the queue, or just back from its worker) to its final state and counts it. */
void sg_jm_finish_locked(sg_jobs *q, job *j, sg_job_state state, sg_job_error error, const char *msg) {
  int ran = j->state == SG_JOB_RUNNING;
  j->state = state;
  j->error = error;
  snprintf(j->message, sizeof j->message, "%s", msg ? msg : "");
  j->t_finished = sg_jobs_now();
  j->w_finished = sg_jm_wall_now();
  if (ran) sg_jm_hist_observe(&q->st.inference_seconds, j->t_finished - j->t_started);
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
  sg_jm_list_append(&q->fhead, &q->ftail, j);
  q->n_finished++;
  if (!j->collected) { /* the one place that increments the count: once per job, as it finishes */
    j->counted = 1;
    q->n_uncollected++;
  }
  pthread_cond_broadcast(&q->idle_cv);
  pthread_cond_signal(&q->timer_cv);
}

/* Ends a queued job without running it and puts it (with a reference for the caller) on *pending, whose END
 * events the caller sends with sg_jm_send_ends once the lock is released. */
void sg_jm_end_queued_locked(sg_jobs *q, job *j, sg_job_state state, sg_job_error error, const char *msg,
                              job **pending) {
  sg_jm_list_remove(&q->qhead, &q->qtail, j);
  q->n_queued--;
  sg_jm_finish_locked(q, j, state, error, msg);
  j->refs++;
  j->dnext = *pending;
  *pending = j;
}

/* ---- events ---- */

/* Calls every watcher of j with ev, one at a time, without the lock. The caller holds a reference to j and not
 * the lock. */
void sg_jm_dispatch(sg_jobs *q, job *j, const sg_job_event *ev) {
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
    if (ev->kind == SG_JOB_EVENT_END && !j->n_ready) sg_jm_collect_locked(q, j); /* the END told the failure */
    sg_job_watch *next = w->next; /* read under the lock: unwatch of the others updates the links */
    if (w->dead) {
      if (w->prev) w->prev->next = w->next;
      else j->watchers = w->next;
      if (w->next) w->next->prev = w->prev;
      sg_jm_unref_locked(q, j); /* not the last: the caller holds one */
      free(w);
    }
    pthread_cond_broadcast(&q->cb_cv);
    w = next;
  }
  pthread_mutex_unlock(&q->mu);
}

/* Fills the END event of finished j; its private fields let the callback read the record (sg_jobs_event_status,
 * sg_jobs_event_image) while the dispatcher's reference keeps it, even after its eviction. */
void sg_jm_end_event(sg_jobs *q, job *j, sg_job_event *ev) {
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
void sg_jm_send_ends(sg_jobs *q, job *pending) {
  for (job *j = pending; j; j = j->dnext) {
    sg_job_event ev;
    sg_jm_end_event(q, j, &ev); /* a finished record no longer changes */
    sg_jm_dispatch(q, j, &ev);
    sg_jm_log_line(q, SG_JOBS_LOG_INFO, "%s: job %s %s (%s)", __func__, j->id, sg_job_state_name(j->state), j->message);
  }
  if (!pending) return;
  pthread_mutex_lock(&q->mu);
  while (pending) {
    job *next = pending->dnext;
    pending->dnext = NULL;
    sg_jm_unref_locked(q, pending);
    pending = next;
  }
  pthread_mutex_unlock(&q->mu);
}

/* Cancels everything queued (at once, onto *pending) and flags everything running, with reason `why`. */
void sg_jm_cancel_all_locked(sg_jobs *q, sg_job_error why, const char *msg, job **pending) {
  while (q->qhead) sg_jm_end_queued_locked(q, q->qhead, SG_JOB_CANCELLED, why, msg, pending);
  for (job *j = q->all; j; j = j->anext)
    if (j->state == SG_JOB_RUNNING && j->cancel == SG_JOB_ERR_NONE) j->cancel = why;
}
