/* The `redis` job store (store.h): jobs in a Redis stream with a consumer group, their records in hashes, progress in
 * per-job streams, PNGs in strings; a dispatcher thread that feeds watches from those streams; and the worker side
 * (sg_store_worker) that runs the stream's jobs on a local job manager. hiredis only here. */
#include "store.h"

#include <ctype.h>
#include <errno.h>
#include <hiredis/hiredis.h>
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "errbuf.h"
#include "store_impl.h"

#define POOL_MAX 16          /* idle connections kept */
#define BLOCK_MS 500         /* the dispatcher's XREAD block */
#define MAX_ARGS 128
#define STREAM_JOBS "sg:jobs"
#define GROUP "workers"
#define QUEUE "sg:queue"
#define WORKERS "sg:workers"
#define MODEL "sg:model"

typedef struct rwatch rwatch;

typedef struct {
  sg_store base;
  sg_store_redis_params p;
  char host[256];
  int port, db;
  pthread_mutex_t mu; /* the pool */
  redisContext *idle[POOL_MAX];
  int n_idle;
  atomic_int up;
  /* the dispatcher */
  pthread_mutex_t wmu; /* the watch list */
  rwatch *watches;
  pthread_mutex_t cbmu; /* held while the dispatcher runs callbacks */
  pthread_t disp;
  int disp_started;
  atomic_int stop;
  char wake_key[64];
  char wake_last[48];
  /* the cluster's worker count, for the queue limit (cached a second) */
  pthread_mutex_t cmu;
  double workers_at;
  int32_t workers_alive;
  int model_ok;
  double model_at;
  sg_model_info model;
  sg_job_request model_defaults;
} rstore;

struct rwatch {
  rwatch *next;
  char id[SG_JOB_ID_LEN];
  char key[64];  /* sg:job:{id}:ev */
  char last[48]; /* the last event id delivered */
  sg_store_watch_fn cb;
  void *user;
  int ended, dead;
};

static void logf_(rstore *s, sg_jobs_log_level level, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void logf_(rstore *s, sg_jobs_log_level level, const char *fmt, ...) {
  if (!s->p.log) return;
  char line[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(line, sizeof line, fmt, ap);
  va_end(ap);
  s->p.log(s->p.log_user, level, line);
}

static double wall_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

/* ---- connections ---- */

static redisContext *conn_new(rstore *s) {
  struct timeval tv = {1, 0};
  redisContext *c = redisConnectWithTimeout(s->host, s->port, tv);
  if (!c || c->err) {
    if (c) redisFree(c);
    return NULL;
  }
  struct timeval ct = {5, 0}; /* above BLOCK_MS: a blocked XREAD is not a timeout */
  redisSetTimeout(c, ct);
  if (s->db) {
    redisReply *r = redisCommand(c, "SELECT %d", s->db);
    int ok = r && r->type == REDIS_REPLY_STATUS;
    if (r) freeReplyObject(r);
    if (!ok) {
      redisFree(c);
      return NULL;
    }
  }
  return c;
}

static redisContext *conn_get(rstore *s) {
  redisContext *c = NULL;
  pthread_mutex_lock(&s->mu);
  if (s->n_idle) c = s->idle[--s->n_idle];
  pthread_mutex_unlock(&s->mu);
  if (!c) c = conn_new(s);
  if (!c) atomic_store(&s->up, 0);
  return c;
}

static void conn_put(rstore *s, redisContext *c) {
  if (!c) return;
  if (c->err) {
    redisFree(c);
    return;
  }
  pthread_mutex_lock(&s->mu);
  if (s->n_idle < POOL_MAX) {
    s->idle[s->n_idle++] = c;
    c = NULL;
  }
  pthread_mutex_unlock(&s->mu);
  if (c) redisFree(c);
}

/* Maps a reply to a code: 0 for a usable one; SG_STORE_EUNAVAILABLE for none (connection lost) or a Redis that
 * cannot serve now (LOADING after a restart, BUSY, READONLY, MASTERDOWN, OOM); SG_STORE_EBADDATA for WRONGTYPE;
 * SG_STORE_EUNAVAILABLE for any other error (a script error is Redis's, not the job's). */
static int reply_code(rstore *s, redisReply *r) {
  if (!r) {
    atomic_store(&s->up, 0);
    return SG_STORE_EUNAVAILABLE;
  }
  atomic_store(&s->up, 1);
  if (r->type != REDIS_REPLY_ERROR) return 0;
  if (!strncmp(r->str, "WRONGTYPE", 9)) return SG_STORE_EBADDATA;
  logf_(s, SG_JOBS_LOG_WARN, "redis: %s", r->str);
  return SG_STORE_EUNAVAILABLE;
}

/* Runs one command (argv with lengths: binary safe) on a pooled connection. Returns the reply (the caller frees it)
 * with *rc 0, or NULL with *rc a store code. */
static redisReply *run_argv(rstore *s, int argc, const char **argv, const size_t *len, int *rc) {
  redisContext *c = conn_get(s);
  if (!c) {
    *rc = SG_STORE_EUNAVAILABLE;
    return NULL;
  }
  redisReply *r = redisCommandArgv(c, argc, argv, len);
  conn_put(s, c);
  *rc = reply_code(s, r);
  if (*rc && r) {
    freeReplyObject(r);
    r = NULL;
  }
  return r;
}

static redisReply *run_fmt(rstore *s, int *rc, const char *fmt, ...) {
  redisContext *c = conn_get(s);
  if (!c) {
    *rc = SG_STORE_EUNAVAILABLE;
    return NULL;
  }
  va_list ap;
  va_start(ap, fmt);
  redisReply *r = redisvCommand(c, fmt, ap);
  va_end(ap);
  conn_put(s, c);
  *rc = reply_code(s, r);
  if (*rc && r) {
    freeReplyObject(r);
    r = NULL;
  }
  return r;
}

/* An argument list under construction (strings copied into a growing arena of small buffers). */
typedef struct {
  int n;
  const char *v[MAX_ARGS];
  size_t len[MAX_ARGS];
  char num[MAX_ARGS][40];
  int overflow;
} args;

static void arg_bin(args *a, const void *p, size_t n) {
  if (a->n >= MAX_ARGS) {
    a->overflow = 1;
    return;
  }
  a->v[a->n] = p;
  a->len[a->n++] = n;
}
static void arg_s(args *a, const char *s) { arg_bin(a, s ? s : "", s ? strlen(s) : 0); }
static void arg_fmt(args *a, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void arg_fmt(args *a, const char *fmt, ...) {
  if (a->n >= MAX_ARGS) {
    a->overflow = 1;
    return;
  }
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(a->num[a->n], sizeof a->num[a->n], fmt, ap);
  va_end(ap);
  arg_s(a, a->num[a->n]);
}

/* ---- reading replies defensively ---- */

static int is_job_id(const char *s) {
  if (!s || strlen(s) != SG_JOB_ID_LEN - 1) return 0;
  for (const char *p = s; *p; p++)
    if (!isdigit((unsigned char)*p) && !(*p >= 'a' && *p <= 'f')) return 0;
  return 1;
}

/* Whether s is a stream id "MS-SEQ" (digits, a dash, digits). */
static int is_stream_id(const char *s) {
  if (!s || !*s || strlen(s) > 41) return 0;
  const char *p = s;
  if (!isdigit((unsigned char)*p)) return 0;
  while (isdigit((unsigned char)*p)) p++;
  if (*p++ != '-' || !isdigit((unsigned char)*p)) return 0;
  while (isdigit((unsigned char)*p)) p++;
  return *p == 0;
}

/* A reply element as text: a string or a status; NULL otherwise. */
static const char *rstr(const redisReply *r) {
  return r && (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS) ? r->str : NULL;
}

static int parse_i64(const char *t, int64_t lo, int64_t hi, int64_t *out) {
  if (!t || !*t) return -1;
  char *e;
  errno = 0;
  long long v = strtoll(t, &e, 10);
  if (errno || *e || v < lo || v > hi) return -1;
  *out = v;
  return 0;
}

static int parse_f64(const char *t, double *out) {
  if (!t || !*t) return -1;
  char *e;
  errno = 0;
  double v = strtod(t, &e);
  if (errno || *e || !isfinite(v)) return -1;
  *out = v;
  return 0;
}

static int state_of(const char *t, sg_job_state *out) {
  for (int k = SG_JOB_QUEUED; k <= SG_JOB_CANCELLED; k++)
    if (t && !strcmp(t, sg_job_state_name((sg_job_state)k))) {
      *out = (sg_job_state)k;
      return 0;
    }
  return -1;
}

static int error_of(const char *t, sg_job_error *out) {
  for (int k = SG_JOB_ERR_NONE; k <= SG_JOB_ERR_SHUTDOWN; k++)
    if (t && !strcmp(t, sg_job_error_name((sg_job_error)k))) {
      *out = (sg_job_error)k;
      return 0;
    }
  return -1;
}

/* ---- the job's status fields ---- */

static const char *const STATUS_FIELDS[] = {
    "state",  "step",   "total",    "worker",     "created", "started", "finished", "error",        "message",
    "n",      "n_ready", "seed",    "t_text",     "t_vae_encode", "t_unet", "t_guided", "t_lgp", "t_backward",
    "t_sampler", "t_vae_decode", "t_total", "guided_steps",
};
enum { F_STATE, F_STEP, F_TOTAL, F_WORKER, F_CREATED, F_STARTED, F_FINISHED, F_ERROR, F_MESSAGE, F_N, F_N_READY,
       F_SEED, F_T0, F_GUIDED = F_T0 + 9, N_STATUS_FIELDS };

/* Fills *out from an HMGET of STATUS_FIELDS. Returns 0 or SG_STORE_EBADDATA (a required field missing or
 * malformed; the optional ones default to 0). */
static int status_from(const char *id, const redisReply *h, int64_t rank, sg_job_status *out) {
  memset(out, 0, sizeof *out);
  snprintf(out->id, sizeof out->id, "%s", id);
  if (!h || h->type != REDIS_REPLY_ARRAY || h->elements != N_STATUS_FIELDS) return SG_STORE_EBADDATA;
  const char *f[N_STATUS_FIELDS];
  for (int i = 0; i < N_STATUS_FIELDS; i++) f[i] = rstr(h->element[i]);
  int64_t v;
  double d;
  if (state_of(f[F_STATE], &out->state)) return SG_STORE_EBADDATA;
  if (parse_i64(f[F_TOTAL], 1, 1000000, &v)) return SG_STORE_EBADDATA;
  out->total = (int32_t)v;
  if (parse_i64(f[F_N], 1, SG_JOBS_MAX_IMAGES, &v)) return SG_STORE_EBADDATA;
  out->n_images = (int32_t)v;
  if (parse_i64(f[F_SEED], 0, INT64_MAX, &out->seed)) return SG_STORE_EBADDATA;
  if (parse_f64(f[F_CREATED], &out->created)) return SG_STORE_EBADDATA;
  out->step = f[F_STEP] && !parse_i64(f[F_STEP], 0, out->total, &v) ? (int32_t)v : 0;
  out->worker = f[F_WORKER] && !parse_i64(f[F_WORKER], 0, 1 << 20, &v) ? (int32_t)v : -1;
  if (f[F_STARTED] && !parse_f64(f[F_STARTED], &d)) out->started = d;
  if (f[F_FINISHED] && !parse_f64(f[F_FINISHED], &d)) out->finished = d;
  out->error = SG_JOB_ERR_NONE;
  if (f[F_ERROR] && *f[F_ERROR] && error_of(f[F_ERROR], &out->error)) return SG_STORE_EBADDATA;
  snprintf(out->message, sizeof out->message, "%s", f[F_MESSAGE] ? f[F_MESSAGE] : "");
  out->n_ready = f[F_N_READY] && !parse_i64(f[F_N_READY], 0, out->n_images, &v) ? (int32_t)v : 0;
  if (out->state != SG_JOB_SUCCEEDED) out->n_ready = 0;
  double *t[9] = {&out->timings.text,     &out->timings.vae_encode, &out->timings.unet,
                  &out->timings.guided_forward, &out->timings.lgp, &out->timings.backward,
                  &out->timings.sampler,  &out->timings.vae_decode, &out->timings.total};
  for (int i = 0; i < 9; i++)
    if (f[F_T0 + i] && !parse_f64(f[F_T0 + i], &d)) *t[i] = d;
  if (f[F_GUIDED] && !parse_i64(f[F_GUIDED], 0, 1000000, &v)) out->guided_steps = (int32_t)v;
  double now = wall_now();
  double start = out->started > 0 ? out->started : 0;
  double end = out->finished > 0 ? out->finished : now;
  out->queue_ms = ((start > 0 ? start : end) - out->created) * 1000.0;
  if (out->queue_ms < 0) out->queue_ms = 0;
  out->inference_ms = start > 0 ? (end - start) * 1000.0 : 0;
  if (out->inference_ms < 0) out->inference_ms = 0;
  out->queue_position = out->state == SG_JOB_QUEUED && rank >= 0 ? (int32_t)rank : -1;
  return 0;
}

/* The status read: the hash's status fields, its rank in the queue, and whether the id existed. */
static const char LUA_STATUS[] =
    "local t = redis.call('TYPE', KEYS[1]).ok\n"
    "if t == 'none' then return {0, redis.call('EXISTS', KEYS[3])} end\n"
    "if t ~= 'hash' then return {2} end\n"
    "local h = redis.call('HMGET', KEYS[1], unpack(ARGV, 2))\n"
    "local r = redis.call('ZRANK', KEYS[2], ARGV[1])\n"
    "return {1, h, r or -1}\n";

static int r_status(sg_store *b, const char *id, sg_job_status *out) {
  rstore *s = (rstore *)b;
  if (!is_job_id(id)) return SG_JOBS_ENOTFOUND;
  char k1[64], k3[64];
  snprintf(k1, sizeof k1, "sg:job:%s", id);
  snprintf(k3, sizeof k3, "sg:known:%s", id);
  args a = {0};
  arg_s(&a, "EVAL");
  arg_s(&a, LUA_STATUS);
  arg_s(&a, "3");
  arg_s(&a, k1);
  arg_s(&a, QUEUE);
  arg_s(&a, k3);
  arg_s(&a, id);
  for (int i = 0; i < N_STATUS_FIELDS; i++) arg_s(&a, STATUS_FIELDS[i]);
  int rc;
  redisReply *r = run_argv(s, a.n, a.v, a.len, &rc);
  if (!r) return rc;
  rc = SG_STORE_EBADDATA;
  if (r->type == REDIS_REPLY_ARRAY && r->elements >= 1 && r->element[0]->type == REDIS_REPLY_INTEGER) {
    long long kind = r->element[0]->integer;
    if (kind == 0 && r->elements == 2)
      rc = r->element[1]->type == REDIS_REPLY_INTEGER && r->element[1]->integer ? SG_JOBS_EEXPIRED
                                                                                 : SG_JOBS_ENOTFOUND;
    else if (kind == 1 && r->elements == 3 && r->element[2]->type == REDIS_REPLY_INTEGER)
      rc = status_from(id, r->element[1], r->element[2]->integer, out);
  }
  freeReplyObject(r);
  if (rc == SG_STORE_EBADDATA) logf_(s, SG_JOBS_LOG_WARN, "%s: job %s: its record in Redis is malformed", __func__, id);
  return rc;
}

/* ---- submit ---- */

static const char LUA_SUBMIT[] =
    /* KEYS: job, stream, queue, idem (or ""), known. ARGV: id, limit, now, idem ttl, fingerprint, job ttl, known ttl,
     * then the hash's fields and values */
    "if KEYS[4] ~= '' then\n"
    "  local v = redis.call('GET', KEYS[4])\n"
    "  if v then return {'dup', v} end\n"
    "end\n"
    "if redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[2]) then return {'full'} end\n"
    "redis.call('HSET', KEYS[1], unpack(ARGV, 8))\n"
    "redis.call('EXPIRE', KEYS[1], ARGV[6])\n"
    "redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])\n"
    "redis.call('XADD', KEYS[2], '*', 'id', ARGV[1])\n"
    "redis.call('SET', KEYS[5], '1', 'EX', ARGV[7])\n"
    "if KEYS[4] ~= '' then redis.call('SET', KEYS[4], ARGV[5] .. ' ' .. ARGV[1], 'EX', ARGV[4]) end\n"
    "return {'ok'}\n";

static uint64_t fnv(uint64_t h, const void *p, size_t n) {
  const uint8_t *b = p;
  for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 0x100000001b3ULL;
  return h;
}

/* The request's fingerprint for Idempotency-Key (32 hex digits): every parameter, but the seed when it was drawn. */
static void fingerprint(const sg_job_request *q, int seed_random, int32_t map_n, char out[33]) {
  uint64_t h[2] = {0xcbf29ce484222325ULL, 0x84222325cbf29ce4ULL};
  char num[256];
  for (int k = 0; k < 2; k++) {
    h[k] = fnv(h[k], q->prompt, strlen(q->prompt) + 1);
    h[k] = fnv(h[k], q->negative_prompt ? q->negative_prompt : "", strlen(q->negative_prompt ? q->negative_prompt : "") + 1);
    if (q->sketch) h[k] = fnv(h[k], q->sketch, (size_t)map_n * sizeof *q->sketch);
    int n = snprintf(num, sizeof num, "%d|%.17g|%.17g|%d|%d|%.17g|%lld|%d|%.17g|%d|%s|", q->sketch != NULL, q->beta,
                     q->stop, (int)q->stop_step, (int)q->steps, q->cfg, seed_random ? -1LL : (long long)q->seed,
                     (int)q->sampler, q->eta, (int)q->n_images, q->model_name ? q->model_name : "");
    h[k] = fnv(h[k], num, (size_t)n);
    for (int32_t i = 0; i < 2 * q->n_extra_text; i++)
      h[k] = fnv(h[k], q->extra_text[i], strlen(q->extra_text[i]) + 1);
  }
  snprintf(out, 33, "%016llx%016llx", (unsigned long long)h[0], (unsigned long long)h[1]);
}

static int new_id(char id[SG_JOB_ID_LEN]) { return sg_jobs_random_id(id) ? SG_JOBS_ESYS : 0; }

/* The number of workers whose heartbeat is recent (cached a second); -1 when Redis cannot say. */
static int32_t workers_alive(rstore *s) {
  double now = wall_now();
  pthread_mutex_lock(&s->cmu);
  if (now - s->workers_at < 1.0) {
    int32_t n = s->workers_alive;
    pthread_mutex_unlock(&s->cmu);
    return n;
  }
  pthread_mutex_unlock(&s->cmu);
  int rc;
  redisReply *r = run_fmt(s, &rc, "HGETALL %s", WORKERS);
  if (!r) return -1;
  int32_t n = 0;
  if (r->type == REDIS_REPLY_ARRAY)
    for (size_t i = 1; i < r->elements; i += 2) {
      json_t *j = rstr(r->element[i]) ? json_loads(r->element[i]->str, 0, NULL) : NULL;
      double t = j ? json_number_value(json_object_get(j, "t")) : 0;
      if (now - t < s->p.lease_seconds) n++;
      json_decref(j);
    }
  freeReplyObject(r);
  pthread_mutex_lock(&s->cmu);
  s->workers_at = now;
  s->workers_alive = n;
  pthread_mutex_unlock(&s->cmu);
  return n;
}

static int r_watch(sg_store *b, const char *id, const char *after, sg_store_watch_fn cb, void *user,
                   sg_store_watcher **w);

static int r_submit(sg_store *b, const sg_job_request *q, const sg_store_submit_opts *o, sg_store_watch_fn cb,
                    void *user, char id[SG_JOB_ID_LEN], int64_t *seed, sg_store_watcher **w, char *err, size_t errlen) {
  rstore *s = (rstore *)b;
  if (!q || !q->prompt) {
    sg_set_err(err, errlen, "prompt: required");
    return SG_JOBS_EINVAL;
  }
  if (q->n_images < 1 || q->n_images > SG_JOBS_MAX_IMAGES || q->steps < 1 || q->seed < 0 || q->n_extra_text < 0 ||
      q->n_extra_text > SG_JOBS_MAX_EXTRA_TEXT) {
    sg_set_err(err, errlen, "bad request parameters");
    return SG_JOBS_EINVAL;
  }
  const char *key = o->idempotency_key && *o->idempotency_key ? o->idempotency_key : NULL;
  int rc = new_id(id);
  if (rc) return rc;
  /* the sketch's size is the model's: the frontend knows it from the published model (h->model->image_size) */
  sg_model_info info;
  sg_job_request dflt;
  int32_t map_n = 0;
  if (q->sketch) {
    if (sg_store_model(b, &info, &dflt)) {
      sg_set_err(err, errlen, "no worker has published its model yet");
      return SG_STORE_EUNAVAILABLE;
    }
    map_n = info.image_size * info.image_size;
  }
  char fp[33];
  fingerprint(q, o->seed_random, map_n, fp);
  int32_t alive = workers_alive(s);
  if (alive < 0) return SG_STORE_EUNAVAILABLE;
  double now = wall_now();
  double deadline_wall = 0;
  if (q->deadline > 0) deadline_wall = now + (q->deadline - sg_jobs_now());
  char k_job[64], k_idem[16 + 2 * SG_STORE_MAX_IDEM_KEY], k_known[64];
  snprintf(k_job, sizeof k_job, "sg:job:%s", id);
  snprintf(k_known, sizeof k_known, "sg:known:%s", id);
  if (key) snprintf(k_idem, sizeof k_idem, "sg:idem:%s", key);
  double ttl = (deadline_wall > 0 ? deadline_wall - now : 86400) + s->p.keep_finished_seconds + 3600;
  args a = {0};
  arg_s(&a, "EVAL");
  arg_s(&a, LUA_SUBMIT);
  arg_s(&a, "5");
  arg_s(&a, k_job);
  arg_s(&a, STREAM_JOBS);
  arg_s(&a, QUEUE);
  arg_s(&a, key ? k_idem : "");
  arg_s(&a, k_known);
  arg_s(&a, id);
  arg_fmt(&a, "%d", (int)(s->p.max_queue + alive));
  arg_fmt(&a, "%.3f", now * 1000.0);
  arg_fmt(&a, "%.0f", s->p.idempotency_seconds);
  arg_s(&a, fp);
  arg_fmt(&a, "%.0f", ttl);
  arg_fmt(&a, "%.0f", s->p.known_ids_seconds);
#define FIELD(name, ...) (arg_s(&a, name), arg_fmt(&a, __VA_ARGS__))
  FIELD("state", "queued");
  FIELD("step", "0");
  FIELD("total", "%d", (int)q->steps);
  FIELD("n", "%d", (int)q->n_images);
  FIELD("seed", "%lld", (long long)q->seed);
  FIELD("created", "%.6f", now);
  FIELD("attempts", "0");
  FIELD("beta", "%.17g", q->beta);
  FIELD("stop", "%.17g", q->stop);
  FIELD("stop_step", "%d", (int)q->stop_step);
  FIELD("steps", "%d", (int)q->steps);
  FIELD("cfg", "%.17g", q->cfg);
  FIELD("sampler", "%d", (int)q->sampler);
  FIELD("eta", "%.17g", q->eta);
  FIELD("deadline", "%.6f", deadline_wall);
  FIELD("n_extra", "%d", (int)q->n_extra_text);
  FIELD("fp", "%s", fp);
#undef FIELD
  arg_s(&a, "prompt");
  arg_s(&a, q->prompt);
  arg_s(&a, "negative_prompt");
  arg_s(&a, q->negative_prompt ? q->negative_prompt : "");
  if (q->model_name) {
    arg_s(&a, "model_name");
    arg_s(&a, q->model_name);
  }
  if (q->sketch) {
    arg_s(&a, "sketch");
    arg_bin(&a, q->sketch, (size_t)map_n * sizeof *q->sketch);
  }
  for (int32_t i = 0; i < q->n_extra_text; i++) {
    arg_fmt(&a, "xk%d", (int)i);
    arg_s(&a, q->extra_text[2 * i]);
    arg_fmt(&a, "xv%d", (int)i);
    arg_s(&a, q->extra_text[2 * i + 1]);
  }
  if (a.overflow) return SG_JOBS_EINVAL;
  /* the watch first, so that no event can pass before it (it reads the job's events from the start) */
  if (cb && (rc = r_watch(b, id, NULL, cb, user, w))) return rc;
  redisReply *r = run_argv(s, a.n, a.v, a.len, &rc);
  const char *verdict = r && r->type == REDIS_REPLY_ARRAY && r->elements >= 1 ? rstr(r->element[0]) : NULL;
  if (r && !verdict) rc = SG_STORE_EUNAVAILABLE;
  if (verdict && !strcmp(verdict, "ok")) {
    if (seed) *seed = q->seed;
    rc = 0;
  } else if (verdict && !strcmp(verdict, "full")) {
    sg_set_err(err, errlen, "the cluster's queue is full (%d jobs waiting)", (int)(s->p.max_queue + alive));
    rc = SG_JOBS_EFULL;
  } else if (verdict && !strcmp(verdict, "dup") && r->elements == 2 && rstr(r->element[1])) {
    const char *v = r->element[1]->str; /* "fingerprint id" */
    if (strlen(v) != 33 + SG_JOB_ID_LEN - 1 || v[32] != ' ' || !is_job_id(v + 33)) {
      rc = SG_STORE_EBADDATA;
    } else if (strncmp(v, fp, 32)) {
      sg_set_err(err, errlen, "Idempotency-Key: already used with another request (job %s)", v + 33);
      rc = SG_STORE_ECONFLICT;
    } else {
      memcpy(id, v + 33, SG_JOB_ID_LEN);
      sg_job_status st;
      rc = r_status(b, id, &st);
      if (!rc && seed) *seed = st.seed;
      if (!rc && cb) { /* watch the first job instead */
        sg_store_unwatch(b, *w);
        *w = NULL;
        rc = r_watch(b, id, NULL, cb, user, w);
      }
    }
  }
  if (r) freeReplyObject(r);
  if (rc && cb && *w) {
    sg_store_unwatch(b, *w);
    *w = NULL;
  }
  return rc;
}

/* ---- image, cancel ---- */

static int r_image(sg_store *b, const char *id, int32_t i, uint8_t **png, size_t *len) {
  rstore *s = (rstore *)b;
  if (!is_job_id(id)) return SG_JOBS_ENOTFOUND;
  int rc;
  sg_job_status st;
  if (i < 0 || i >= SG_JOBS_MAX_IMAGES) {
    rc = r_status(b, id, &st);
    return rc ? rc : SG_JOBS_ENOIMAGE;
  }
  redisReply *r = run_fmt(s, &rc, "GET sg:job:%s:img:%d", id, (int)i);
  if (!r) return rc;
  if (r->type == REDIS_REPLY_STRING && r->len >= 8 && !memcmp(r->str, "\x89PNG\r\n\x1a\n", 8)) {
    *png = malloc(r->len);
    if (!*png) {
      freeReplyObject(r);
      return SG_JOBS_ENOMEM;
    }
    memcpy(*png, r->str, r->len);
    *len = r->len;
    freeReplyObject(r);
    return 0;
  }
  int bad = r->type != REDIS_REPLY_NIL;
  freeReplyObject(r);
  rc = r_status(b, id, &st);
  if (rc) return rc;
  if (bad && st.state == SG_JOB_SUCCEEDED && i < st.n_ready) return SG_STORE_EBADDATA;
  return SG_JOBS_ENOIMAGE;
}

static const char LUA_CANCEL[] =
    /* KEYS: job, queue, ev. ARGV: id, now, ttl */
    "local t = redis.call('TYPE', KEYS[1]).ok\n"
    "if t == 'none' then return 'missing' end\n"
    "if t ~= 'hash' then return 'bad' end\n"
    "local st = redis.call('HGET', KEYS[1], 'state')\n"
    "if st == 'queued' then\n"
    "  local total = redis.call('HGET', KEYS[1], 'total') or '0'\n"
    "  redis.call('HSET', KEYS[1], 'state', 'cancelled', 'error', 'cancelled', 'message', 'cancelled while queued',\n"
    "             'finished', ARGV[2], 'n_ready', '0')\n"
    "  redis.call('ZREM', KEYS[2], ARGV[1])\n"
    "  redis.call('XADD', KEYS[3], '*', 'kind', 'end', 'state', 'cancelled', 'step', '0', 'total', total,\n"
    "             'error', 'cancelled', 'message', 'cancelled while queued', 'n', '0')\n"
    "  redis.call('EXPIRE', KEYS[1], ARGV[3])\n"
    "  redis.call('EXPIRE', KEYS[3], ARGV[3])\n"
    "  return 'done'\n"
    "elseif st == 'running' then\n"
    "  redis.call('HSET', KEYS[1], 'cancel', '1')\n"
    "  return 'flagged'\n"
    "elseif st == 'succeeded' or st == 'failed' or st == 'cancelled' then return 'finished' end\n"
    "return 'bad'\n";

static int r_cancel(sg_store *b, const char *id) {
  rstore *s = (rstore *)b;
  if (!is_job_id(id)) return SG_JOBS_ENOTFOUND;
  char k1[64], k3[64], now[32], ttl[32];
  snprintf(k1, sizeof k1, "sg:job:%s", id);
  snprintf(k3, sizeof k3, "sg:job:%s:ev", id);
  snprintf(now, sizeof now, "%.6f", wall_now());
  snprintf(ttl, sizeof ttl, "%.0f", s->p.keep_finished_seconds);
  const char *argv[] = {"EVAL", LUA_CANCEL, "3", k1, QUEUE, k3, id, now, ttl};
  size_t len[9];
  for (int i = 0; i < 9; i++) len[i] = strlen(argv[i]);
  int rc;
  redisReply *r = run_argv(s, 9, argv, len, &rc);
  if (!r) return rc;
  const char *v = rstr(r);
  rc = !v ? SG_STORE_EBADDATA
       : !strcmp(v, "done") || !strcmp(v, "flagged") ? 0
       : !strcmp(v, "finished")                       ? SG_JOBS_EFINISHED
       : !strcmp(v, "missing")                        ? 1
                                                      : SG_STORE_EBADDATA;
  freeReplyObject(r);
  if (rc == 1) { /* expired or never existed */
    sg_job_status st;
    rc = r_status(b, id, &st);
    if (rc == 0) rc = SG_STORE_EBADDATA; /* appeared meanwhile: cannot be */
  }
  return rc;
}

/* ---- watches and the dispatcher ---- */

static int r_watch(sg_store *b, const char *id, const char *after, sg_store_watch_fn cb, void *user,
                   sg_store_watcher **w) {
  rstore *s = (rstore *)b;
  if (!is_job_id(id)) return SG_JOBS_ENOTFOUND;
  if (after && !is_stream_id(after)) return SG_JOBS_EINVAL;
  rwatch *x = calloc(1, sizeof *x);
  if (!x) return SG_JOBS_ENOMEM;
  memcpy(x->id, id, SG_JOB_ID_LEN);
  snprintf(x->key, sizeof x->key, "sg:job:%s:ev", id);
  snprintf(x->last, sizeof x->last, "%s", after ? after : "0-0");
  x->cb = cb;
  x->user = user;
  pthread_mutex_lock(&s->wmu);
  x->next = s->watches;
  s->watches = x;
  pthread_mutex_unlock(&s->wmu);
  *w = (sg_store_watcher *)x;
  int rc;
  redisReply *r = run_fmt(s, &rc, "XADD %s MAXLEN ~ 16 * w 1", s->wake_key); /* wakes the dispatcher's XREAD */
  if (r) freeReplyObject(r);
  return 0;
}

static void r_unwatch(sg_store *b, sg_store_watcher *w) {
  rstore *s = (rstore *)b;
  rwatch *x = (rwatch *)w;
  pthread_mutex_lock(&s->wmu);
  for (rwatch **p = &s->watches; *p; p = &(*p)->next)
    if (*p == x) {
      *p = x->next;
      break;
    }
  x->dead = 1;
  pthread_mutex_unlock(&s->wmu);
  if (!s->disp_started || !pthread_equal(pthread_self(), s->disp)) {
    pthread_mutex_lock(&s->cbmu); /* a callback in progress ends first */
    pthread_mutex_unlock(&s->cbmu);
    free(x);
  } else {
    x->cb = NULL; /* from inside a callback: freed by the dispatcher after it */
  }
}

/* Builds a job event from a stream entry's fields. Returns 0 or -1 when the entry is malformed. */
static int event_from(const char *id, const redisReply *fv, sg_job_event *ev, char *msg, size_t msgcap) {
  memset(ev, 0, sizeof *ev);
  ev->id = id;
  ev->message = "";
  if (!fv || fv->type != REDIS_REPLY_ARRAY || fv->elements % 2) return -1;
  const char *kind = NULL, *state = NULL, *step = NULL, *total = NULL, *error = NULL, *message = NULL, *n = NULL;
  for (size_t i = 0; i + 1 < fv->elements; i += 2) {
    const char *k = rstr(fv->element[i]), *v = rstr(fv->element[i + 1]);
    if (!k || !v) return -1;
    if (!strcmp(k, "kind")) kind = v;
    else if (!strcmp(k, "state")) state = v;
    else if (!strcmp(k, "step")) step = v;
    else if (!strcmp(k, "total")) total = v;
    else if (!strcmp(k, "error")) error = v;
    else if (!strcmp(k, "message")) message = v;
    else if (!strcmp(k, "n")) n = v;
  }
  int64_t a, t, k;
  if (!kind || state_of(state, &ev->state) || parse_i64(step, 0, 1000000, &a) || parse_i64(total, 0, 1000000, &t))
    return -1;
  ev->step = (int32_t)a;
  ev->total = (int32_t)t;
  if (!strcmp(kind, "progress")) {
    ev->kind = SG_JOB_EVENT_PROGRESS;
    return 0;
  }
  if (strcmp(kind, "end")) return -1;
  ev->kind = SG_JOB_EVENT_END;
  ev->error = SG_JOB_ERR_NONE;
  if (error && *error && error_of(error, &ev->error)) return -1;
  if (parse_i64(n, 0, SG_JOBS_MAX_IMAGES, &k)) return -1;
  ev->n_images = (int32_t)k;
  snprintf(msg, msgcap, "%s", message ? message : "");
  ev->message = msg;
  return 0;
}

/* Delivers one stream entry to every live watch of the job; the dispatcher holds cbmu. */
static void deliver(rstore *s, const char *key, const redisReply *entry) {
  if (!entry || entry->type != REDIS_REPLY_ARRAY || entry->elements != 2 || !rstr(entry->element[0])) return;
  const char *eid = entry->element[0]->str;
  char job[SG_JOB_ID_LEN] = "";
  if (strlen(key) == 7 + SG_JOB_ID_LEN - 1 + 3) memcpy(job, key + 7, SG_JOB_ID_LEN - 1);
  sg_job_event ev;
  char msg[256];
  int bad = event_from(job, entry->element[1], &ev, msg, sizeof msg);
  if (bad) { /* a hostile or truncated entry: the watchers get a failed END rather than nothing */
    logf_(s, SG_JOBS_LOG_WARN, "%s: job %s: malformed event %s; ending its watches", __func__, job, eid);
    memset(&ev, 0, sizeof ev);
    ev.kind = SG_JOB_EVENT_END;
    ev.id = job;
    ev.state = SG_JOB_FAILED;
    ev.error = SG_JOB_ERR_RUNTIME;
    ev.message = "the job's event stream in Redis is malformed";
  }
  for (;;) { /* one watch at a time, the list re-read each time: callbacks may add or remove watches */
    rwatch *x = NULL;
    pthread_mutex_lock(&s->wmu);
    for (rwatch *p = s->watches; p; p = p->next)
      if (!p->dead && !p->ended && !strcmp(p->key, key) && strcmp(p->last, eid) != 0) {
        /* stream ids grow: deliver to those behind this entry */
        unsigned long long a1 = 0, a2 = 0, b1 = 0, b2 = 0;
        sscanf(p->last, "%llu-%llu", &a1, &a2);
        sscanf(eid, "%llu-%llu", &b1, &b2);
        if (b1 > a1 || (b1 == a1 && b2 > a2)) {
          x = p;
          break;
        }
      }
    if (x) {
      snprintf(x->last, sizeof x->last, "%s", eid);
      if (ev.kind == SG_JOB_EVENT_END) x->ended = 1;
    }
    pthread_mutex_unlock(&s->wmu);
    if (!x) break;
    x->cb(x->user, &ev, eid);
    if (!x->cb) free(x); /* unwatched from inside its callback */
  }
}

static void *dispatcher_main(void *arg) {
  rstore *s = arg;
  redisContext *c = NULL;
  int backoff = 0;
  while (!atomic_load(&s->stop)) {
    if (!c && !(c = conn_new(s))) {
      atomic_store(&s->up, 0);
      sleep_ms(backoff = backoff < 1000 ? backoff + 100 : 1000);
      continue;
    }
    /* XREAD over the wake stream and every watched job's stream */
    size_t cap = 8, n = 0;
    pthread_mutex_lock(&s->wmu);
    for (rwatch *x = s->watches; x; x = x->next)
      if (!x->dead && !x->ended) cap += 2;
    const char **argv = malloc(cap * sizeof *argv);
    size_t *len = malloc(cap * sizeof *len);
    char (*ids)[48] = malloc((cap / 2 + 1) * sizeof *ids);
    if (!argv || !len || !ids) {
      pthread_mutex_unlock(&s->wmu);
      free(argv), free(len), free(ids);
      sleep_ms(100);
      continue;
    }
    argv[n++] = "XREAD";
    argv[n++] = "COUNT";
    argv[n++] = "64";
    argv[n++] = "BLOCK";
    argv[n++] = "500";
    argv[n++] = "STREAMS";
    argv[n++] = s->wake_key;
    size_t k0 = n, nk = 1;
    for (rwatch *x = s->watches; x; x = x->next)
      if (!x->dead && !x->ended) argv[n++] = strdup(x->key), nk++;
    snprintf(ids[0], sizeof ids[0], "%s", s->wake_last);
    size_t i = 1;
    for (rwatch *x = s->watches; x; x = x->next)
      if (!x->dead && !x->ended) snprintf(ids[i++], sizeof ids[0], "%s", x->last);
    pthread_mutex_unlock(&s->wmu);
    for (size_t j = 0; j < nk; j++) argv[n++] = ids[j];
    for (size_t j = 0; j < n; j++) len[j] = strlen(argv[j]);
    redisReply *r = redisCommandArgv(c, (int)n, argv, len);
    int ok = reply_code(s, r) == 0;
    if (ok && r->type == REDIS_REPLY_ARRAY) {
      pthread_mutex_lock(&s->cbmu);
      for (size_t j = 0; j < r->elements; j++) {
        redisReply *st = r->element[j];
        if (st->type != REDIS_REPLY_ARRAY || st->elements != 2 || !rstr(st->element[0]) ||
            st->element[1]->type != REDIS_REPLY_ARRAY)
          continue;
        const char *key = st->element[0]->str;
        redisReply *entries = st->element[1];
        if (!strcmp(key, s->wake_key)) {
          if (entries->elements) {
            redisReply *last = entries->element[entries->elements - 1];
            if (last->type == REDIS_REPLY_ARRAY && last->elements >= 1 && rstr(last->element[0]))
              snprintf(s->wake_last, sizeof s->wake_last, "%s", last->element[0]->str);
          }
          continue;
        }
        for (size_t e = 0; e < entries->elements; e++) deliver(s, key, entries->element[e]);
      }
      pthread_mutex_unlock(&s->cbmu);
    }
    for (size_t j = k0; j < k0 + nk - 1; j++) free((void *)argv[j]);
    free(argv), free(len), free(ids);
    if (r) freeReplyObject(r);
    if (!ok || c->err) {
      redisFree(c);
      c = NULL;
      sleep_ms(backoff = backoff < 1000 ? backoff + 100 : 1000);
    } else {
      backoff = 0;
    }
  }
  if (c) redisFree(c);
  return NULL;
}

static int r_event_status(sg_store *b, const sg_job_event *ev, sg_job_status *out) {
  if (ev->kind != SG_JOB_EVENT_END) return SG_JOBS_EINVAL;
  return r_status(b, ev->id, out);
}

static int r_event_image(sg_store *b, const sg_job_event *ev, int32_t i, uint8_t **png, size_t *len) {
  if (ev->kind != SG_JOB_EVENT_END) return SG_JOBS_EINVAL;
  return r_image(b, ev->id, i, png, len);
}

/* ---- model, stats, metrics, readiness ---- */

static int r_ready(sg_store *b) {
  rstore *s = (rstore *)b;
  return atomic_load(&s->up);
}

static int r_model_read(rstore *s, sg_model_info *info, sg_job_request *d);

/* The published model, read again when the cached copy is older than 10 s. */
static int r_model(sg_store *b, sg_model_info *info, sg_job_request *d) {
  rstore *s = (rstore *)b;
  double now = wall_now();
  pthread_mutex_lock(&s->cmu);
  int fresh = s->model_ok && now - s->model_at < 10.0;
  if (fresh) {
    *info = s->model;
    *d = s->model_defaults;
  }
  pthread_mutex_unlock(&s->cmu);
  if (fresh) return 0;
  int rc = r_model_read(s, info, d);
  if (rc == 0) {
    pthread_mutex_lock(&s->cmu);
    s->model = *info;
    s->model_defaults = *d;
    s->model_ok = 1;
    s->model_at = now;
    pthread_mutex_unlock(&s->cmu);
  }
  return rc;
}

static int r_model_read(rstore *s, sg_model_info *info, sg_job_request *d) {
  int rc;
  redisReply *r = run_fmt(s, &rc, "GET %s", MODEL);
  if (!r) return rc;
  if (r->type == REDIS_REPLY_NIL) {
    freeReplyObject(r);
    return SG_JOBS_ENOTFOUND;
  }
  json_t *j = rstr(r) ? json_loads(r->str, 0, NULL) : NULL;
  freeReplyObject(r);
  memset(info, 0, sizeof *info);
  memset(d, 0, sizeof *d);
  json_t *v;
  const char *name = json_string_value(json_object_get(j, "name"));
  const char *dtype = json_string_value(json_object_get(j, "dtype"));
  const char *sampler = json_string_value(json_object_get(j, "sampler"));
  rc = SG_STORE_EBADDATA;
  if (j && name && dtype && sampler && json_is_integer(v = json_object_get(j, "image_size")) &&
      json_integer_value(v) >= 8 && json_integer_value(v) <= 4096 &&
      sg_sampler_kind_parse(sampler) >= 0 && json_is_integer(json_object_get(j, "steps")) &&
      json_integer_value(json_object_get(j, "steps")) >= 1) {
    snprintf(info->name, sizeof info->name, "%s", name);
    snprintf(info->dtype, sizeof info->dtype, "%s", dtype);
    info->image_size = (int32_t)json_integer_value(v);
    info->has_lgp = json_is_true(json_object_get(j, "has_lgp"));
    d->steps = (int32_t)json_integer_value(json_object_get(j, "steps"));
    d->cfg = json_number_value(json_object_get(j, "cfg"));
    d->beta = json_number_value(json_object_get(j, "beta"));
    d->stop = json_number_value(json_object_get(j, "stop"));
    d->eta = json_number_value(json_object_get(j, "eta"));
    d->sampler = (sg_sampler_kind)sg_sampler_kind_parse(sampler);
    d->stop_step = -1;
    d->n_images = 1;
    rc = 0;
  }
  json_decref(j);
  return rc;
}

static int r_stats(sg_store *b, sg_jobs_stats *out) {
  rstore *s = (rstore *)b;
  memset(out, 0, sizeof *out);
  int rc;
  redisReply *r = run_fmt(s, &rc, "ZCARD %s", QUEUE);
  if (!r) return rc;
  out->queued = r->type == REDIS_REPLY_INTEGER ? (int32_t)r->integer : 0;
  freeReplyObject(r);
  int32_t alive = workers_alive(s);
  out->workers = alive > 0 ? alive : 0;
  out->max_queue = s->p.max_queue;
  return 0;
}

static char *r_metrics_text(sg_store *b, const char *prefix) {
  rstore *s = (rstore *)b;
  int rc;
  double now = wall_now();
  long long depth = -1;
  double oldest = 0;
  redisReply *r = run_fmt(s, &rc, "ZCARD %s", QUEUE);
  if (r && r->type == REDIS_REPLY_INTEGER) depth = r->integer;
  if (r) freeReplyObject(r);
  r = depth > 0 ? run_fmt(s, &rc, "ZRANGE %s 0 0 WITHSCORES", QUEUE) : NULL;
  double t;
  if (r && r->type == REDIS_REPLY_ARRAY && r->elements == 2 && !parse_f64(rstr(r->element[1]), &t))
    oldest = now - t / 1000.0 > 0 ? now - t / 1000.0 : 0;
  if (r) freeReplyObject(r);
  char *text = NULL;
  size_t cap = 0;
  FILE *f = open_memstream(&text, &cap);
  if (!f) return NULL;
  fprintf(f, "# HELP %s_redis_up Whether the last command reached Redis.\n# TYPE %s_redis_up gauge\n%s_redis_up %d\n",
          prefix, prefix, prefix, atomic_load(&s->up));
  if (depth >= 0) {
    fprintf(f, "# HELP %s_cluster_queue_depth Jobs accepted and not yet started, in the whole cluster.\n"
               "# TYPE %s_cluster_queue_depth gauge\n%s_cluster_queue_depth %lld\n", prefix, prefix, prefix, depth);
    fprintf(f, "# HELP %s_cluster_oldest_queued_seconds Age of the oldest job not yet started (0 when none).\n"
               "# TYPE %s_cluster_oldest_queued_seconds gauge\n%s_cluster_oldest_queued_seconds %.3f\n",
            prefix, prefix, prefix, oldest);
  }
  r = run_fmt(s, &rc, "HGETALL %s", WORKERS);
  if (r && r->type == REDIS_REPLY_ARRAY) {
    fprintf(f, "# HELP %s_cluster_worker_up Whether a worker's heartbeat is recent (within lease_seconds).\n"
               "# TYPE %s_cluster_worker_up gauge\n", prefix, prefix);
    for (size_t i = 0; i + 1 < r->elements; i += 2) {
      const char *name = rstr(r->element[i]);
      json_t *j = rstr(r->element[i + 1]) ? json_loads(r->element[i + 1]->str, 0, NULL) : NULL;
      double hb = j ? json_number_value(json_object_get(j, "t")) : 0;
      char safe[64];
      size_t k = 0;
      for (const char *p = name ? name : ""; *p && k + 1 < sizeof safe; p++)
        safe[k++] = isalnum((unsigned char)*p) || *p == '-' || *p == '.' || *p == '_' ? *p : '_';
      safe[k] = 0;
      if (now - hb < 24 * 3600) /* workers gone a day ago are not listed */
        fprintf(f, "%s_cluster_worker_up{worker=\"%s\"} %d\n%s_cluster_worker_busy{worker=\"%s\"} %lld\n", prefix,
                safe, now - hb < s->p.lease_seconds, prefix, safe,
                (long long)(j ? json_integer_value(json_object_get(j, "busy")) : 0));
      json_decref(j);
    }
  }
  if (r) freeReplyObject(r);
  fclose(f);
  return text;
}

/* ---- the keys of url results ---- */

/* Parses the value of sg:file:{key}, "JOB_ID INDEX EXPIRES" (n bytes, binary: a NUL inside is refused). Returns 0 or
 * SG_STORE_EBADDATA. */
static int file_from(const char *v, size_t n, char job_id[SG_JOB_ID_LEN], int32_t *index, double *expires) {
  char buf[128];
  if (!v || n < SG_JOB_ID_LEN + 3 || n >= sizeof buf || memchr(v, 0, n)) return SG_STORE_EBADDATA;
  memcpy(buf, v, n);
  buf[n] = 0;
  char *sp1 = strchr(buf, ' '), *sp2 = sp1 ? strchr(sp1 + 1, ' ') : NULL;
  if (!sp1 || !sp2 || strchr(sp2 + 1, ' ')) return SG_STORE_EBADDATA;
  *sp1 = *sp2 = 0;
  int64_t i;
  double t;
  if (!is_job_id(buf) || parse_i64(sp1 + 1, 0, SG_JOBS_MAX_IMAGES - 1, &i) || parse_f64(sp2 + 1, &t))
    return SG_STORE_EBADDATA;
  memcpy(job_id, buf, SG_JOB_ID_LEN);
  *index = (int32_t)i;
  *expires = t;
  return 0;
}

static int r_file_put(sg_store *b, const char *key, const char *job_id, int32_t index, double expires) {
  rstore *s = (rstore *)b;
  double left = expires - wall_now();
  /* kept known_ids_seconds past its expiry: an expired key is 410, as an expired job id */
  double ttl = (left > 0 ? ceil(left) : 0) + s->p.known_ids_seconds;
  char v[96];
  snprintf(v, sizeof v, "%s %d %.3f", job_id, (int)index, expires);
  int rc;
  redisReply *r = run_fmt(s, &rc, "SET sg:file:%s %s EX %.0f", key, v, ttl); /* %s: one argument, spaces and all */
  if (!r) return rc;
  rc = r->type == REDIS_REPLY_STATUS ? 0 : SG_STORE_EUNAVAILABLE;
  freeReplyObject(r);
  return rc;
}

static int r_file_get(sg_store *b, const char *key, char job_id[SG_JOB_ID_LEN], int32_t *index, double *expires) {
  rstore *s = (rstore *)b;
  int rc;
  redisReply *r = run_fmt(s, &rc, "GET sg:file:%s", key);
  if (!r) {
    if (rc == SG_STORE_EBADDATA) logf_(s, SG_JOBS_LOG_WARN, "%s: sg:file:%.8s...: not a string", __func__, key);
    return rc;
  }
  rc = r->type == REDIS_REPLY_NIL      ? SG_JOBS_ENOTFOUND
       : r->type == REDIS_REPLY_STRING ? file_from(r->str, r->len, job_id, index, expires)
                                       : SG_STORE_EBADDATA;
  freeReplyObject(r);
  if (rc == SG_STORE_EBADDATA) logf_(s, SG_JOBS_LOG_WARN, "%s: sg:file:%.8s...: its record is malformed", __func__, key);
  return rc;
}

/* ---- construction ---- */

static void r_free(sg_store *b) {
  rstore *s = (rstore *)b;
  atomic_store(&s->stop, 1);
  if (s->disp_started) pthread_join(s->disp, NULL);
  while (s->watches) {
    rwatch *x = s->watches;
    s->watches = x->next;
    free(x);
  }
  for (int i = 0; i < s->n_idle; i++) redisFree(s->idle[i]);
  pthread_mutex_destroy(&s->mu);
  pthread_mutex_destroy(&s->wmu);
  pthread_mutex_destroy(&s->cbmu);
  pthread_mutex_destroy(&s->cmu);
  free(s);
}

static const sg_store_ops REDIS_OPS = {
    "redis",  r_free,   r_ready,  r_model,   r_submit,       r_status,      r_image,       r_cancel,
    r_watch,  r_unwatch, r_event_status, r_event_image, r_stats, r_metrics_text, r_file_put, r_file_get,
};

sg_store_redis_params sg_store_redis_default_params(void) {
  sg_store_redis_params p;
  memset(&p, 0, sizeof p);
  p.max_queue = 16;
  p.keep_finished_seconds = 600;
  p.known_ids_seconds = 7 * 86400;
  p.idempotency_seconds = 86400;
  p.lease_seconds = 10;
  p.heartbeat_seconds = 2;
  p.max_attempts = 3;
  return p;
}

/* Parses "redis://HOST[:PORT][/DB]" into s. Returns 0 or -1. */
static int parse_url(rstore *s, const char *url) {
  if (!url || strncmp(url, "redis://", 8)) return -1;
  const char *h = url + 8, *e = h;
  if (strchr(h, '@')) return -1; /* credentials are not taken from the URL */
  if (*h == '[') {
    e = strchr(h, ']');
    if (!e) return -1;
    if ((size_t)(e - h - 1) >= sizeof s->host) return -1;
    memcpy(s->host, h + 1, (size_t)(e - h - 1));
    s->host[e - h - 1] = 0;
    e++;
  } else {
    while (*e && *e != ':' && *e != '/') e++;
    if (e == h || (size_t)(e - h) >= sizeof s->host) return -1;
    memcpy(s->host, h, (size_t)(e - h));
    s->host[e - h] = 0;
  }
  s->port = 6379;
  if (*e == ':') {
    int64_t v;
    char num[8] = "";
    const char *p = ++e;
    while (*e && *e != '/') e++;
    if (e - p < 1 || e - p > 5) return -1;
    memcpy(num, p, (size_t)(e - p));
    if (parse_i64(num, 1, 65535, &v)) return -1;
    s->port = (int)v;
  }
  s->db = 0;
  if (*e == '/' && e[1]) {
    int64_t v;
    if (parse_i64(e + 1, 0, 15, &v)) return -1;
    s->db = (int)v;
  } else if (*e == '/' && !e[1]) {
    /* redis://host:port/ */
  } else if (*e) {
    return -1;
  }
  return 0;
}

sg_store *sg_store_redis_new(sg_store_redis_params p, char *err, size_t errlen) {
  if (p.max_queue < 0 || p.keep_finished_seconds < 1 || p.known_ids_seconds < p.keep_finished_seconds ||
      p.idempotency_seconds < 1 || p.heartbeat_seconds <= 0 || p.lease_seconds <= 2 * p.heartbeat_seconds ||
      p.max_attempts < 1) {
    sg_set_err(err, errlen, "redis: bad parameters (lease_seconds must exceed twice heartbeat_seconds)");
    return NULL;
  }
  rstore *s = calloc(1, sizeof *s);
  if (!s) {
    sg_set_err(err, errlen, "out of memory");
    return NULL;
  }
  if (parse_url(s, p.url)) {
    sg_set_err(err, errlen, "redis_url: '%s' is not redis://HOST[:PORT][/DB] (DB 0 to 15, no credentials)",
               p.url ? p.url : "");
    free(s);
    return NULL;
  }
  s->base.ops = &REDIS_OPS;
  s->p = p;
  s->p.url = NULL;
  pthread_mutex_init(&s->mu, NULL);
  pthread_mutex_init(&s->wmu, NULL);
  pthread_mutex_init(&s->cbmu, NULL);
  pthread_mutex_init(&s->cmu, NULL);
  s->workers_at = -1e9;
  char rid[SG_JOB_ID_LEN];
  if (new_id(rid)) {
    r_free(&s->base);
    sg_set_err(err, errlen, "no random bytes");
    return NULL;
  }
  snprintf(s->wake_key, sizeof s->wake_key, "sg:wake:%.16s", rid);
  snprintf(s->wake_last, sizeof s->wake_last, "$");
  redisContext *c = conn_new(s);
  if (c) {
    atomic_store(&s->up, 1);
    redisReply *r = redisCommand(c, "XADD %s MAXLEN ~ 16 * w 0", s->wake_key);
    if (r && r->type == REDIS_REPLY_STRING) snprintf(s->wake_last, sizeof s->wake_last, "%s", r->str);
    if (r) freeReplyObject(r);
    r = redisCommand(c, "EXPIRE %s 86400", s->wake_key);
    if (r) freeReplyObject(r);
    conn_put(s, c);
  }
  if (pthread_create(&s->disp, NULL, dispatcher_main, s)) {
    r_free(&s->base);
    sg_set_err(err, errlen, "cannot start the Redis dispatcher thread");
    return NULL;
  }
  s->disp_started = 1;
  return &s->base;
}

/* ---- the worker ---- */

typedef struct run run;
struct run {
  run *next;
  struct sg_store_worker *w;
  char id[SG_JOB_ID_LEN];
  char entry[48];
  char local[SG_JOB_ID_LEN];
  sg_job_watch *h;
  /* progress, mirrored into Redis by the mirror thread so that the engine never waits for a round trip (w->mu) */
  int32_t step_done, step_sent, total;
  int ended;
  pthread_mutex_t smu; /* held while this run's steps are sent (by the mirror thread or its END) */
};

struct sg_store_worker {
  rstore *s;
  sg_jobs *jobs;
  char name[128];
  int32_t slots;
  sg_model_info info;
  pthread_t loop, hb, mirror;
  int loop_started, hb_started, mirror_started;
  atomic_int stop, mirror_stop;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  pthread_cond_t mcv; /* a step is waiting to be mirrored */
  run *runs;
  int32_t n_runs;
};

static const char LUA_START[] =
    /* KEYS: job, queue, jobs stream, ev. ARGV: id, name, max attempts, now, entry, ttl */
    "local t = redis.call('TYPE', KEYS[1]).ok\n"
    "if t ~= 'hash' then\n"
    "  redis.call('XACK', KEYS[3], 'workers', ARGV[5]); redis.call('XDEL', KEYS[3], ARGV[5])\n"
    "  redis.call('ZREM', KEYS[2], ARGV[1])\n"
    "  if t == 'none' then return {'gone'} end\n"
    "  return {'bad'}\n"
    "end\n"
    "local st = redis.call('HGET', KEYS[1], 'state')\n"
    "if st ~= 'queued' and st ~= 'running' then\n"
    "  redis.call('XACK', KEYS[3], 'workers', ARGV[5]); redis.call('XDEL', KEYS[3], ARGV[5])\n"
    "  redis.call('ZREM', KEYS[2], ARGV[1])\n"
    "  return {'final'}\n"
    "end\n"
    "local a = redis.call('HINCRBY', KEYS[1], 'attempts', 1)\n"
    "if a > tonumber(ARGV[3]) then\n"
    "  local msg = 'the job was started ' .. (a - 1) .. ' times and its worker never finished it (it may crash workers)'\n"
    "  local total = redis.call('HGET', KEYS[1], 'total') or '0'\n"
    "  redis.call('HSET', KEYS[1], 'state', 'failed', 'error', 'runtime', 'message', msg, 'finished', ARGV[4],\n"
    "             'n_ready', '0')\n"
    "  redis.call('XADD', KEYS[4], '*', 'kind', 'end', 'state', 'failed', 'step', '0', 'total', total,\n"
    "             'error', 'runtime', 'message', msg, 'n', '0')\n"
    "  redis.call('EXPIRE', KEYS[1], ARGV[6]); redis.call('EXPIRE', KEYS[4], ARGV[6])\n"
    "  redis.call('XACK', KEYS[3], 'workers', ARGV[5]); redis.call('XDEL', KEYS[3], ARGV[5])\n"
    "  redis.call('ZREM', KEYS[2], ARGV[1])\n"
    "  return {'poison'}\n"
    "end\n"
    "redis.call('HSET', KEYS[1], 'state', 'running', 'owner', ARGV[2], 'started', ARGV[4], 'step', '0',\n"
    "           'entry', ARGV[5], 'worker', '0')\n"
    "redis.call('HDEL', KEYS[1], 'finished')\n"
    "redis.call('ZREM', KEYS[2], ARGV[1])\n"
    "return {'run', redis.call('HMGET', KEYS[1], unpack(ARGV, 7))}\n";

static const char *const REQ_FIELDS[] = {"prompt", "negative_prompt", "sketch",   "beta", "stop",     "stop_step",
                                         "steps",  "cfg",             "seed",     "sampler", "eta",   "n",
                                         "deadline", "model_name",   "n_extra", "cancel"};
enum { R_PROMPT, R_NEG, R_SKETCH, R_BETA, R_STOP, R_STOP_STEP, R_STEPS, R_CFG, R_SEED, R_SAMPLER, R_ETA, R_N,
       R_DEADLINE, R_MODEL, R_NEXTRA, R_CANCEL, N_REQ_FIELDS };

static const char LUA_PROGRESS[] =
    /* KEYS: job, ev. ARGV: name, step, total. Returns 0 go on, 1 cancel asked, 2 not ours any more */
    "if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] or redis.call('HGET', KEYS[1], 'state') ~= 'running' then\n"
    "  return 2 end\n"
    "redis.call('HSET', KEYS[1], 'step', ARGV[2])\n"
    /* a run after a reclaim repeats steps its first run announced: the event stream gets each step once */
    "if tonumber(ARGV[2]) > tonumber(redis.call('HGET', KEYS[1], 'ev_step') or '0') then\n"
    "  redis.call('HSET', KEYS[1], 'ev_step', ARGV[2])\n"
    "  redis.call('XADD', KEYS[2], '*', 'kind', 'progress', 'state', 'running', 'step', ARGV[2], 'total', ARGV[3])\n"
    "end\n"
    "if redis.call('HGET', KEYS[1], 'cancel') == '1' then return 1 end\n"
    "return 0\n";

static const char LUA_FINISH[] =
    /* KEYS: job, queue, jobs stream, ev. ARGV: id, name, entry, ttl, state, error, message, n_ready, step, total,
     * finished, then field/value pairs of timings up to ARGV[12 + 2k], then the PNGs after the marker '--' */
    "if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[2] then return 'lost' end\n"
    "local i = 12\n"
    "while ARGV[i] ~= '--' do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]); i = i + 2 end\n"
    "local n = 0\n"
    "for k = i + 1, #ARGV do\n"
    "  redis.call('SET', KEYS[1] .. ':img:' .. n, ARGV[k], 'EX', ARGV[4]); n = n + 1\n"
    "end\n"
    "redis.call('HSET', KEYS[1], 'state', ARGV[5], 'error', ARGV[6], 'message', ARGV[7], 'n_ready', ARGV[8],\n"
    "           'step', ARGV[9], 'finished', ARGV[11])\n"
    "redis.call('HDEL', KEYS[1], 'sketch')\n"
    "redis.call('HINCRBY', KEYS[1], 'results', 1)\n"
    "redis.call('XADD', KEYS[4], '*', 'kind', 'end', 'state', ARGV[5], 'step', ARGV[9], 'total', ARGV[10],\n"
    "           'error', ARGV[6], 'message', ARGV[7], 'n', ARGV[8])\n"
    "redis.call('EXPIRE', KEYS[1], ARGV[4]); redis.call('EXPIRE', KEYS[4], ARGV[4])\n"
    "redis.call('ZREM', KEYS[2], ARGV[1])\n"
    "redis.call('XACK', KEYS[3], 'workers', ARGV[3]); redis.call('XDEL', KEYS[3], ARGV[3])\n"
    "return 'ok'\n";

static const char LUA_RELEASE[] =
    /* KEYS: job, queue, jobs stream. ARGV: id, name, entry. Gives a job back to the queue (a worker shutting down) */
    "if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[2] then return 'lost' end\n"
    "redis.call('HSET', KEYS[1], 'state', 'queued', 'owner', '', 'step', '0')\n"
    "redis.call('HINCRBY', KEYS[1], 'attempts', -1)\n"
    "redis.call('ZADD', KEYS[2], tonumber(redis.call('HGET', KEYS[1], 'created') or '0') * 1000, ARGV[1])\n"
    "redis.call('XACK', KEYS[3], 'workers', ARGV[3]); redis.call('XDEL', KEYS[3], ARGV[3])\n"
    "redis.call('XADD', KEYS[3], '*', 'id', ARGV[1])\n"
    "return 'ok'\n";

/* Runs a script until Redis answers (the worker must not lose a result while Redis restarts), or until a stop and
 * tries_after_stop more tries. Returns the reply or NULL. */
static redisReply *run_persist(sg_store_worker *w, int argc, const char **argv, const size_t *len, int *rc) {
  int after_stop = 0;
  for (;;) {
    redisReply *r = run_argv(w->s, argc, argv, len, rc);
    if (r || *rc != SG_STORE_EUNAVAILABLE) return r;
    if (atomic_load(&w->stop) && ++after_stop > 40) return NULL;
    sleep_ms(250);
  }
}

static void run_remove(sg_store_worker *w, run *x) {
  pthread_mutex_lock(&w->mu);
  for (run **p = &w->runs; *p; p = &(*p)->next)
    if (*p == x) {
      *p = x->next;
      w->n_runs--;
      break;
    }
  pthread_cond_broadcast(&w->cv);
  pthread_mutex_unlock(&w->mu);
}

/* Stores the outcome of a job that ended on this worker (one script: state, images, end event, XACK). */
static void finish(sg_store_worker *w, const char *id, const char *entry, sg_job_state state, sg_job_error e,
                   const char *message, const sg_job_status *st, uint8_t **png, const size_t *plen, int32_t n_png) {
  rstore *s = w->s;
  char k1[64], k4[64];
  snprintf(k1, sizeof k1, "sg:job:%s", id);
  snprintf(k4, sizeof k4, "sg:job:%s:ev", id);
  args a = {0};
  arg_s(&a, "EVAL");
  arg_s(&a, LUA_FINISH);
  arg_s(&a, "4");
  arg_s(&a, k1);
  arg_s(&a, QUEUE);
  arg_s(&a, STREAM_JOBS);
  arg_s(&a, k4);
  arg_s(&a, id);
  arg_s(&a, w->name);
  arg_s(&a, entry);
  arg_fmt(&a, "%.0f", s->p.keep_finished_seconds);
  arg_s(&a, sg_job_state_name(state));
  arg_s(&a, e == SG_JOB_ERR_NONE ? "" : sg_job_error_name(e));
  arg_s(&a, message ? message : "");
  arg_fmt(&a, "%d", (int)(state == SG_JOB_SUCCEEDED ? n_png : 0));
  arg_fmt(&a, "%d", st ? (int)st->step : 0);
  arg_fmt(&a, "%d", st ? (int)st->total : 0);
  arg_fmt(&a, "%.6f", wall_now());
  if (st) {
    const double t[9] = {st->timings.text,    st->timings.vae_encode, st->timings.unet,
                         st->timings.guided_forward, st->timings.lgp, st->timings.backward,
                         st->timings.sampler, st->timings.vae_decode, st->timings.total};
    for (int i = 0; i < 9; i++) {
      arg_s(&a, STATUS_FIELDS[F_T0 + i]);
      arg_fmt(&a, "%.6f", t[i]);
    }
    arg_s(&a, "guided_steps");
    arg_fmt(&a, "%d", (int)st->guided_steps);
    arg_s(&a, "started"); /* the engine's own start, this run's */
    arg_fmt(&a, "%.6f", st->started > 0 ? st->started : wall_now());
  }
  arg_s(&a, "--");
  for (int32_t i = 0; state == SG_JOB_SUCCEEDED && i < n_png; i++) arg_bin(&a, png[i], plen[i]);
  int rc;
  redisReply *r = a.overflow ? NULL : run_persist(w, a.n, a.v, a.len, &rc);
  const char *v = rstr(r);
  if (!v || strcmp(v, "ok"))
    logf_(s, v && !strcmp(v, "lost") ? SG_JOBS_LOG_INFO : SG_JOBS_LOG_WARN, "%s: job %s: result %s", __func__, id,
          v && !strcmp(v, "lost") ? "dropped: another worker took the job over" : "not stored (Redis unreachable)");
  else
    logf_(s, SG_JOBS_LOG_INFO, "%s: job %s %s on %s", __func__, id, sg_job_state_name(state), w->name);
  if (r) freeReplyObject(r);
}

/* Sends the steps of x that the engine made and Redis has not seen, in order, one event each; x->smu held. A reply
 * saying the job was cancelled, or is not this worker's any more, stops the local job at its next step. Returns 0, or
 * -1 when Redis did not answer (the rest is sent later). */
static int send_steps(sg_store_worker *w, run *x, int32_t upto, int32_t total) {
  rstore *s = w->s;
  char k1[64], k2[64];
  snprintf(k1, sizeof k1, "sg:job:%s", x->id);
  snprintf(k2, sizeof k2, "sg:job:%s:ev", x->id);
  for (int32_t k = x->step_sent + 1; k <= upto; k++) {
    char step[16], tot[16];
    snprintf(step, sizeof step, "%d", (int)k);
    snprintf(tot, sizeof tot, "%d", (int)total);
    const char *argv[] = {"EVAL", LUA_PROGRESS, "2", k1, k2, w->name, step, tot};
    size_t len[8];
    for (int i = 0; i < 8; i++) len[i] = strlen(argv[i]);
    int rc;
    redisReply *r = run_argv(s, 8, argv, len, &rc);
    if (!r) return -1; /* Redis away: tried again later, or at the end */
    x->step_sent = k;
    if (r->type == REDIS_REPLY_INTEGER && r->integer != 0) {
      if (r->integer == 2)
        logf_(s, SG_JOBS_LOG_WARN, "%s: job %s was taken over by another worker; stopping it here", __func__, x->id);
      sg_jobs_cancel(w->jobs, x->local);
    }
    freeReplyObject(r);
  }
  return 0;
}

/* The mirror thread: whenever a run has steps Redis has not seen, sends them. */
static void *mirror_main(void *arg) {
  sg_store_worker *w = arg;
  pthread_mutex_lock(&w->mu);
  while (!atomic_load(&w->mirror_stop)) {
    run *x = NULL;
    for (run *p = w->runs; p && !x; p = p->next)
      if (!p->ended && p->step_done > p->step_sent) x = p;
    if (!x) {
      struct timespec ts;
      clock_gettime(CLOCK_REALTIME, &ts);
      ts.tv_nsec += 100 * 1000000L;
      ts.tv_sec += ts.tv_nsec / 1000000000L;
      ts.tv_nsec %= 1000000000L;
      pthread_cond_timedwait(&w->mcv, &w->mu, &ts);
      continue;
    }
    pthread_mutex_lock(&x->smu); /* order: w->mu, then smu; an ended run is never picked, so its END never waits */
    int32_t upto = x->step_done, total = x->total;
    pthread_mutex_unlock(&w->mu);
    int failed = send_steps(w, x, upto, total);
    pthread_mutex_unlock(&x->smu);
    if (failed) sleep_ms(250); /* Redis is away: no busy loop */
    pthread_mutex_lock(&w->mu);
  }
  pthread_mutex_unlock(&w->mu);
  return NULL;
}

static void on_local_event(void *user, const sg_job_event *ev) {
  run *x = user;
  sg_store_worker *w = x->w;
  rstore *s = w->s;
  char k1[64], k2[64];
  snprintf(k1, sizeof k1, "sg:job:%s", x->id);
  snprintf(k2, sizeof k2, "sg:job:%s:ev", x->id);
  if (ev->kind == SG_JOB_EVENT_PROGRESS) { /* handed to the mirror thread: the engine goes on at once */
    pthread_mutex_lock(&w->mu);
    x->step_done = ev->step;
    x->total = ev->total;
    pthread_cond_signal(&w->mcv);
    pthread_mutex_unlock(&w->mu);
    return;
  }
  pthread_mutex_lock(&w->mu);
  x->ended = 1;
  int32_t upto = x->step_done, total = x->total;
  pthread_mutex_unlock(&w->mu);
  pthread_mutex_lock(&x->smu); /* the steps not yet mirrored go out before the end event */
  if (ev->error != SG_JOB_ERR_SHUTDOWN) send_steps(w, x, upto, total);
  pthread_mutex_unlock(&x->smu);
  sg_job_status st;
  int have = sg_jobs_event_status(ev, &st) == 0;
  if (ev->error == SG_JOB_ERR_SHUTDOWN) { /* this worker is stopping: the job goes back to the queue */
    char k3[] = STREAM_JOBS;
    const char *argv[] = {"EVAL", LUA_RELEASE, "3", k1, QUEUE, k3, x->id, w->name, x->entry};
    size_t len[9];
    for (int i = 0; i < 9; i++) len[i] = strlen(argv[i]);
    int rc;
    redisReply *r = run_persist(w, 9, argv, len, &rc);
    logf_(s, SG_JOBS_LOG_INFO, "%s: job %s given back to the queue", __func__, x->id);
    if (r) freeReplyObject(r);
  } else {
    uint8_t *png[SG_JOBS_MAX_IMAGES] = {0};
    size_t plen[SG_JOBS_MAX_IMAGES] = {0};
    int32_t n = 0;
    sg_job_state state = ev->state;
    sg_job_error e = ev->error;
    const char *msg = ev->message;
    if (state == SG_JOB_SUCCEEDED)
      for (; n < ev->n_images; n++)
        if (sg_jobs_event_image(ev, n, &png[n], &plen[n])) {
          state = SG_JOB_FAILED;
          e = SG_JOB_ERR_NOMEM;
          msg = "the images could not be copied (out of memory)";
          break;
        }
    finish(w, x->id, x->entry, state, e, msg, have ? &st : NULL, png, plen, n);
    for (int32_t i = 0; i < SG_JOBS_MAX_IMAGES; i++) free(png[i]);
  }
  run_remove(w, x);
  sg_jobs_unwatch(x->h); /* its own handle, from inside its callback */
  pthread_mutex_destroy(&x->smu);
  free(x);
}

/* Takes one stream entry (id, fields) delivered or claimed for this worker. */
static void take(sg_store_worker *w, const redisReply *entry) {
  rstore *s = w->s;
  if (!entry || entry->type != REDIS_REPLY_ARRAY || entry->elements != 2 || !rstr(entry->element[0])) return;
  const char *eid = entry->element[0]->str;
  const redisReply *fv = entry->element[1];
  const char *id = NULL;
  if (fv && fv->type == REDIS_REPLY_ARRAY)
    for (size_t i = 0; i + 1 < fv->elements; i += 2)
      if (rstr(fv->element[i]) && !strcmp(fv->element[i]->str, "id")) id = rstr(fv->element[i + 1]);
  int rc;
  if (!is_job_id(id)) { /* a hostile or truncated entry: dropped, nothing else is affected */
    logf_(s, SG_JOBS_LOG_WARN, "%s: stream entry %s names no job; dropped", __func__, eid);
    redisReply *r = run_fmt(s, &rc, "XACK %s %s %s", STREAM_JOBS, GROUP, eid);
    if (r) freeReplyObject(r);
    r = run_fmt(s, &rc, "XDEL %s %s", STREAM_JOBS, eid);
    if (r) freeReplyObject(r);
    return;
  }
  char k1[64], k4[64], now[32], maxa[16], ttl[32];
  snprintf(k1, sizeof k1, "sg:job:%s", id);
  snprintf(k4, sizeof k4, "sg:job:%s:ev", id);
  snprintf(now, sizeof now, "%.6f", wall_now());
  snprintf(maxa, sizeof maxa, "%d", (int)s->p.max_attempts);
  snprintf(ttl, sizeof ttl, "%.0f", s->p.keep_finished_seconds);
  args a = {0};
  const char *head[] = {"EVAL", LUA_START, "4", k1, QUEUE, STREAM_JOBS, k4, id, w->name, maxa, now, eid, ttl};
  for (size_t i = 0; i < sizeof head / sizeof *head; i++) arg_s(&a, head[i]);
  for (int i = 0; i < N_REQ_FIELDS; i++) arg_s(&a, REQ_FIELDS[i]);
  redisReply *r = run_argv(s, a.n, a.v, a.len, &rc);
  if (!r) return; /* Redis went away: the entry stays pending and is claimed again after the lease */
  const char *verdict = r->type == REDIS_REPLY_ARRAY && r->elements >= 1 ? rstr(r->element[0]) : NULL;
  if (!verdict || strcmp(verdict, "run")) {
    if (verdict && strcmp(verdict, "final"))
      logf_(s, SG_JOBS_LOG_WARN, "%s: job %s: %s", __func__, id,
            !strcmp(verdict, "poison") ? "failed: it never finished on its earlier workers"
            : !strcmp(verdict, "bad")  ? "its record in Redis is not a hash; dropped"
                                       : "its record has expired; dropped");
    freeReplyObject(r);
    return;
  }
  const redisReply *f = r->elements == 2 ? r->element[1] : NULL;
  sg_job_request q;
  memset(&q, 0, sizeof q);
  const char *bad = NULL;
  const char *extra[2 * SG_JOBS_MAX_EXTRA_TEXT];
  char *xs[2 * SG_JOBS_MAX_EXTRA_TEXT] = {0};
  int64_t v;
  double d;
  float *sketch = NULL;
  if (!f || f->type != REDIS_REPLY_ARRAY || f->elements != N_REQ_FIELDS) bad = "fields";
#define FV(i) (rstr(f->element[i]))
  if (!bad && !(q.prompt = FV(R_PROMPT))) bad = "prompt";
  if (!bad) q.negative_prompt = FV(R_NEG) ? FV(R_NEG) : "";
  if (!bad && parse_f64(FV(R_BETA), &q.beta)) bad = "beta";
  if (!bad && parse_f64(FV(R_STOP), &q.stop)) bad = "stop";
  if (!bad && (parse_i64(FV(R_STOP_STEP), -1, 1000000, &v) || (q.stop_step = (int32_t)v, 0))) bad = "stop_step";
  if (!bad && (parse_i64(FV(R_STEPS), 1, 1000000, &v) || (q.steps = (int32_t)v, 0))) bad = "steps";
  if (!bad && parse_f64(FV(R_CFG), &q.cfg)) bad = "cfg";
  if (!bad && parse_i64(FV(R_SEED), 0, INT64_MAX, &q.seed)) bad = "seed";
  if (!bad && (parse_i64(FV(R_SAMPLER), 0, 3, &v) || (q.sampler = (sg_sampler_kind)v, 0))) bad = "sampler";
  if (!bad && parse_f64(FV(R_ETA), &q.eta)) bad = "eta";
  if (!bad && (parse_i64(FV(R_N), 1, SG_JOBS_MAX_IMAGES, &v) || (q.n_images = (int32_t)v, 0))) bad = "n";
  if (!bad && parse_f64(FV(R_DEADLINE), &d)) bad = "deadline";
  if (!bad && d > 0) q.deadline = sg_jobs_now() + (d - wall_now());
  if (!bad && d > 0 && q.deadline <= 0) q.deadline = 1e-9; /* passed: the engine fails it at once */
  if (!bad) q.model_name = FV(R_MODEL);
  if (!bad && FV(R_SKETCH)) {
    size_t want = (size_t)w->info.image_size * (size_t)w->info.image_size * sizeof(float);
    const redisReply *sk = f->element[R_SKETCH];
    if (sk->len != want) bad = "sketch";
    else if (!(sketch = malloc(want))) bad = "sketch (out of memory)";
    else {
      memcpy(sketch, sk->str, want);
      for (size_t i = 0; i < want / sizeof(float); i++)
        if (!isfinite(sketch[i])) bad = "sketch";
      q.sketch = sketch;
    }
  }
  if (!bad && (parse_i64(FV(R_NEXTRA), 0, SG_JOBS_MAX_EXTRA_TEXT, &v) || (q.n_extra_text = (int32_t)v, 0)))
    bad = "n_extra";
  int cancel = !bad && FV(R_CANCEL) && !strcmp(FV(R_CANCEL), "1");
#undef FV
  if (!bad && q.n_extra_text) { /* the extra PNG text, read apart (its field names depend on its count) */
    args x = {0};
    arg_s(&x, "HMGET");
    arg_s(&x, k1);
    for (int32_t i = 0; i < q.n_extra_text; i++) {
      arg_fmt(&x, "xk%d", (int)i);
      arg_fmt(&x, "xv%d", (int)i);
    }
    redisReply *xr = run_argv(s, x.n, x.v, x.len, &rc);
    if (!xr || xr->type != REDIS_REPLY_ARRAY || xr->elements != (size_t)(2 * q.n_extra_text)) bad = "extra text";
    for (int32_t i = 0; !bad && i < 2 * q.n_extra_text; i++)
      if (!rstr(xr->element[i]) || !(xs[i] = strdup(xr->element[i]->str))) bad = "extra text";
      else extra[i] = xs[i];
    if (xr) freeReplyObject(xr);
    q.extra_text = extra;
  }
  run *x = NULL;
  char err[256] = "";
  if (!bad && !(x = calloc(1, sizeof *x))) bad = "(out of memory)";
  if (!bad) {
    x->w = w;
    pthread_mutex_init(&x->smu, NULL);
    memcpy(x->id, id, SG_JOB_ID_LEN);
    snprintf(x->entry, sizeof x->entry, "%s", eid);
    pthread_mutex_lock(&w->mu);
    x->next = w->runs;
    w->runs = x;
    w->n_runs++;
    pthread_mutex_unlock(&w->mu);
    rc = sg_jobs_submit_watch(w->jobs, &q, on_local_event, x, x->local, &x->h, err, sizeof err);
    if (rc) {
      run_remove(w, x);
      pthread_mutex_destroy(&x->smu);
      free(x);
      x = NULL;
      finish(w, id, eid, SG_JOB_FAILED, rc == SG_JOBS_EINVAL ? SG_JOB_ERR_INVALID : SG_JOB_ERR_RUNTIME,
             err[0] ? err : sg_jobs_strerror(rc), NULL, NULL, NULL, 0);
    } else {
      logf_(s, SG_JOBS_LOG_INFO, "%s: job %s started on %s (entry %s)", __func__, id, w->name, eid);
      if (cancel) sg_jobs_cancel(w->jobs, x->local);
    }
  } else {
    char m[160];
    snprintf(m, sizeof m, "the job's record in Redis is malformed: %s", bad);
    logf_(s, SG_JOBS_LOG_WARN, "%s: job %s: %s", __func__, id, m);
    finish(w, id, eid, SG_JOB_FAILED, SG_JOB_ERR_INVALID, m, NULL, NULL, NULL, 0);
  }
  free(sketch);
  for (int i = 0; i < 2 * SG_JOBS_MAX_EXTRA_TEXT; i++) free(xs[i]);
  freeReplyObject(r);
}

static void publish_model(sg_store_worker *w) {
  sg_job_request d = sg_jobs_default_request(w->jobs);
  json_t *j = json_pack("{s:s, s:i, s:b, s:s, s:i, s:f, s:f, s:f, s:f, s:s}", "name", w->info.name, "image_size",
                        (int)w->info.image_size, "has_lgp", w->info.has_lgp, "dtype", w->info.dtype, "steps",
                        (int)d.steps, "cfg", d.cfg, "beta", d.beta, "stop", d.stop, "eta", d.eta, "sampler",
                        sg_sampler_kind_name(d.sampler));
  char *text = j ? json_dumps(j, JSON_COMPACT) : NULL;
  json_decref(j);
  if (!text) return;
  int rc;
  redisReply *r = run_fmt(w->s, &rc, "SET %s %s", MODEL, text);
  if (r) freeReplyObject(r);
  json_free_t jfree; /* json_dumps' text goes back to jansson's allocator, whichever it is */
  json_get_alloc_funcs(NULL, &jfree);
  jfree(text);
}

static void *worker_main(void *arg) {
  sg_store_worker *w = arg;
  rstore *s = w->s;
  int ready = 0;
  redisContext *c = NULL;
  while (!atomic_load(&w->stop)) {
    if (!ready) { /* the group (from the stream's start, so that jobs accepted before it are taken) and the model */
      redisContext *g = conn_get(s);
      redisReply *r = g ? redisCommand(g, "XGROUP CREATE %s %s 0 MKSTREAM", STREAM_JOBS, GROUP) : NULL;
      int ok = r && (r->type == REDIS_REPLY_STATUS || (r->type == REDIS_REPLY_ERROR && strstr(r->str, "BUSYGROUP")));
      if (r && !ok) logf_(s, SG_JOBS_LOG_WARN, "%s: XGROUP CREATE: %s", __func__, r->type == REDIS_REPLY_ERROR ? r->str : "?");
      atomic_store(&s->up, r != NULL);
      if (r) freeReplyObject(r);
      conn_put(s, g);
      if (!ok) {
        sleep_ms(500);
        continue;
      }
      publish_model(w);
      ready = 1;
      logf_(s, SG_JOBS_LOG_INFO, "%s: worker %s takes jobs (%d slot(s), lease %.1f s)", __func__, w->name,
            (int)w->slots, s->p.lease_seconds);
    }
    pthread_mutex_lock(&w->mu);
    while (w->n_runs >= w->slots && !atomic_load(&w->stop)) {
      struct timespec ts;
      clock_gettime(CLOCK_REALTIME, &ts);
      ts.tv_nsec += 200 * 1000000L;
      ts.tv_sec += ts.tv_nsec / 1000000000L;
      ts.tv_nsec %= 1000000000L;
      pthread_cond_timedwait(&w->cv, &w->mu, &ts);
    }
    pthread_mutex_unlock(&w->mu);
    if (atomic_load(&w->stop)) break;
    /* first the jobs of silent workers, then new ones */
    int rc;
    char lease[32];
    snprintf(lease, sizeof lease, "%.0f", s->p.lease_seconds * 1000.0);
    redisReply *r = run_fmt(s, &rc, "XAUTOCLAIM %s %s %s %s 0-0 COUNT 1", STREAM_JOBS, GROUP, w->name, lease);
    int took = 0;
    if (r && r->type == REDIS_REPLY_ARRAY && r->elements >= 2 && r->element[1]->type == REDIS_REPLY_ARRAY)
      for (size_t i = 0; i < r->element[1]->elements; i++) {
        redisReply *e = r->element[1]->element[i];
        if (e->type == REDIS_REPLY_ARRAY && e->elements == 2 && rstr(e->element[0])) {
          logf_(s, SG_JOBS_LOG_WARN, "%s: reclaiming stream entry %s from a silent worker", __func__, e->element[0]->str);
          if (e->element[1]->type != REDIS_REPLY_ARRAY) { /* deleted meanwhile */
            redisReply *a = run_fmt(s, &rc, "XACK %s %s %s", STREAM_JOBS, GROUP, e->element[0]->str);
            if (a) freeReplyObject(a);
            continue;
          }
          take(w, e);
          took = 1;
        }
      }
    if (r) freeReplyObject(r);
    if (!r && rc == SG_STORE_EUNAVAILABLE) {
      sleep_ms(500);
      continue;
    }
    if (!r && rc == SG_STORE_EBADDATA) { /* sg:jobs is not a stream: nothing to take until it is repaired */
      logf_(s, SG_JOBS_LOG_ERROR, "%s: %s is not a stream", __func__, STREAM_JOBS);
      sleep_ms(1000);
      continue;
    }
    if (took) continue;
    if (!c && !(c = conn_new(s))) {
      atomic_store(&s->up, 0);
      sleep_ms(500);
      continue;
    }
    r = redisCommand(c, "XREADGROUP GROUP %s %s COUNT 1 BLOCK 1000 STREAMS %s >", GROUP, w->name, STREAM_JOBS);
    rc = reply_code(s, r);
    if (!rc && r->type == REDIS_REPLY_ARRAY)
      for (size_t i = 0; i < r->elements; i++) {
        redisReply *st = r->element[i];
        if (st->type == REDIS_REPLY_ARRAY && st->elements == 2 && st->element[1]->type == REDIS_REPLY_ARRAY)
          for (size_t k = 0; k < st->element[1]->elements; k++) take(w, st->element[1]->element[k]);
      }
    if (r && r->type == REDIS_REPLY_ERROR && strstr(r->str, "NOGROUP")) ready = 0; /* Redis lost its data */
    if (r) freeReplyObject(r);
    if (!r || c->err) {
      redisFree(c);
      c = NULL;
      sleep_ms(250);
    }
  }
  if (c) redisFree(c);
  return NULL;
}

/* The heartbeat: the running jobs' stream entries claimed again (their idle time back to 0, so that nobody
 * reclaims them) and the worker's state in sg:workers. */
static void *heartbeat_main(void *arg) {
  sg_store_worker *w = arg;
  rstore *s = w->s;
  int ms = (int)(s->p.heartbeat_seconds * 1000.0);
  int elapsed = ms;
  for (;;) {
    pthread_mutex_lock(&w->mu);
    int go_on = !atomic_load(&w->stop) || w->n_runs > 0;
    pthread_mutex_unlock(&w->mu);
    if (!go_on) break;
    if (elapsed < ms) {
      sleep_ms(50);
      elapsed += 50;
      continue;
    }
    elapsed = 0;
    args a = {0};
    arg_s(&a, "XCLAIM");
    arg_s(&a, STREAM_JOBS);
    arg_s(&a, GROUP);
    arg_s(&a, w->name);
    arg_s(&a, "0");
    char ids[32][48];
    int n = 0, busy;
    pthread_mutex_lock(&w->mu);
    for (run *x = w->runs; x && n < 32; x = x->next) snprintf(ids[n++], sizeof ids[0], "%s", x->entry);
    busy = w->n_runs;
    pthread_mutex_unlock(&w->mu);
    for (int i = 0; i < n; i++) arg_s(&a, ids[i]);
    arg_s(&a, "JUSTID");
    int rc;
    redisReply *r = n ? run_argv(s, a.n, a.v, a.len, &rc) : NULL;
    if (r) freeReplyObject(r);
    char state[128];
    snprintf(state, sizeof state, "{\"t\":%.3f,\"busy\":%d,\"slots\":%d}", wall_now(), busy, (int)w->slots);
    r = run_fmt(s, &rc, "HSET %s %s %s", WORKERS, w->name, state);
    if (r) freeReplyObject(r);
  }
  return NULL;
}

sg_store_worker *sg_store_worker_start(sg_store *b, sg_jobs *jobs, const sg_model_info *info, const char *name,
                                       char *err, size_t errlen) {
  if (!b || b->ops != &REDIS_OPS || !jobs || !info) {
    sg_set_err(err, errlen, "a worker needs a redis store, a job manager and its model");
    return NULL;
  }
  sg_store_worker *w = calloc(1, sizeof *w);
  if (!w) {
    sg_set_err(err, errlen, "out of memory");
    return NULL;
  }
  w->s = (rstore *)b;
  w->jobs = jobs;
  w->info = *info;
  if (name && *name) {
    snprintf(w->name, sizeof w->name, "%s", name);
  } else {
    char host[64] = "worker";
    gethostname(host, sizeof host - 1);
    host[sizeof host - 1] = 0;
    snprintf(w->name, sizeof w->name, "%s-%d", host, (int)getpid());
  }
  for (char *p = w->name; *p; p++)
    if (!isalnum((unsigned char)*p) && *p != '-' && *p != '.' && *p != '_') *p = '_';
  sg_jobs_stats st;
  sg_jobs_stats_get(jobs, &st);
  w->slots = st.workers > 0 ? st.workers : 1;
  pthread_mutex_init(&w->mu, NULL);
  pthread_cond_init(&w->cv, NULL);
  pthread_cond_init(&w->mcv, NULL);
  if (pthread_create(&w->mirror, NULL, mirror_main, w)) {
    sg_set_err(err, errlen, "cannot start the progress thread");
    free(w);
    return NULL;
  }
  w->mirror_started = 1;
  if (pthread_create(&w->hb, NULL, heartbeat_main, w)) {
    atomic_store(&w->mirror_stop, 1);
    pthread_join(w->mirror, NULL);
    sg_set_err(err, errlen, "cannot start the heartbeat thread");
    free(w);
    return NULL;
  }
  w->hb_started = 1;
  if (pthread_create(&w->loop, NULL, worker_main, w)) {
    atomic_store(&w->stop, 1);
    atomic_store(&w->mirror_stop, 1);
    pthread_join(w->hb, NULL);
    pthread_join(w->mirror, NULL);
    sg_set_err(err, errlen, "cannot start the worker thread");
    free(w);
    return NULL;
  }
  w->loop_started = 1;
  return w;
}

int sg_store_worker_stop(sg_store_worker *w, double timeout_s) {
  if (!w) return 0;
  atomic_store(&w->stop, 1);
  pthread_join(w->loop, NULL);
  /* the running jobs finish (their results are stored) or, past the timeout, are cancelled with SHUTDOWN, which
   * gives them back to the queue (on_local_event) */
  int rc = sg_jobs_drain(w->jobs, timeout_s);
  pthread_join(w->hb, NULL);
  atomic_store(&w->mirror_stop, 1);
  pthread_mutex_lock(&w->mu);
  pthread_cond_broadcast(&w->mcv);
  pthread_mutex_unlock(&w->mu);
  pthread_join(w->mirror, NULL);
  int rc2;
  redisReply *r = run_fmt(w->s, &rc2, "HDEL %s %s", WORKERS, w->name);
  if (r) freeReplyObject(r);
  pthread_mutex_destroy(&w->mu);
  pthread_cond_destroy(&w->cv);
  pthread_cond_destroy(&w->mcv);
  free(w);
  return rc ? SG_JOBS_ETIMEDOUT : 0;
}
