/* Private to server/store_redis*.c: the `redis` store's state, its Redis keys, and what its files share. */
#ifndef SG_STORE_REDIS_IMPL_H
#define SG_STORE_REDIS_IMPL_H

#include <hiredis/hiredis.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "store.h"
#include "store_impl.h"

#define POOL_MAX 16          /* idle connections kept */
#define BLOCK_MS 500         /* the dispatcher's XREAD block */
#define MAX_ARGS 128
#define STREAM_JOBS "sg:jobs"
#define GROUP "workers"
#define QUEUE "sg:queue"
#define WORKERS "sg:workers"
#define MODEL "sg:model"

/* ---- the store and its watches ---- */

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

/* An argument list under construction (strings copied into a growing arena of small buffers). */
typedef struct {
  int n;
  const char *v[MAX_ARGS];
  size_t len[MAX_ARGS];
  char num[MAX_ARGS][40];
  int overflow;
} args;

/* ---- the job's status fields (SG_REDIS_STATUS_FIELDS, in store_redis_jobs.c) ---- */

enum { F_STATE, F_STEP, F_TOTAL, F_WORKER, F_CREATED, F_STARTED, F_FINISHED, F_ERROR, F_MESSAGE, F_N, F_N_READY,
       F_SEED, F_T0, F_GUIDED = F_T0 + 9, N_STATUS_FIELDS };

extern const char *const SG_REDIS_STATUS_FIELDS[];

/* ---- the functions and tables the files share (each one's comment is at its definition) ---- */

/* store_redis.c: the log, clocks, connections, argument lists, reading replies, construction */
void sg_redis_logf(rstore *s, sg_jobs_log_level level, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
double sg_redis_wall_now(void);
void sg_redis_sleep_ms(int ms);
redisContext *sg_redis_conn_new(rstore *s);
redisContext *sg_redis_conn_get(rstore *s);
void sg_redis_conn_put(rstore *s, redisContext *c);
int sg_redis_reply_code(rstore *s, redisReply *r);
redisReply *sg_redis_run_argv(rstore *s, int argc, const char **argv, const size_t *len, int *rc);
redisReply *sg_redis_run_fmt(rstore *s, int *rc, const char *fmt, ...);
void sg_redis_arg_bin(args *a, const void *p, size_t n);
void sg_redis_arg_s(args *a, const char *s);
void sg_redis_arg_fmt(args *a, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int sg_redis_is_job_id(const char *s);
int sg_redis_is_stream_id(const char *s);
const char *sg_redis_rstr(const redisReply *r);
int sg_redis_parse_i64(const char *t, int64_t lo, int64_t hi, int64_t *out);
int sg_redis_parse_f64(const char *t, double *out);
int sg_redis_state_of(const char *t, sg_job_state *out);
int sg_redis_error_of(const char *t, sg_job_error *out);
void sg_redis_r_free(sg_store *b);

/* store_redis_jobs.c: ids, the dispatcher thread, the table of operations */
int sg_redis_new_id(char id[SG_JOB_ID_LEN]);
void *sg_redis_dispatcher_main(void *arg);
extern const sg_store_ops SG_REDIS_OPS;

#endif
