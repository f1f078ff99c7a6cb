/* The `redis` job store (store.h): jobs in a Redis stream with a consumer group, their records in hashes, progress in
 * per-job streams, PNGs in strings; a dispatcher thread that feeds watches from those streams; and the worker side
 * (sg_store_worker) that runs the stream's jobs on a local job manager. hiredis only in store_redis*.c.
 *
 * Its files (the types and functions they share: store_redis_impl.h): store_redis.c, connections, reading replies
 * and construction; store_redis_jobs.c, the job's records, submit, image, cancel, watches and the dispatcher, the
 * model, stats, metrics, the keys of url results, and the table of operations; store_redis_worker.c, the worker. */
#include "store.h"

#include <ctype.h>
#include <errno.h>
#include <hiredis/hiredis.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "errbuf.h"
#include "store_impl.h"
#include "store_redis_impl.h"

void sg_redis_logf(rstore *s, sg_jobs_log_level level, const char *fmt, ...) {
  if (!s->p.log) return;
  char line[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(line, sizeof line, fmt, ap);
  va_end(ap);
  s->p.log(s->p.log_user, level, line);
}

double sg_redis_wall_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

void sg_redis_sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

/* ---- connections ---- */

redisContext *sg_redis_conn_new(rstore *s) {
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

redisContext *sg_redis_conn_get(rstore *s) {
  redisContext *c = NULL;
  pthread_mutex_lock(&s->mu);
  if (s->n_idle) c = s->idle[--s->n_idle];
  pthread_mutex_unlock(&s->mu);
  if (!c) c = sg_redis_conn_new(s);
  if (!c) atomic_store(&s->up, 0);
  return c;
}

void sg_redis_conn_put(rstore *s, redisContext *c) {
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
int sg_redis_reply_code(rstore *s, redisReply *r) {
  if (!r) {
    atomic_store(&s->up, 0);
    return SG_STORE_EUNAVAILABLE;
  }
  atomic_store(&s->up, 1);
  if (r->type != REDIS_REPLY_ERROR) return 0;
  if (!strncmp(r->str, "WRONGTYPE", 9)) return SG_STORE_EBADDATA;
  sg_redis_logf(s, SG_JOBS_LOG_WARN, "redis: %s", r->str);
  return SG_STORE_EUNAVAILABLE;
}

/* Runs one command (argv with lengths: binary safe) on a pooled connection. Returns the reply (the caller frees it)
 * with *rc 0, or NULL with *rc a store code. */
redisReply *sg_redis_run_argv(rstore *s, int argc, const char **argv, const size_t *len, int *rc) {
  redisContext *c = sg_redis_conn_get(s);
  if (!c) {
    *rc = SG_STORE_EUNAVAILABLE;
    return NULL;
  }
  redisReply *r = redisCommandArgv(c, argc, argv, len);
  sg_redis_conn_put(s, c);
  *rc = sg_redis_reply_code(s, r);
  if (*rc && r) {
    freeReplyObject(r);
    r = NULL;
  }
  return r;
}

redisReply *sg_redis_run_fmt(rstore *s, int *rc, const char *fmt, ...) {
  redisContext *c = sg_redis_conn_get(s);
  if (!c) {
    *rc = SG_STORE_EUNAVAILABLE;
    return NULL;
  }
  va_list ap;
  va_start(ap, fmt);
  redisReply *r = redisvCommand(c, fmt, ap);
  va_end(ap);
  sg_redis_conn_put(s, c);
  *rc = sg_redis_reply_code(s, r);
  if (*rc && r) {
    freeReplyObject(r);
    r = NULL;
  }
  return r;
}

void sg_redis_arg_bin(args *a, const void *p, size_t n) {
  if (a->n >= MAX_ARGS) {
    a->overflow = 1;
    return;
  }
  a->v[a->n] = p;
  a->len[a->n++] = n;
}
void sg_redis_arg_s(args *a, const char *s) { sg_redis_arg_bin(a, s ? s : "", s ? strlen(s) : 0); }
void sg_redis_arg_fmt(args *a, const char *fmt, ...) {
  if (a->n >= MAX_ARGS) {
    a->overflow = 1;
    return;
  }
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(a->num[a->n], sizeof a->num[a->n], fmt, ap);
  va_end(ap);
  sg_redis_arg_s(a, a->num[a->n]);
}

/* ---- reading replies defensively ---- */

int sg_redis_is_job_id(const char *s) {
  if (!s || strlen(s) != SG_JOB_ID_LEN - 1) return 0;
  for (const char *p = s; *p; p++)
    if (!isdigit((unsigned char)*p) && !(*p >= 'a' && *p <= 'f')) return 0;
  return 1;
}

/* Whether s is a stream id "MS-SEQ" (digits, a dash, digits). */
int sg_redis_is_stream_id(const char *s) {
  if (!s || !*s || strlen(s) > 41) return 0;
  const char *p = s;
  if (!isdigit((unsigned char)*p)) return 0;
  while (isdigit((unsigned char)*p)) p++;
  if (*p++ != '-' || !isdigit((unsigned char)*p)) return 0;
  while (isdigit((unsigned char)*p)) p++;
  return *p == 0;
}

/* A reply element as text: a string or a status; NULL otherwise. */
const char *sg_redis_rstr(const redisReply *r) {
  return r && (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS) ? r->str : NULL;
}

int sg_redis_parse_i64(const char *t, int64_t lo, int64_t hi, int64_t *out) {
  if (!t || !*t) return -1;
  char *e;
  errno = 0;
  long long v = strtoll(t, &e, 10);
  if (errno || *e || v < lo || v > hi) return -1;
  *out = v;
  return 0;
}

int sg_redis_parse_f64(const char *t, double *out) {
  if (!t || !*t) return -1;
  char *e;
  errno = 0;
  double v = strtod(t, &e);
  if (errno || *e || !isfinite(v)) return -1;
  *out = v;
  return 0;
}

int sg_redis_state_of(const char *t, sg_job_state *out) {
  for (int k = SG_JOB_QUEUED; k <= SG_JOB_CANCELLED; k++)
    if (t && !strcmp(t, sg_job_state_name((sg_job_state)k))) {
      *out = (sg_job_state)k;
      return 0;
    }
  return -1;
}

int sg_redis_error_of(const char *t, sg_job_error *out) {
  for (int k = SG_JOB_ERR_NONE; k <= SG_JOB_ERR_SHUTDOWN; k++)
    if (t && !strcmp(t, sg_job_error_name((sg_job_error)k))) {
      *out = (sg_job_error)k;
      return 0;
    }
  return -1;
}

/* ---- construction ---- */

void sg_redis_r_free(sg_store *b) {
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
    if (sg_redis_parse_i64(num, 1, 65535, &v)) return -1;
    s->port = (int)v;
  }
  s->db = 0;
  if (*e == '/' && e[1]) {
    int64_t v;
    if (sg_redis_parse_i64(e + 1, 0, 15, &v)) return -1;
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
  s->base.ops = &SG_REDIS_OPS;
  s->p = p;
  s->p.url = NULL;
  pthread_mutex_init(&s->mu, NULL);
  pthread_mutex_init(&s->wmu, NULL);
  pthread_mutex_init(&s->cbmu, NULL);
  pthread_mutex_init(&s->cmu, NULL);
  s->workers_at = -1e9;
  char rid[SG_JOB_ID_LEN];
  if (sg_redis_new_id(rid)) {
    sg_redis_r_free(&s->base);
    sg_set_err(err, errlen, "no random bytes");
    return NULL;
  }
  snprintf(s->wake_key, sizeof s->wake_key, "sg:wake:%.16s", rid);
  snprintf(s->wake_last, sizeof s->wake_last, "$");
  redisContext *c = sg_redis_conn_new(s);
  if (c) {
    atomic_store(&s->up, 1);
    redisReply *r = redisCommand(c, "XADD %s MAXLEN ~ 16 * w 0", s->wake_key);
    if (r && r->type == REDIS_REPLY_STRING) snprintf(s->wake_last, sizeof s->wake_last, "%s", r->str);
    if (r) freeReplyObject(r);
    r = redisCommand(c, "EXPIRE %s 86400", s->wake_key);
    if (r) freeReplyObject(r);
    sg_redis_conn_put(s, c);
  }
  if (pthread_create(&s->disp, NULL, sg_redis_dispatcher_main, s)) {
    sg_redis_r_free(&s->base);
    sg_set_err(err, errlen, "cannot start the Redis dispatcher thread");
    return NULL;
  }
  s->disp_started = 1;
  return &s->base;
}
