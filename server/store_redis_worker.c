/* The `redis` job store's worker (sg_store_worker): it runs the stream's jobs on a local job manager. */
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
#include <time.h>
#include <unistd.h>

#include "errbuf.h"
#include "store_impl.h"
#include "store_redis_impl.h"

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
    redisReply *r = sg_redis_run_argv(w->s, argc, argv, len, rc);
    if (r || *rc != SG_STORE_EUNAVAILABLE) return r;
    if (atomic_load(&w->stop) && ++after_stop > 40) return NULL;
    sg_redis_sleep_ms(250);
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
  sg_redis_arg_s(&a, "EVAL");
  sg_redis_arg_s(&a, LUA_FINISH);
  sg_redis_arg_s(&a, "4");
  sg_redis_arg_s(&a, k1);
  sg_redis_arg_s(&a, QUEUE);
  sg_redis_arg_s(&a, STREAM_JOBS);
  sg_redis_arg_s(&a, k4);
  sg_redis_arg_s(&a, id);
  sg_redis_arg_s(&a, w->name);
  sg_redis_arg_s(&a, entry);
  sg_redis_arg_fmt(&a, "%.0f", s->p.keep_finished_seconds);
  sg_redis_arg_s(&a, sg_job_state_name(state));
  sg_redis_arg_s(&a, e == SG_JOB_ERR_NONE ? "" : sg_job_error_name(e));
  sg_redis_arg_s(&a, message ? message : "");
  sg_redis_arg_fmt(&a, "%d", (int)(state == SG_JOB_SUCCEEDED ? n_png : 0));
  sg_redis_arg_fmt(&a, "%d", st ? (int)st->step : 0);
  sg_redis_arg_fmt(&a, "%d", st ? (int)st->total : 0);
  sg_redis_arg_fmt(&a, "%.6f", sg_redis_wall_now());
  if (st) {
    const double t[9] = {st->timings.text,    st->timings.vae_encode, st->timings.unet,
                         st->timings.guided_forward, st->timings.lgp, st->timings.backward,
                         st->timings.sampler, st->timings.vae_decode, st->timings.total};
    for (int i = 0; i < 9; i++) {
      sg_redis_arg_s(&a, SG_REDIS_STATUS_FIELDS[F_T0 + i]);
      sg_redis_arg_fmt(&a, "%.6f", t[i]);
    }
    sg_redis_arg_s(&a, "guided_steps");
    sg_redis_arg_fmt(&a, "%d", (int)st->guided_steps);
    sg_redis_arg_s(&a, "started"); /* the engine's own start, this run's */
    sg_redis_arg_fmt(&a, "%.6f", st->started > 0 ? st->started : sg_redis_wall_now());
  }
  sg_redis_arg_s(&a, "--");
  for (int32_t i = 0; state == SG_JOB_SUCCEEDED && i < n_png; i++) sg_redis_arg_bin(&a, png[i], plen[i]);
  int rc;
  redisReply *r = a.overflow ? NULL : run_persist(w, a.n, a.v, a.len, &rc);
  const char *v = sg_redis_rstr(r);
  if (!v || strcmp(v, "ok"))
    sg_redis_logf(s, v && !strcmp(v, "lost") ? SG_JOBS_LOG_INFO : SG_JOBS_LOG_WARN, "%s: job %s: result %s", __func__,
                  id, v && !strcmp(v, "lost") ? "dropped: another worker took the job over"
                                              : "not stored (Redis unreachable)");
  else
    sg_redis_logf(s, SG_JOBS_LOG_INFO, "%s: job %s %s on %s", __func__, id, sg_job_state_name(state), w->name);
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
    redisReply *r = sg_redis_run_argv(s, 8, argv, len, &rc);
    if (!r) return -1; /* Redis away: tried again later, or at the end */
    x->step_sent = k;
    if (r->type == REDIS_REPLY_INTEGER && r->integer != 0) {
      if (r->integer == 2)
        sg_redis_logf(s, SG_JOBS_LOG_WARN, "%s: job %s was taken over by another worker; stopping it here", __func__,
                      x->id);
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
    if (failed) sg_redis_sleep_ms(250); /* Redis is away: no busy loop */
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
    sg_redis_logf(s, SG_JOBS_LOG_INFO, "%s: job %s given back to the queue", __func__, x->id);
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
  if (!entry || entry->type != REDIS_REPLY_ARRAY || entry->elements != 2 || !sg_redis_rstr(entry->element[0])) return;
  const char *eid = entry->element[0]->str;
  const redisReply *fv = entry->element[1];
  const char *id = NULL;
  if (fv && fv->type == REDIS_REPLY_ARRAY)
    for (size_t i = 0; i + 1 < fv->elements; i += 2)
      if (sg_redis_rstr(fv->element[i]) && !strcmp(fv->element[i]->str, "id")) id = sg_redis_rstr(fv->element[i + 1]);
  int rc;
  if (!sg_redis_is_job_id(id)) { /* a hostile or truncated entry: dropped, nothing else is affected */
    sg_redis_logf(s, SG_JOBS_LOG_WARN, "%s: stream entry %s names no job; dropped", __func__, eid);
    redisReply *r = sg_redis_run_fmt(s, &rc, "XACK %s %s %s", STREAM_JOBS, GROUP, eid);
    if (r) freeReplyObject(r);
    r = sg_redis_run_fmt(s, &rc, "XDEL %s %s", STREAM_JOBS, eid);
    if (r) freeReplyObject(r);
    return;
  }
  char k1[64], k4[64], now[32], maxa[16], ttl[32];
  snprintf(k1, sizeof k1, "sg:job:%s", id);
  snprintf(k4, sizeof k4, "sg:job:%s:ev", id);
  snprintf(now, sizeof now, "%.6f", sg_redis_wall_now());
  snprintf(maxa, sizeof maxa, "%d", (int)s->p.max_attempts);
  snprintf(ttl, sizeof ttl, "%.0f", s->p.keep_finished_seconds);
  args a = {0};
  const char *head[] = {"EVAL", LUA_START, "4", k1, QUEUE, STREAM_JOBS, k4, id, w->name, maxa, now, eid, ttl};
  for (size_t i = 0; i < sizeof head / sizeof *head; i++) sg_redis_arg_s(&a, head[i]);
  for (int i = 0; i < N_REQ_FIELDS; i++) sg_redis_arg_s(&a, REQ_FIELDS[i]);
  redisReply *r = sg_redis_run_argv(s, a.n, a.v, a.len, &rc);
  if (!r) return; /* Redis went away: the entry stays pending and is claimed again after the lease */
  const char *verdict = r->type == REDIS_REPLY_ARRAY && r->elements >= 1 ? sg_redis_rstr(r->element[0]) : NULL;
  if (!verdict || strcmp(verdict, "run")) {
    if (verdict && strcmp(verdict, "final"))
      sg_redis_logf(s, SG_JOBS_LOG_WARN, "%s: job %s: %s", __func__, id,
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
#define FV(i) (sg_redis_rstr(f->element[i]))
  if (!bad && !(q.prompt = FV(R_PROMPT))) bad = "prompt";
  if (!bad) q.negative_prompt = FV(R_NEG) ? FV(R_NEG) : "";
  if (!bad && sg_redis_parse_f64(FV(R_BETA), &q.beta)) bad = "beta";
  if (!bad && sg_redis_parse_f64(FV(R_STOP), &q.stop)) bad = "stop";
  if (!bad && (sg_redis_parse_i64(FV(R_STOP_STEP), -1, 1000000, &v) || (q.stop_step = (int32_t)v, 0)))
    bad = "stop_step";
  if (!bad && (sg_redis_parse_i64(FV(R_STEPS), 1, 1000000, &v) || (q.steps = (int32_t)v, 0))) bad = "steps";
  if (!bad && sg_redis_parse_f64(FV(R_CFG), &q.cfg)) bad = "cfg";
  if (!bad && sg_redis_parse_i64(FV(R_SEED), 0, INT64_MAX, &q.seed)) bad = "seed";
  if (!bad && (sg_redis_parse_i64(FV(R_SAMPLER), 0, 3, &v) || (q.sampler = (sg_sampler_kind)v, 0))) bad = "sampler";
  if (!bad && sg_redis_parse_f64(FV(R_ETA), &q.eta)) bad = "eta";
  if (!bad && (sg_redis_parse_i64(FV(R_N), 1, SG_JOBS_MAX_IMAGES, &v) || (q.n_images = (int32_t)v, 0))) bad = "n";
  if (!bad && sg_redis_parse_f64(FV(R_DEADLINE), &d)) bad = "deadline";
  if (!bad && d > 0) q.deadline = sg_jobs_now() + (d - sg_redis_wall_now());
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
  if (!bad && (sg_redis_parse_i64(FV(R_NEXTRA), 0, SG_JOBS_MAX_EXTRA_TEXT, &v) || (q.n_extra_text = (int32_t)v, 0)))
    bad = "n_extra";
  int cancel = !bad && FV(R_CANCEL) && !strcmp(FV(R_CANCEL), "1");
#undef FV
  if (!bad && q.n_extra_text) { /* the extra PNG text, read apart (its field names depend on its count) */
    args x = {0};
    sg_redis_arg_s(&x, "HMGET");
    sg_redis_arg_s(&x, k1);
    for (int32_t i = 0; i < q.n_extra_text; i++) {
      sg_redis_arg_fmt(&x, "xk%d", (int)i);
      sg_redis_arg_fmt(&x, "xv%d", (int)i);
    }
    redisReply *xr = sg_redis_run_argv(s, x.n, x.v, x.len, &rc);
    if (!xr || xr->type != REDIS_REPLY_ARRAY || xr->elements != (size_t)(2 * q.n_extra_text)) bad = "extra text";
    for (int32_t i = 0; !bad && i < 2 * q.n_extra_text; i++)
      if (!sg_redis_rstr(xr->element[i]) || !(xs[i] = strdup(xr->element[i]->str))) bad = "extra text";
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
      sg_redis_logf(s, SG_JOBS_LOG_INFO, "%s: job %s started on %s (entry %s)", __func__, id, w->name, eid);
      if (cancel) sg_jobs_cancel(w->jobs, x->local);
    }
  } else {
    char m[160];
    snprintf(m, sizeof m, "the job's record in Redis is malformed: %s", bad);
    sg_redis_logf(s, SG_JOBS_LOG_WARN, "%s: job %s: %s", __func__, id, m);
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
  redisReply *r = sg_redis_run_fmt(w->s, &rc, "SET %s %s", MODEL, text);
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
      redisContext *g = sg_redis_conn_get(s);
      redisReply *r = g ? redisCommand(g, "XGROUP CREATE %s %s 0 MKSTREAM", STREAM_JOBS, GROUP) : NULL;
      int ok = r && (r->type == REDIS_REPLY_STATUS || (r->type == REDIS_REPLY_ERROR && strstr(r->str, "BUSYGROUP")));
      if (r && !ok)
        sg_redis_logf(s, SG_JOBS_LOG_WARN, "%s: XGROUP CREATE: %s", __func__,
                      r->type == REDIS_REPLY_ERROR ? r->str : "?");
      atomic_store(&s->up, r != NULL);
      if (r) freeReplyObject(r);
      sg_redis_conn_put(s, g);
      if (!ok) {
        sg_redis_sleep_ms(500);
        continue;
      }
      publish_model(w);
      ready = 1;
      sg_redis_logf(s, SG_JOBS_LOG_INFO, "%s: worker %s takes jobs (%d slot(s), lease %.1f s)", __func__, w->name,
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
    redisReply *r = sg_redis_run_fmt(s, &rc, "XAUTOCLAIM %s %s %s %s 0-0 COUNT 1", STREAM_JOBS, GROUP, w->name, lease);
    int took = 0;
    if (r && r->type == REDIS_REPLY_ARRAY && r->elements >= 2 && r->element[1]->type == REDIS_REPLY_ARRAY)
      for (size_t i = 0; i < r->element[1]->elements; i++) {
        redisReply *e = r->element[1]->element[i];
        if (e->type == REDIS_REPLY_ARRAY && e->elements == 2 && sg_redis_rstr(e->element[0])) {
          sg_redis_logf(s, SG_JOBS_LOG_WARN, "%s: reclaiming stream entry %s from a silent worker", __func__,
                        e->element[0]->str);
          if (e->element[1]->type != REDIS_REPLY_ARRAY) { /* deleted meanwhile */
            redisReply *a = sg_redis_run_fmt(s, &rc, "XACK %s %s %s", STREAM_JOBS, GROUP, e->element[0]->str);
            if (a) freeReplyObject(a);
            continue;
          }
          take(w, e);
          took = 1;
        }
      }
    if (r) freeReplyObject(r);
    if (!r && rc == SG_STORE_EUNAVAILABLE) {
      sg_redis_sleep_ms(500);
      continue;
    }
    if (!r && rc == SG_STORE_EBADDATA) { /* sg:jobs is not a stream: nothing to take until it is repaired */
      sg_redis_logf(s, SG_JOBS_LOG_ERROR, "%s: %s is not a stream", __func__, STREAM_JOBS);
      sg_redis_sleep_ms(1000);
      continue;
    }
    if (took) continue;
    if (!c && !(c = sg_redis_conn_new(s))) {
      atomic_store(&s->up, 0);
      sg_redis_sleep_ms(500);
      continue;
    }
    r = redisCommand(c, "XREADGROUP GROUP %s %s COUNT 1 BLOCK 1000 STREAMS %s >", GROUP, w->name, STREAM_JOBS);
    rc = sg_redis_reply_code(s, r);
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
      sg_redis_sleep_ms(250);
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
      sg_redis_sleep_ms(50);
      elapsed += 50;
      continue;
    }
    elapsed = 0;
    args a = {0};
    sg_redis_arg_s(&a, "XCLAIM");
    sg_redis_arg_s(&a, STREAM_JOBS);
    sg_redis_arg_s(&a, GROUP);
    sg_redis_arg_s(&a, w->name);
    sg_redis_arg_s(&a, "0");
    char ids[32][48];
    int n = 0, busy;
    pthread_mutex_lock(&w->mu);
    for (run *x = w->runs; x && n < 32; x = x->next) snprintf(ids[n++], sizeof ids[0], "%s", x->entry);
    busy = w->n_runs;
    pthread_mutex_unlock(&w->mu);
    for (int i = 0; i < n; i++) sg_redis_arg_s(&a, ids[i]);
    sg_redis_arg_s(&a, "JUSTID");
    int rc;
    redisReply *r = n ? sg_redis_run_argv(s, a.n, a.v, a.len, &rc) : NULL;
    if (r) freeReplyObject(r);
    char state[128];
    snprintf(state, sizeof state, "{\"t\":%.3f,\"busy\":%d,\"slots\":%d}", sg_redis_wall_now(), busy, (int)w->slots);
    r = sg_redis_run_fmt(s, &rc, "HSET %s %s %s", WORKERS, w->name, state);
    if (r) freeReplyObject(r);
  }
  return NULL;
}

sg_store_worker *sg_store_worker_start(sg_store *b, sg_jobs *jobs, const sg_model_info *info, const char *name,
                                       char *err, size_t errlen) {
  if (!b || b->ops != &SG_REDIS_OPS || !jobs || !info) {
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
  redisReply *r = sg_redis_run_fmt(w->s, &rc2, "HDEL %s %s", WORKERS, w->name);
  if (r) freeReplyObject(r);
  pthread_mutex_destroy(&w->mu);
  pthread_cond_destroy(&w->cv);
  pthread_cond_destroy(&w->mcv);
  free(w);
  return rc ? SG_JOBS_ETIMEDOUT : 0;
}
