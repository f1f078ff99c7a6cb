/* The job manager behind the HTTP service: a bounded queue, one worker thread per model, job status, PNG results,
 * progress events, eviction of finished jobs, drain and metrics (no HTTP here, no torch headers).
 *
 * Basic usage:
 *   sg_model *models[1] = {model};                       // one per device; the same model twice = two CPU workers
 *   sg_jobs_params p = sg_jobs_default_params();
 *   char err[256];
 *   sg_jobs *q = sg_jobs_new(models, 1, p, err, sizeof err);
 *   sg_job_request r = sg_jobs_default_request(q);       // the model's defaults
 *   r.prompt = "a red star on a plain blue background";
 *   r.seed = 42;
 *   char id[SG_JOB_ID_LEN];
 *   if (sg_jobs_submit(q, &r, id, err, sizeof err) == 0) {
 *     sg_job_watch *w;
 *     sg_jobs_watch(q, id, on_event, user, &w);          // on_event runs on the worker thread
 *     ... when on_event sees SG_JOB_EVENT_END:
 *     sg_job_status st;
 *     sg_jobs_status(q, id, &st);                        // st.state == SG_JOB_SUCCEEDED
 *     uint8_t *png; size_t len;
 *     sg_jobs_image(q, id, 0, &png, &len);  ...  free(png);
 *     sg_jobs_unwatch(w);
 *   }
 *   sg_jobs_drain(q, 30.0);                               // refuse new work, let the rest finish
 *   sg_jobs_free(q);
 *
 * Lifecycle of a job: QUEUED -> RUNNING -> SUCCEEDED | FAILED | CANCELLED, or QUEUED -> FAILED | CANCELLED without
 * running (cancelled, deadline passed, shut down). A finished job is kept until more than keep_finished_count jobs
 * have finished after it or keep_finished_seconds have passed since it finished; then it is evicted and its id
 * answers SG_JOBS_EEXPIRED (the last expired_ids_kept evicted ids are remembered) instead of SG_JOBS_ENOTFOUND.
 *
 * Batching: at every step boundary a worker retires the jobs that finished, failed or must stop (cancel,
 * deadline, drain: each job at its own next step, as alone), takes queued jobs in FIFO order up to max_batch, and
 * advances all of them by one step with sg_generation_step_batch (each at its own step, sampler, cfg, guidance
 * and n). Every job gets a progress event per step. A job is as fast as the batch's step: it slows as the batch
 * grows only by what the batch costs more than one job (max_batch bounds it; set it where the device stops
 * gaining). A job that fails (its sketch, its own error) fails alone. A batched job's images match the same job
 * run alone to rounding (unguided latents within 1e-4; guided ones within a few 8-bit levels, docs/batching.md);
 * a request with solo set waits for the worker's batch to empty and runs alone, bit-exact with sg_generate.
 * max_batch 1 runs one job at a time, as before batching.
 *
 * Errors: sg_jobs_new returns NULL with a message in err; every other call returns 0 (SG_JOBS_OK) or a negative
 * SG_JOBS_E* code. Logging goes through params.log only; nothing here prints, exits or aborts.
 *
 * Threads: every call except sg_jobs_free may come from any number of threads at once. The internal lock is never
 * held while a model runs, while PNGs are encoded, or while a watch callback runs, so callbacks may call any
 * sg_jobs_* function except sg_jobs_drain, sg_jobs_free and sg_jobs_unwatch of another watch (which waits for that
 * watch's callback); sg_jobs_unwatch of their own handle is fine.
 */
#ifndef SG_JOBS_H
#define SG_JOBS_H

#include <stddef.h>
#include <stdint.h>

#include "generate.h"
#include "model.h"
#include "sampler.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A job id: 32 lowercase hex characters (128 random bits from getrandom) and a NUL; URL-safe and unguessable. */
#define SG_JOB_ID_LEN 33

/* Most images one job may ask for (as sg_generate). */
#define SG_JOBS_MAX_IMAGES 64

/* Most extra PNG text chunks per request. */
#define SG_JOBS_MAX_EXTRA_TEXT 16

/* Most jobs one worker steps together (sg_jobs_params.max_batch). */
#define SG_JOBS_MAX_BATCH 256

/* Buckets of the duration histograms (see sg_jobs_hist). */
#define SG_JOBS_HIST_BUCKETS 16

typedef struct sg_jobs sg_jobs;
typedef struct sg_job_watch sg_job_watch;

enum {
  SG_JOBS_OK = 0,
  SG_JOBS_EINVAL = -1,     /* a bad request or argument; the message names the parameter */
  SG_JOBS_EFULL = -2,      /* max_queue jobs are already waiting */
  SG_JOBS_EDRAINING = -3,  /* sg_jobs_drain was called: no new work */
  SG_JOBS_ENOTFOUND = -4,  /* no such job id (never existed, or malformed) */
  SG_JOBS_EEXPIRED = -5,   /* the job existed but was evicted */
  SG_JOBS_EFINISHED = -6,  /* cancel of a job that had already finished */
  SG_JOBS_ENOIMAGE = -7,   /* the job has no image of that index (not succeeded, or index out of range) */
  SG_JOBS_ETIMEDOUT = -8,  /* sg_jobs_drain: work remained at the timeout and was cancelled */
  SG_JOBS_ENOMEM = -9,     /* out of memory */
  SG_JOBS_ESYS = -10,      /* the system failed (no random bytes for an id) */
};

typedef enum {
  SG_JOB_QUEUED = 0,
  SG_JOB_RUNNING,
  SG_JOB_SUCCEEDED,
  SG_JOB_FAILED,
  SG_JOB_CANCELLED,
} sg_job_state;

/* Why a job did not succeed. FAILED jobs carry INVALID, TIMEOUT, RUNTIME or NOMEM; CANCELLED jobs carry CANCELLED
 * (sg_jobs_cancel) or SHUTDOWN (sg_jobs_drain's timeout, sg_jobs_free). */
typedef enum {
  SG_JOB_ERR_NONE = 0,
  SG_JOB_ERR_INVALID,   /* the model refused the parameters */
  SG_JOB_ERR_TIMEOUT,   /* the deadline passed (queued: never ran; running: stopped at the next step) */
  SG_JOB_ERR_CANCELLED, /* sg_jobs_cancel */
  SG_JOB_ERR_RUNTIME,   /* the model or the PNG encoder failed */
  SG_JOB_ERR_NOMEM,     /* out of memory (host, or a device message saying so) */
  SG_JOB_ERR_SHUTDOWN,  /* cancelled by sg_jobs_drain's timeout or sg_jobs_free */
} sg_job_error;

/* Log levels of params.log. */
typedef enum { SG_JOBS_LOG_DEBUG = 0, SG_JOBS_LOG_INFO, SG_JOBS_LOG_WARN, SG_JOBS_LOG_ERROR } sg_jobs_log_level;

/* Receives one line (no newline, "function: ...") from any thread, never with the internal lock held. */
typedef void (*sg_jobs_log_fn)(void *user, sg_jobs_log_level level, const char *msg);

typedef struct {
  int32_t max_queue;             /* jobs that may wait for a busy worker (beyond the free places of the workers'
                                    batches; a worker running a solo job has none); 16. Beyond it, submit gets
                                    EFULL */
  int32_t keep_finished_count;   /* finished jobs kept; 256 (0 evicts a job as soon as it finishes) */
  double keep_finished_seconds;  /* how long a finished job is kept; 600 */
  int32_t expired_ids_kept;      /* evicted ids remembered for EEXPIRED; 4096 */
  sg_jobs_log_fn log;            /* NULL: no logging */
  void *log_user;
  int32_t max_batch;             /* jobs one worker advances together, one U-Net pass per step for all; 1 (one job at
                                    a time), up to SG_JOBS_MAX_BATCH */
} sg_jobs_params;

/* A generation request. sg_jobs_submit deep-copies it (strings, sketch, text chunks), so the caller may free its
 * buffers as soon as submit returns. */
typedef struct {
  const char *prompt;          /* required */
  const char *negative_prompt; /* NULL = "" */
  const float *sketch;         /* image_size^2 floats (1 = stroke), or NULL: unguided */
  double beta;                 /* edge guidance scale; 0 = unguided */
  double stop;                 /* fraction of guided steps */
  int32_t stop_step;           /* guided steps; -1 = use stop */
  int32_t steps;
  double cfg;
  int64_t seed;                /* >= 0 (the caller resolves random seeds); image k uses seed + k */
  sg_sampler_kind sampler;
  double eta;
  int32_t n_images;            /* 1 .. SG_JOBS_MAX_IMAGES */
  double deadline;             /* absolute CLOCK_MONOTONIC seconds (sg_jobs_now), 0 = none */
  const char *model_name;      /* the PNG "model" chunk; NULL = the model's own name */
  const char *const *extra_text; /* further PNG text chunks as key, value pairs: 2 x n_extra_text strings */
  int32_t n_extra_text;        /* 0 .. SG_JOBS_MAX_EXTRA_TEXT */
  int solo;                    /* 1: never batched with other jobs (bit-exact with sg_generate; see Batching) */
} sg_job_request;

/* Fixed-bucket histogram of durations in seconds, Prometheus style: le[i] = sg_jobs_hist_bounds()[i], buckets[i]
 * counts observations <= le[i] (cumulative), count is the +Inf bucket. */
typedef struct {
  uint64_t buckets[SG_JOBS_HIST_BUCKETS];
  uint64_t count;
  double sum;
} sg_jobs_hist;

/* A snapshot of the counters. Every job ends in exactly one of succeeded, failed, cancelled; timed_out counts the
 * failed ones with SG_JOB_ERR_TIMEOUT and shutdown the cancelled ones with SG_JOB_ERR_SHUTDOWN. Rejected submits
 * are not in submitted. */
typedef struct {
  int32_t queued, running;      /* now */
  int32_t finished_kept;        /* finished jobs held for status queries */
  int32_t uncollected;          /* of those, the ones whose outcome nobody has fetched yet: a succeeded job until
                                   each of its images went out through sg_jobs_image or sg_jobs_event_image (a copy
                                   that failed for lack of memory is not a fetch), another until a status read
                                   (sg_jobs_status, sg_jobs_event_status) saw it finished or a watcher got its END;
                                   a job someone asked to cancel counts as collected. Exact: each finished job is
                                   counted once and leaves the count once, when collected or evicted, so it is never
                                   negative. A draining service may wait for them. */
  int32_t workers, max_queue, max_batch;
  int draining;                 /* 1 after sg_jobs_drain */
  uint64_t submitted, succeeded, failed, cancelled, timed_out, shutdown;
  uint64_t rejected_full, rejected_draining, rejected_invalid;
  uint64_t images;              /* images generated (succeeded jobs) */
  uint64_t steps;               /* sampler steps run, one per job step whatever its n_images */
  sg_jobs_hist queue_seconds;   /* submit -> start, observed when a job starts running */
  sg_jobs_hist inference_seconds; /* start -> end (generation and PNG encoding), observed for every job that ran */
} sg_jobs_stats;

/* A snapshot of one job. Times are wall-clock Unix seconds, 0 when not reached; durations are in milliseconds. */
typedef struct {
  char id[SG_JOB_ID_LEN];
  sg_job_state state;
  int32_t queue_position;       /* 0-based place among the queued jobs; -1 when not queued */
  int32_t step, total;          /* steps done, steps asked */
  int32_t worker;               /* index of the worker that runs or ran it; -1 when it never ran */
  double created, started, finished;
  double queue_ms;              /* submit -> start, or -> now / -> its end when it never started */
  double inference_ms;          /* start -> end, or -> now while running; 0 when it never ran */
  sg_timings timings;           /* sg_generate's breakdown, in seconds (succeeded jobs) */
  int32_t guided_steps;         /* succeeded jobs */
  sg_job_error error;
  char message[256];            /* "" unless error */
  int32_t n_images;             /* asked */
  int32_t n_ready;              /* images that sg_jobs_image serves: n_images when succeeded, else 0 */
  int64_t seed;                 /* image k's seed is seed + k */
} sg_job_status;

typedef enum {
  SG_JOB_EVENT_PROGRESS = 0, /* a step finished: step of total */
  SG_JOB_EVENT_END,          /* the job reached its final state (the last event of a job) */
} sg_job_event_kind;

/* One event; the strings are valid during the callback only. */
typedef struct {
  sg_job_event_kind kind;
  const char *id;
  sg_job_state state;  /* RUNNING for progress; the final state for END */
  int32_t step, total;
  sg_job_error error;  /* END only */
  const char *message; /* END only: "" unless error */
  int32_t n_images;    /* END only: images available (n_images when succeeded) */
  sg_jobs *_q;         /* private (END only): the record behind the event, for sg_jobs_event_status/_image */
  void *_job;
} sg_job_event;

/* Runs on the thread that produced the event: a worker (progress, END of a job that ran), the thread whose call
 * ended a queued job (sg_jobs_cancel, sg_jobs_drain, sg_jobs_free), the internal timer thread (deadline of a queued
 * job), or the caller of sg_jobs_watch for a job already finished. Keep it short: it delays the worker. */
typedef void (*sg_job_watch_fn)(void *user, const sg_job_event *ev);

/* Returns the defaults: max_queue 16, keep_finished_count 256, keep_finished_seconds 600, expired_ids_kept 4096,
 * no log, max_batch 1. */
sg_jobs_params sg_jobs_default_params(void);

/* Returns the current CLOCK_MONOTONIC time in seconds, the clock of sg_job_request.deadline. */
double sg_jobs_now(void);

/* Starts one worker thread per entry of models (n_workers of them, 1..64; entries may repeat) and a timer thread.
 * The models stay owned by the caller and must outlive the manager; they must share image_size. Returns NULL with a
 * message in err (errlen bytes) on bad parameters or when threads cannot start. */
sg_jobs *sg_jobs_new(sg_model *const *models, int32_t n_workers, sg_jobs_params p, char *err, size_t errlen);

/* Cancels what remains (SG_JOB_ERR_SHUTDOWN; queued jobs at once, running ones at their next step), joins every
 * thread and frees every job. Handles from sg_jobs_watch that were not unwatched become invalid (freed here). NULL
 * is ignored. Must not race any other call on q. */
void sg_jobs_free(sg_jobs *q);

/* Returns a request holding the defaults of worker 0's model (steps, cfg, beta, stop, sampler, eta), one image,
 * seed 0, no prompt, no sketch, no deadline. */
sg_job_request sg_jobs_default_request(const sg_jobs *q);

/* A fresh id: 128 random bits (getrandom, else /dev/urandom) as 32 lowercase hex digits and a NUL; the job
 * manager's job ids and the job store's ids and url keys all come from it. Returns 0, or -1 (no random bytes: out
 * is then ""). */
int sg_jobs_random_id(char out[SG_JOB_ID_LEN]);

/* Validates and deep-copies *req, queues it and writes its id into id. Returns 0; SG_JOBS_EINVAL with a message
 * naming the parameter (the same checks as sg_generate); SG_JOBS_EFULL when max_queue jobs wait;
 * SG_JOBS_EDRAINING after sg_jobs_drain; SG_JOBS_ENOMEM; SG_JOBS_ESYS. err may be NULL. */
int sg_jobs_submit(sg_jobs *q, const sg_job_request *req, char id[SG_JOB_ID_LEN], char *err, size_t errlen);

/* sg_jobs_submit and sg_jobs_watch in one step: the watch is in place when the job is queued, so cb gets every
 * event of the job, its END included, however soon the job ends and whatever evicts it afterwards (a submit followed
 * by sg_jobs_watch may find it evicted already: SG_JOBS_EEXPIRED with a tiny keep_finished_count). cb may run
 * before this returns, on another thread; *handle, set under the lock before any event, is freed by
 * sg_jobs_unwatch. Returns what sg_jobs_submit returns (SG_JOBS_EINVAL also for a NULL cb or handle); *handle is
 * NULL on failure. */
int sg_jobs_submit_watch(sg_jobs *q, const sg_job_request *req, sg_job_watch_fn cb, void *user,
                         char id[SG_JOB_ID_LEN], sg_job_watch **handle, char *err, size_t errlen);

/* Copies the job's state into *out. Returns 0, SG_JOBS_ENOTFOUND or SG_JOBS_EEXPIRED. */
int sg_jobs_status(sg_jobs *q, const char *id, sg_job_status *out);

/* Copies image i (0-based) of a succeeded job as PNG (with tEXt/iTXt chunks prompt, negative_prompt, seed, beta,
 * stop, steps, cfg, sampler, model, then the request's extra text) into a new buffer *png of *len bytes that the
 * caller frees with free(). Returns 0, SG_JOBS_ENOTFOUND, SG_JOBS_EEXPIRED, SG_JOBS_ENOIMAGE (not succeeded, or i
 * out of range) or SG_JOBS_ENOMEM; *png is NULL on failure. The image counts as fetched (sg_jobs_stats.uncollected)
 * only when 0 is returned. */
int sg_jobs_image(sg_jobs *q, const char *id, int32_t i, uint8_t **png, size_t *len);

/* sg_jobs_status and sg_jobs_image for the job of an END event, from inside that event's callback only: the
 * dispatcher holds the job's record for the callback, so they succeed even when the job was evicted before the
 * callback ran (a tiny keep_finished_count with other jobs finishing), which sg_jobs_status and sg_jobs_image by id
 * answer with SG_JOBS_EEXPIRED. They count as the by-id calls do (a status read of a failure, an image fetched).
 * sg_jobs_event_status returns 0 or SG_JOBS_EINVAL (not an END event); sg_jobs_event_image returns 0,
 * SG_JOBS_ENOIMAGE, SG_JOBS_ENOMEM or SG_JOBS_EINVAL, with *png (freed by the caller) NULL on failure. */
int sg_jobs_event_status(const sg_job_event *ev, sg_job_status *out);
int sg_jobs_event_image(const sg_job_event *ev, int32_t i, uint8_t **png, size_t *len);

/* Cancels a job: a queued one becomes CANCELLED at once (its watchers get END before this returns); a running one
 * is flagged and becomes CANCELLED at its next step (it may still succeed if it was past its last step). Returns 0,
 * SG_JOBS_EFINISHED when it had already finished, SG_JOBS_ENOTFOUND or SG_JOBS_EEXPIRED. */
int sg_jobs_cancel(sg_jobs *q, const char *id);

/* Watches a job: cb(user, ev) gets one PROGRESS event per step it runs from now on and one END event. For a job
 * already finished, cb gets its END event before this returns and *handle is set to NULL. Otherwise *handle (freed
 * by sg_jobs_unwatch) keeps the job's record alive, even past eviction. Returns 0, SG_JOBS_ENOTFOUND,
 * SG_JOBS_EEXPIRED, SG_JOBS_EINVAL or SG_JOBS_ENOMEM (*handle NULL on failure). */
int sg_jobs_watch(sg_jobs *q, const char *id, sg_job_watch_fn cb, void *user, sg_job_watch **handle);

/* Stops a watch and frees the handle (NULL is ignored). When it returns, the callback is not running and is never
 * called again (called from inside that callback, it only guarantees the latter). */
void sg_jobs_unwatch(sg_job_watch *handle);

/* Copies the counters and histograms into *out. Returns 0. */
int sg_jobs_stats_get(sg_jobs *q, sg_jobs_stats *out);

/* Returns the SG_JOBS_HIST_BUCKETS upper bounds of the histograms, in seconds (a static array, ascending). */
const double *sg_jobs_hist_bounds(void);

/* Refuses new work from now on (submit answers SG_JOBS_EDRAINING) and waits up to timeout_s seconds for the queued
 * and running jobs to finish. What remains then is cancelled with SG_JOB_ERR_SHUTDOWN (queued jobs at once, running
 * ones at their next step) and waited for, so nothing is queued or running when it returns. Returns 0 when all
 * finished in time, else SG_JOBS_ETIMEDOUT. Must not be called from a watch callback. */
int sg_jobs_drain(sg_jobs *q, double timeout_s);

/* Names for the API: "queued", "running", "succeeded", "failed", "cancelled"; "none", "invalid", "timeout",
 * "cancelled", "runtime", "out_of_memory", "shutdown"; and a short text for an SG_JOBS_E* code (static strings). */
const char *sg_job_state_name(sg_job_state s);
const char *sg_job_error_name(sg_job_error e);
const char *sg_jobs_strerror(int code);

#ifdef __cplusplus
}
#endif

#endif
