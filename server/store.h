/* The job store behind the HTTP API: one interface, two implementations. `local` wraps this process's job manager
 * (sg_jobs, the default: no Redis); `redis` keeps jobs, progress and results in Redis Streams and hashes so that any
 * replica answers any job and a worker process (sg_store_worker) runs them (cluster mode, docs/deploy.md).
 *
 * Basic usage:
 *   sg_store *s = sg_store_local_new(jobs);                 // or sg_store_redis_new(rp, err, sizeof err)
 *   sg_store_submit_opts o = {0};
 *   char id[SG_JOB_ID_LEN]; int64_t seed; sg_store_watcher *w;
 *   if (sg_store_submit(s, &req, &o, on_event, user, id, &seed, &w, err, sizeof err) == 0) {
 *     ... on_event(user, ev, event_id) gets the job's progress and its END; from inside it:
 *     sg_store_event_status(s, ev, &st); sg_store_event_image(s, ev, 0, &png, &len);
 *     sg_store_unwatch(s, w);
 *   }
 *   sg_store_free(s);
 *
 * Redis layout (prefix "sg:"): the stream sg:jobs (one entry per accepted job, consumer group "workers"); the hash
 * sg:job:{id} (request, state, owner, attempts, results' metadata); the stream sg:job:{id}:ev (progress and end
 * events, the ids of the SSE events); the strings sg:job:{id}:img:{i} (PNGs); sg:known:{id} (an id that existed:
 * 410 rather than 404 once the job's keys expire); sg:idem:{key} (Idempotency-Key); the sorted set sg:queue (queued
 * jobs by submit time: depth and oldest age); the hash sg:workers (heartbeats); sg:model (the workers' model, for
 * frontends that load none); sg:file:{key} (an OpenAI url result: "JOB_ID INDEX EXPIRES", sg_store_file_put). Every
 * write that changes a job is one Lua script, so a record is never half-written.
 *
 * Errors: constructors return NULL (with a message in err for redis); every other call returns 0 or a negative
 * code: the SG_JOBS_E* codes with their meaning in jobs.h, and the SG_STORE_E* codes below. Logging goes through
 * the params' log callback only; nothing here prints, exits or aborts, whatever Redis answers.
 *
 * Threads: every call may come from any thread, except sg_store_free. Watch callbacks run on the job manager's
 * worker threads (local) or on the store's dispatcher thread (redis); they may call any sg_store_* function except
 * sg_store_free and sg_store_unwatch of another watch.
 */
#ifndef SG_STORE_H
#define SG_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "jobs.h"
#include "model.h"

#ifdef __cplusplus
extern "C" {
#endif

enum {
  SG_STORE_EUNAVAILABLE = -20, /* Redis cannot be reached or failed: try again later (503 with Retry-After) */
  SG_STORE_ECONFLICT = -21,    /* an Idempotency-Key reused with another request */
  SG_STORE_EBADDATA = -22,     /* the job's record in Redis is malformed (a truncated entry, a wrong type) */
  SG_STORE_EUNSUPPORTED = -23, /* the store cannot do that (a Last-Event-ID on a local store) */
};

/* Longest Idempotency-Key (bytes of printable ASCII). */
#define SG_STORE_MAX_IDEM_KEY 200

typedef struct sg_store sg_store;
typedef struct sg_store_watcher sg_store_watcher;

/* An event of a watched job (as sg_jobs' watch) and its id in the job's event stream ("1700000000000-0"), or NULL
 * when the store has no ids (local). */
typedef void (*sg_store_watch_fn)(void *user, const sg_job_event *ev, const char *event_id);

typedef struct {
  const char *idempotency_key; /* NULL or "": none; else a retried submit with the same key and request returns the
                                  first job, with another request SG_STORE_ECONFLICT (redis only) */
  int seed_random;             /* the seed was drawn for this request: left out of the idempotency comparison */
} sg_store_submit_opts;

typedef struct {
  const char *url;               /* "redis://HOST:PORT[/DB]" (redis:// only; no password in the URL: use a network
                                    policy, as docs/deploy.md explains) */
  int32_t max_queue;             /* jobs waiting in the whole cluster; 16. Beyond it, submit gets EFULL */
  double keep_finished_seconds;  /* TTL of a finished job's keys; 600 */
  double known_ids_seconds;      /* how long an expired id answers EEXPIRED rather than ENOTFOUND; 7 days */
  double idempotency_seconds;    /* TTL of an Idempotency-Key; 86400 */
  double lease_seconds;          /* a running job whose worker sent no heartbeat this long is reclaimed; 10 */
  double heartbeat_seconds;      /* a worker's heartbeat period (below lease_seconds); 2 */
  int32_t max_attempts;          /* a job that was started this many times without finishing ends failed; 3 */
  sg_jobs_log_fn log;            /* NULL: no logging */
  void *log_user;
} sg_store_redis_params;

/* Returns the defaults above (url NULL). */
sg_store_redis_params sg_store_redis_default_params(void);

/* A store over the job manager jobs (owned by the caller, which must keep it until sg_store_free). Returns NULL
 * when out of memory. */
sg_store *sg_store_local_new(sg_jobs *jobs);

/* A store in the Redis of p.url. It connects lazily: a Redis that is down now is not an error (sg_store_ready says
 * 0 until it answers). Returns NULL with a message in err for a bad URL or bad parameters, or out of memory. */
sg_store *sg_store_redis_new(sg_store_redis_params p, char *err, size_t errlen);

/* Stops the store's threads and frees it; watches not unwatched are freed too. NULL is ignored. */
void sg_store_free(sg_store *s);

/* Returns "local" or "redis". */
const char *sg_store_kind(const sg_store *s);

/* Returns 1 when the store can take work now (local: always; redis: its last command reached Redis), else 0. */
int sg_store_ready(sg_store *s);

/* Copies the model's description and a request holding its defaults (as sg_jobs_default_request) into *info and
 * *defaults. A redis store reads what a worker published (sg_store_worker_start). Returns 0, SG_JOBS_ENOTFOUND (no
 * worker has published one yet), SG_STORE_EUNAVAILABLE or SG_STORE_EBADDATA. */
int sg_store_model(sg_store *s, sg_model_info *info, sg_job_request *defaults);

/* Validates and stores a job and, when cb is not NULL, watches it from its first event (as sg_jobs_submit_watch):
 * with redis the job is in the stream, and in Redis's append-only file as its fsync policy says, before this
 * returns. id gets the job's id and *seed its seed (another job's, when an Idempotency-Key matched). Returns what
 * sg_jobs_submit returns, or SG_STORE_EUNAVAILABLE, SG_STORE_ECONFLICT; *w is NULL on failure or without cb. */
int sg_store_submit(sg_store *s, const sg_job_request *req, const sg_store_submit_opts *o, sg_store_watch_fn cb,
                    void *user, char id[SG_JOB_ID_LEN], int64_t *seed, sg_store_watcher **w, char *err, size_t errlen);

/* As sg_jobs_status (queue_position is the place in the whole cluster with redis). Returns 0, SG_JOBS_ENOTFOUND,
 * SG_JOBS_EEXPIRED, SG_STORE_EUNAVAILABLE or SG_STORE_EBADDATA. */
int sg_store_status(sg_store *s, const char *id, sg_job_status *out);

/* As sg_jobs_image (the caller frees *png). Returns 0, SG_JOBS_ENOTFOUND, SG_JOBS_EEXPIRED, SG_JOBS_ENOIMAGE,
 * SG_JOBS_ENOMEM, SG_STORE_EUNAVAILABLE or SG_STORE_EBADDATA. */
int sg_store_image(sg_store *s, const char *id, int32_t i, uint8_t **png, size_t *len);

/* As sg_jobs_cancel; with redis a running job is flagged and its worker stops it at its next step. Returns 0,
 * SG_JOBS_EFINISHED, SG_JOBS_ENOTFOUND, SG_JOBS_EEXPIRED, SG_STORE_EUNAVAILABLE or SG_STORE_EBADDATA. */
int sg_store_cancel(sg_store *s, const char *id);

/* Watches a job as sg_jobs_watch. after_event_id NULL: every event from now on (redis: every event of the job, in
 * order, the END last); else only those after that event id (redis only: SG_STORE_EUNSUPPORTED on local,
 * SG_JOBS_EINVAL when malformed). *w is freed by sg_store_unwatch (NULL when the END was delivered before this
 * returned, local). Returns 0, SG_JOBS_ENOTFOUND, SG_JOBS_EEXPIRED, SG_JOBS_EINVAL, SG_JOBS_ENOMEM or a store code. */
int sg_store_watch(sg_store *s, const char *id, const char *after_event_id, sg_store_watch_fn cb, void *user,
                   sg_store_watcher **w);

/* Stops a watch and frees it (NULL ignored); when it returns its callback is not running and never runs again
 * (from inside that callback: never again). */
void sg_store_unwatch(sg_store *s, sg_store_watcher *w);

/* sg_jobs_event_status and sg_jobs_event_image for an END event, from inside its callback. Return 0, SG_JOBS_EINVAL
 * (not an END event), SG_JOBS_ENOIMAGE, SG_JOBS_ENOMEM or a store code. */
int sg_store_event_status(sg_store *s, const sg_job_event *ev, sg_job_status *out);
int sg_store_event_image(sg_store *s, const sg_job_event *ev, int32_t i, uint8_t **png, size_t *len);

/* Fills *out as sg_jobs_stats_get; with redis only the cluster's figures (queued, running, workers alive,
 * max_queue). Returns 0 or a store code. */
int sg_store_stats(sg_store *s, sg_jobs_stats *out);

/* Returns extra Prometheus text (redis: queue depth, oldest queued job's age, running jobs, per-worker state,
 * whether Redis answers) in a new buffer the caller frees, or NULL when there is none or out of memory. */
char *sg_store_metrics_text(sg_store *s, const char *prefix);

/* ---- the worker side of cluster mode ---- */

typedef struct sg_store_worker sg_store_worker;

/* Starts the consumer of a redis store: it publishes the model (info, defaults as sg_jobs_default_request of jobs),
 * takes jobs from the stream through the consumer group while jobs (a local job manager, owned by the caller) has a
 * free worker, claims those of workers silent for lease_seconds, runs them on jobs, mirrors their progress and
 * stores their results, then acknowledges them. name identifies the worker (copied; NULL: host name and pid).
 * Returns NULL with a message in err (not a redis store, out of memory, no thread). */
sg_store_worker *sg_store_worker_start(sg_store *s, sg_jobs *jobs, const sg_model_info *info, const char *name,
                                       char *err, size_t errlen);

/* Stops taking jobs, waits up to timeout_s for the running ones to finish and store their results, gives the rest
 * back to the queue (another worker runs them at once), and frees w. NULL is ignored. Returns 0 when all finished,
 * SG_JOBS_ETIMEDOUT when some were given back. */
int sg_store_worker_stop(sg_store_worker *w, double timeout_s);

/* ---- the keys of OpenAI url results (GET /v1/images/files/{key}) ---- */

#define SG_STORE_FILE_KEY_LEN 33 /* 32 lowercase hex digits (128 random bits) and a NUL */
#define SG_STORE_LOCAL_FILES 4096 /* keys a local store keeps; beyond them the oldest is dropped (then unknown) */

/* Registers image index of job job_id, served until expires (Unix seconds), under a new random key written to key.
 * local: in this process's table (the newest SG_STORE_LOCAL_FILES keys). redis: the string sg:file:{key}, which any
 * frontend reads, living known_ids_seconds past expires so that an expired key answers EEXPIRED rather than
 * ENOTFOUND. Returns 0, SG_JOBS_EINVAL (not a job id, index out of range), SG_JOBS_ESYS (no random bytes),
 * SG_STORE_EUNAVAILABLE. */
int sg_store_file_put(sg_store *s, const char *job_id, int32_t index, double expires, char key[SG_STORE_FILE_KEY_LEN]);

/* Looks key up at time now (Unix seconds): 0 with the job's id and the image's index written; SG_JOBS_ENOTFOUND
 * (unknown, dropped, or not 32 lowercase hex digits: Redis is not asked); SG_JOBS_EEXPIRED with *expires (NULL
 * allowed) set to when it expired; SG_STORE_EUNAVAILABLE; SG_STORE_EBADDATA (what Redis holds under the key is not
 * such a record: the wrong type, a bad id, index or time). Local keys are compared in constant time. */
int sg_store_file_get(sg_store *s, const char *key, double now, char job_id[SG_JOB_ID_LEN], int32_t *index,
                      double *expires);

/* Returns a short text for an SG_STORE_E* or SG_JOBS_E* code (a static string). */
const char *sg_store_strerror(int code);

#ifdef __cplusplus
}
#endif

#endif
