/* The `redis` job store's jobs: their records, submit, image, cancel, watches and the dispatcher, model and metrics. */
#include "store.h"

#include <ctype.h>
#include <hiredis/hiredis.h>
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "errbuf.h"
#include "store_impl.h"
#include "store_redis_impl.h"

/* ---- the job's status fields ---- */

const char *const SG_REDIS_STATUS_FIELDS[] = {
    "state",  "step",   "total",    "worker",     "created", "started", "finished", "error",        "message",
    "n",      "n_ready", "seed",    "t_text",     "t_vae_encode", "t_unet", "t_guided", "t_lgp", "t_backward",
    "t_sampler", "t_vae_decode", "t_total", "guided_steps",
};

/* Fills *out from an HMGET of SG_REDIS_STATUS_FIELDS. Returns 0 or SG_STORE_EBADDATA (a required field missing or
 * malformed; the optional ones default to 0). */
static int status_from(const char *id, const redisReply *h, int64_t rank, sg_job_status *out) {
  memset(out, 0, sizeof *out);
  snprintf(out->id, sizeof out->id, "%s", id);
  if (!h || h->type != REDIS_REPLY_ARRAY || h->elements != N_STATUS_FIELDS) return SG_STORE_EBADDATA;
  const char *f[N_STATUS_FIELDS];
  for (int i = 0; i < N_STATUS_FIELDS; i++) f[i] = sg_redis_rstr(h->element[i]);
  int64_t v;
  double d;
  if (sg_redis_state_of(f[F_STATE], &out->state)) return SG_STORE_EBADDATA;
  if (sg_redis_parse_i64(f[F_TOTAL], 1, 1000000, &v)) return SG_STORE_EBADDATA;
  out->total = (int32_t)v;
  if (sg_redis_parse_i64(f[F_N], 1, SG_JOBS_MAX_IMAGES, &v)) return SG_STORE_EBADDATA;
  out->n_images = (int32_t)v;
  if (sg_redis_parse_i64(f[F_SEED], 0, INT64_MAX, &out->seed)) return SG_STORE_EBADDATA;
  if (sg_redis_parse_f64(f[F_CREATED], &out->created)) return SG_STORE_EBADDATA;
  out->step = f[F_STEP] && !sg_redis_parse_i64(f[F_STEP], 0, out->total, &v) ? (int32_t)v : 0;
  out->worker = f[F_WORKER] && !sg_redis_parse_i64(f[F_WORKER], 0, 1 << 20, &v) ? (int32_t)v : -1;
  if (f[F_STARTED] && !sg_redis_parse_f64(f[F_STARTED], &d)) out->started = d;
  if (f[F_FINISHED] && !sg_redis_parse_f64(f[F_FINISHED], &d)) out->finished = d;
  out->error = SG_JOB_ERR_NONE;
  if (f[F_ERROR] && *f[F_ERROR] && sg_redis_error_of(f[F_ERROR], &out->error)) return SG_STORE_EBADDATA;
  snprintf(out->message, sizeof out->message, "%s", f[F_MESSAGE] ? f[F_MESSAGE] : "");
  out->n_ready = f[F_N_READY] && !sg_redis_parse_i64(f[F_N_READY], 0, out->n_images, &v) ? (int32_t)v : 0;
  if (out->state != SG_JOB_SUCCEEDED) out->n_ready = 0;
  double *t[9] = {&out->timings.text,     &out->timings.vae_encode, &out->timings.unet,
                  &out->timings.guided_forward, &out->timings.lgp, &out->timings.backward,
                  &out->timings.sampler,  &out->timings.vae_decode, &out->timings.total};
  for (int i = 0; i < 9; i++)
    if (f[F_T0 + i] && !sg_redis_parse_f64(f[F_T0 + i], &d)) *t[i] = d;
  if (f[F_GUIDED] && !sg_redis_parse_i64(f[F_GUIDED], 0, 1000000, &v)) out->guided_steps = (int32_t)v;
  double now = sg_redis_wall_now();
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
  if (!sg_redis_is_job_id(id)) return SG_JOBS_ENOTFOUND;
  char k1[64], k3[64];
  snprintf(k1, sizeof k1, "sg:job:%s", id);
  snprintf(k3, sizeof k3, "sg:known:%s", id);
  args a = {0};
  sg_redis_arg_s(&a, "EVAL");
  sg_redis_arg_s(&a, LUA_STATUS);
  sg_redis_arg_s(&a, "3");
  sg_redis_arg_s(&a, k1);
  sg_redis_arg_s(&a, QUEUE);
  sg_redis_arg_s(&a, k3);
  sg_redis_arg_s(&a, id);
  for (int i = 0; i < N_STATUS_FIELDS; i++) sg_redis_arg_s(&a, SG_REDIS_STATUS_FIELDS[i]);
  int rc;
  redisReply *r = sg_redis_run_argv(s, a.n, a.v, a.len, &rc);
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
  if (rc == SG_STORE_EBADDATA)
    sg_redis_logf(s, SG_JOBS_LOG_WARN, "%s: job %s: its record in Redis is malformed", __func__, id);
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

int sg_redis_new_id(char id[SG_JOB_ID_LEN]) { return sg_jobs_random_id(id) ? SG_JOBS_ESYS : 0; }

/* The number of workers whose heartbeat is recent (cached a second); -1 when Redis cannot say. */
static int32_t workers_alive(rstore *s) {
  double now = sg_redis_wall_now();
  pthread_mutex_lock(&s->cmu);
  if (now - s->workers_at < 1.0) {
    int32_t n = s->workers_alive;
    pthread_mutex_unlock(&s->cmu);
    return n;
  }
  pthread_mutex_unlock(&s->cmu);
  int rc;
  redisReply *r = sg_redis_run_fmt(s, &rc, "HGETALL %s", WORKERS);
  if (!r) return -1;
  int32_t n = 0;
  if (r->type == REDIS_REPLY_ARRAY)
    for (size_t i = 1; i < r->elements; i += 2) {
      json_t *j = sg_redis_rstr(r->element[i]) ? json_loads(r->element[i]->str, 0, NULL) : NULL;
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
  int rc = sg_redis_new_id(id);
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
  double now = sg_redis_wall_now();
  double deadline_wall = 0;
  if (q->deadline > 0) deadline_wall = now + (q->deadline - sg_jobs_now());
  char k_job[64], k_idem[16 + 2 * SG_STORE_MAX_IDEM_KEY], k_known[64];
  snprintf(k_job, sizeof k_job, "sg:job:%s", id);
  snprintf(k_known, sizeof k_known, "sg:known:%s", id);
  if (key) snprintf(k_idem, sizeof k_idem, "sg:idem:%s", key);
  double ttl = (deadline_wall > 0 ? deadline_wall - now : 86400) + s->p.keep_finished_seconds + 3600;
  args a = {0};
  sg_redis_arg_s(&a, "EVAL");
  sg_redis_arg_s(&a, LUA_SUBMIT);
  sg_redis_arg_s(&a, "5");
  sg_redis_arg_s(&a, k_job);
  sg_redis_arg_s(&a, STREAM_JOBS);
  sg_redis_arg_s(&a, QUEUE);
  sg_redis_arg_s(&a, key ? k_idem : "");
  sg_redis_arg_s(&a, k_known);
  sg_redis_arg_s(&a, id);
  sg_redis_arg_fmt(&a, "%d", (int)(s->p.max_queue + alive));
  sg_redis_arg_fmt(&a, "%.3f", now * 1000.0);
  sg_redis_arg_fmt(&a, "%.0f", s->p.idempotency_seconds);
  sg_redis_arg_s(&a, fp);
  sg_redis_arg_fmt(&a, "%.0f", ttl);
  sg_redis_arg_fmt(&a, "%.0f", s->p.known_ids_seconds);
#define FIELD(name, ...) (sg_redis_arg_s(&a, name), sg_redis_arg_fmt(&a, __VA_ARGS__))
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
  sg_redis_arg_s(&a, "prompt");
  sg_redis_arg_s(&a, q->prompt);
  sg_redis_arg_s(&a, "negative_prompt");
  sg_redis_arg_s(&a, q->negative_prompt ? q->negative_prompt : "");
  if (q->model_name) {
    sg_redis_arg_s(&a, "model_name");
    sg_redis_arg_s(&a, q->model_name);
  }
  if (q->sketch) {
    sg_redis_arg_s(&a, "sketch");
    sg_redis_arg_bin(&a, q->sketch, (size_t)map_n * sizeof *q->sketch);
  }
  for (int32_t i = 0; i < q->n_extra_text; i++) {
    sg_redis_arg_fmt(&a, "xk%d", (int)i);
    sg_redis_arg_s(&a, q->extra_text[2 * i]);
    sg_redis_arg_fmt(&a, "xv%d", (int)i);
    sg_redis_arg_s(&a, q->extra_text[2 * i + 1]);
  }
  if (a.overflow) return SG_JOBS_EINVAL;
  /* the watch first, so that no event can pass before it (it reads the job's events from the start) */
  if (cb && (rc = r_watch(b, id, NULL, cb, user, w))) return rc;
  redisReply *r = sg_redis_run_argv(s, a.n, a.v, a.len, &rc);
  const char *verdict = r && r->type == REDIS_REPLY_ARRAY && r->elements >= 1 ? sg_redis_rstr(r->element[0]) : NULL;
  if (r && !verdict) rc = SG_STORE_EUNAVAILABLE;
  if (verdict && !strcmp(verdict, "ok")) {
    if (seed) *seed = q->seed;
    rc = 0;
  } else if (verdict && !strcmp(verdict, "full")) {
    sg_set_err(err, errlen, "the cluster's queue is full (%d jobs waiting)", (int)(s->p.max_queue + alive));
    rc = SG_JOBS_EFULL;
  } else if (verdict && !strcmp(verdict, "dup") && r->elements == 2 && sg_redis_rstr(r->element[1])) {
    const char *v = r->element[1]->str; /* "fingerprint id" */
    if (strlen(v) != 33 + SG_JOB_ID_LEN - 1 || v[32] != ' ' || !sg_redis_is_job_id(v + 33)) {
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
  if (!sg_redis_is_job_id(id)) return SG_JOBS_ENOTFOUND;
  int rc;
  sg_job_status st;
  if (i < 0 || i >= SG_JOBS_MAX_IMAGES) {
    rc = r_status(b, id, &st);
    return rc ? rc : SG_JOBS_ENOIMAGE;
  }
  redisReply *r = sg_redis_run_fmt(s, &rc, "GET sg:job:%s:img:%d", id, (int)i);
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
  if (!sg_redis_is_job_id(id)) return SG_JOBS_ENOTFOUND;
  char k1[64], k3[64], now[32], ttl[32];
  snprintf(k1, sizeof k1, "sg:job:%s", id);
  snprintf(k3, sizeof k3, "sg:job:%s:ev", id);
  snprintf(now, sizeof now, "%.6f", sg_redis_wall_now());
  snprintf(ttl, sizeof ttl, "%.0f", s->p.keep_finished_seconds);
  const char *argv[] = {"EVAL", LUA_CANCEL, "3", k1, QUEUE, k3, id, now, ttl};
  size_t len[9];
  for (int i = 0; i < 9; i++) len[i] = strlen(argv[i]);
  int rc;
  redisReply *r = sg_redis_run_argv(s, 9, argv, len, &rc);
  if (!r) return rc;
  const char *v = sg_redis_rstr(r);
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
  if (!sg_redis_is_job_id(id)) return SG_JOBS_ENOTFOUND;
  if (after && !sg_redis_is_stream_id(after)) return SG_JOBS_EINVAL;
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
  redisReply *r = sg_redis_run_fmt(s, &rc, "XADD %s MAXLEN ~ 16 * w 1", s->wake_key); /* wakes the dispatcher's XREAD */
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
    const char *k = sg_redis_rstr(fv->element[i]), *v = sg_redis_rstr(fv->element[i + 1]);
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
  if (!kind || sg_redis_state_of(state, &ev->state) || sg_redis_parse_i64(step, 0, 1000000, &a) ||
      sg_redis_parse_i64(total, 0, 1000000, &t))
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
  if (error && *error && sg_redis_error_of(error, &ev->error)) return -1;
  if (sg_redis_parse_i64(n, 0, SG_JOBS_MAX_IMAGES, &k)) return -1;
  ev->n_images = (int32_t)k;
  snprintf(msg, msgcap, "%s", message ? message : "");
  ev->message = msg;
  return 0;
}

/* Delivers one stream entry to every live watch of the job; the dispatcher holds cbmu. */
static void deliver(rstore *s, const char *key, const redisReply *entry) {
  if (!entry || entry->type != REDIS_REPLY_ARRAY || entry->elements != 2 || !sg_redis_rstr(entry->element[0])) return;
  const char *eid = entry->element[0]->str;
  char job[SG_JOB_ID_LEN] = "";
  if (strlen(key) == 7 + SG_JOB_ID_LEN - 1 + 3) memcpy(job, key + 7, SG_JOB_ID_LEN - 1);
  sg_job_event ev;
  char msg[256];
  int bad = event_from(job, entry->element[1], &ev, msg, sizeof msg);
  if (bad) { /* a hostile or truncated entry: the watchers get a failed END rather than nothing */
    sg_redis_logf(s, SG_JOBS_LOG_WARN, "%s: job %s: malformed event %s; ending its watches", __func__, job, eid);
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

void *sg_redis_dispatcher_main(void *arg) {
  rstore *s = arg;
  redisContext *c = NULL;
  int backoff = 0;
  while (!atomic_load(&s->stop)) {
    if (!c && !(c = sg_redis_conn_new(s))) {
      atomic_store(&s->up, 0);
      sg_redis_sleep_ms(backoff = backoff < 1000 ? backoff + 100 : 1000);
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
      sg_redis_sleep_ms(100);
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
    int ok = sg_redis_reply_code(s, r) == 0;
    if (ok && r->type == REDIS_REPLY_ARRAY) {
      pthread_mutex_lock(&s->cbmu);
      for (size_t j = 0; j < r->elements; j++) {
        redisReply *st = r->element[j];
        if (st->type != REDIS_REPLY_ARRAY || st->elements != 2 || !sg_redis_rstr(st->element[0]) ||
            st->element[1]->type != REDIS_REPLY_ARRAY)
          continue;
        const char *key = st->element[0]->str;
        redisReply *entries = st->element[1];
        if (!strcmp(key, s->wake_key)) {
          if (entries->elements) {
            redisReply *last = entries->element[entries->elements - 1];
            if (last->type == REDIS_REPLY_ARRAY && last->elements >= 1 && sg_redis_rstr(last->element[0]))
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
      sg_redis_sleep_ms(backoff = backoff < 1000 ? backoff + 100 : 1000);
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
  double now = sg_redis_wall_now();
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
  redisReply *r = sg_redis_run_fmt(s, &rc, "GET %s", MODEL);
  if (!r) return rc;
  if (r->type == REDIS_REPLY_NIL) {
    freeReplyObject(r);
    return SG_JOBS_ENOTFOUND;
  }
  json_t *j = sg_redis_rstr(r) ? json_loads(r->str, 0, NULL) : NULL;
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
  redisReply *r = sg_redis_run_fmt(s, &rc, "ZCARD %s", QUEUE);
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
  double now = sg_redis_wall_now();
  long long depth = -1;
  double oldest = 0;
  redisReply *r = sg_redis_run_fmt(s, &rc, "ZCARD %s", QUEUE);
  if (r && r->type == REDIS_REPLY_INTEGER) depth = r->integer;
  if (r) freeReplyObject(r);
  r = depth > 0 ? sg_redis_run_fmt(s, &rc, "ZRANGE %s 0 0 WITHSCORES", QUEUE) : NULL;
  double t;
  if (r && r->type == REDIS_REPLY_ARRAY && r->elements == 2 && !sg_redis_parse_f64(sg_redis_rstr(r->element[1]), &t))
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
  r = sg_redis_run_fmt(s, &rc, "HGETALL %s", WORKERS);
  if (r && r->type == REDIS_REPLY_ARRAY) {
    fprintf(f, "# HELP %s_cluster_worker_up Whether a worker's heartbeat is recent (within lease_seconds).\n"
               "# TYPE %s_cluster_worker_up gauge\n", prefix, prefix);
    for (size_t i = 0; i + 1 < r->elements; i += 2) {
      const char *name = sg_redis_rstr(r->element[i]);
      json_t *j = sg_redis_rstr(r->element[i + 1]) ? json_loads(r->element[i + 1]->str, 0, NULL) : NULL;
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
  if (!sg_redis_is_job_id(buf) || sg_redis_parse_i64(sp1 + 1, 0, SG_JOBS_MAX_IMAGES - 1, &i) ||
      sg_redis_parse_f64(sp2 + 1, &t))
    return SG_STORE_EBADDATA;
  memcpy(job_id, buf, SG_JOB_ID_LEN);
  *index = (int32_t)i;
  *expires = t;
  return 0;
}

static int r_file_put(sg_store *b, const char *key, const char *job_id, int32_t index, double expires) {
  rstore *s = (rstore *)b;
  double left = expires - sg_redis_wall_now();
  /* kept known_ids_seconds past its expiry: an expired key is 410, as an expired job id */
  double ttl = (left > 0 ? ceil(left) : 0) + s->p.known_ids_seconds;
  char v[96];
  snprintf(v, sizeof v, "%s %d %.3f", job_id, (int)index, expires);
  int rc;
  /* %s: one argument, spaces and all */
  redisReply *r = sg_redis_run_fmt(s, &rc, "SET sg:file:%s %s EX %.0f", key, v, ttl);
  if (!r) return rc;
  rc = r->type == REDIS_REPLY_STATUS ? 0 : SG_STORE_EUNAVAILABLE;
  freeReplyObject(r);
  return rc;
}

static int r_file_get(sg_store *b, const char *key, char job_id[SG_JOB_ID_LEN], int32_t *index, double *expires) {
  rstore *s = (rstore *)b;
  int rc;
  redisReply *r = sg_redis_run_fmt(s, &rc, "GET sg:file:%s", key);
  if (!r) {
    if (rc == SG_STORE_EBADDATA) sg_redis_logf(s, SG_JOBS_LOG_WARN, "%s: sg:file:%.8s...: not a string", __func__, key);
    return rc;
  }
  rc = r->type == REDIS_REPLY_NIL      ? SG_JOBS_ENOTFOUND
       : r->type == REDIS_REPLY_STRING ? file_from(r->str, r->len, job_id, index, expires)
                                       : SG_STORE_EBADDATA;
  freeReplyObject(r);
  if (rc == SG_STORE_EBADDATA)
    sg_redis_logf(s, SG_JOBS_LOG_WARN, "%s: sg:file:%.8s...: its record is malformed", __func__, key);
  return rc;
}

/* ---- the table of operations (store_impl.h; sg_store_redis_new, in store_redis.c, sets it) ---- */

const sg_store_ops SG_REDIS_OPS = {
    "redis",  sg_redis_r_free,   r_ready,  r_model,   r_submit,       r_status,      r_image,       r_cancel,
    r_watch,  r_unwatch, r_event_status, r_event_image, r_stats, r_metrics_text, r_file_put, r_file_get,
};
