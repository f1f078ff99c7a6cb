/* Private to server/jobs*.c: the job manager's records, workers and state, and the functions its files share. */
#ifndef SG_JOBS_IMPL_H
#define SG_JOBS_IMPL_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "jobs.h"

#define ID_BYTES 16
#define MAX_WORKERS 64

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

/* server/jobs_records.c: clocks, logging, ids, histograms; job records, the id table and the lists (the *_locked
 * functions need the lock held); events (dispatch, end_event and send_ends need it not held). */
double sg_jm_wall_now(void);
struct timespec sg_jm_to_timespec(double t);
void sg_jm_log_line(const sg_jobs *q, sg_jobs_log_level level, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
char *sg_jm_dup_str(const char *s);
int sg_jm_random_bytes(uint8_t *buf, size_t n);
void sg_jm_key_to_id(const uint8_t *key, char *id);
size_t sg_jm_key_hash(const sg_jobs *q, const uint8_t *key);
void sg_jm_hist_observe(sg_jobs_hist *h, double v);
void sg_jm_job_free(job *j);
void sg_jm_unref_locked(sg_jobs *q, job *j);
job *sg_jm_table_find(const sg_jobs *q, const uint8_t *key);
int sg_jm_expired_has(const sg_jobs *q, const uint8_t *key);
void sg_jm_list_remove(job **head, job **tail, job *j);
void sg_jm_list_append(job **head, job **tail, job *j);
void sg_jm_collect_locked(sg_jobs *q, job *j);
void sg_jm_evict_due_locked(sg_jobs *q, double now);
int sg_jm_lookup_locked(sg_jobs *q, const char *id, job **out);
void sg_jm_finish_locked(sg_jobs *q, job *j, sg_job_state state, sg_job_error error, const char *msg);
void sg_jm_end_queued_locked(sg_jobs *q, job *j, sg_job_state state, sg_job_error error, const char *msg, job **pending);
void sg_jm_dispatch(sg_jobs *q, job *j, const sg_job_event *ev);
void sg_jm_end_event(sg_jobs *q, job *j, sg_job_event *ev);
void sg_jm_send_ends(sg_jobs *q, job *pending);
void sg_jm_cancel_all_locked(sg_jobs *q, sg_job_error why, const char *msg, job **pending);

/* server/jobs_worker.c: the threads sg_jobs_new starts. */
void *sg_jm_worker_main(void *arg);
void *sg_jm_timer_main(void *arg);

#endif
