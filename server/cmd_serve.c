/* sketchguide serve: settings, one model per device, warm-up, the job manager, the HTTP API, signals and drain. */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"
#include "config.h"
#include "generate.h"
#include "http.h"
#include "jobs.h"
#include "metrics.h"
#include "model.h"
#include "store.h"

#ifndef SG_VERSION
#define SG_VERSION "unknown"
#endif

static const char HELP_HEAD[] =
    "usage: sketchguide serve [--config FILE] [--SETTING VALUE ...] [--print-config]\n\n"
    "Serves sketch-guided generation over HTTP (POST /v1/generate, /v1/jobs/{id}, /healthz, /readyz, /v1/info,\n"
    "/metrics; see README.md). Settings come from the built-in defaults (config/sketchguide.json), then the JSON\n"
    "file of --config or $SKETCHGUIDE_CONFIG, then SKETCHGUIDE_<SETTING> variables, then these flags. The bearer\n"
    "token comes from $SKETCHGUIDE_TOKEN or the file of --token-file. SIGTERM or SIGINT drains and exits 0.\n\n"
    "options:\n"
    "  --config FILE            JSON settings file\n"
    "  --print-config           print the resulting settings as JSON and exit\n";

/* The one log sink of the service: level filter, UTC timestamp, one line per call on stderr. */
typedef struct {
  int level;
} serve_log;

static void log_line(void *user, sg_jobs_log_level level, const char *msg) {
  const serve_log *l = user;
  if ((int)level < l->level) return;
  static const char *const names[] = {"debug", "info", "warn", "error"};
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  struct tm tm;
  gmtime_r(&ts.tv_sec, &tm);
  char when[32];
  strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%S", &tm);
  fprintf(stderr, "%s.%03ldZ %-5s %s\n", when, ts.tv_nsec / 1000000L, names[level <= 3 ? level : 3], msg);
}

static void logf_(serve_log *l, sg_jobs_log_level level, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void logf_(serve_log *l, sg_jobs_log_level level, const char *fmt, ...) {
  char line[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(line, sizeof line, fmt, ap);
  va_end(ap);
  log_line(l, level, line);
}

static void help(void) {
  fputs(HELP_HEAD, stdout);
  for (int32_t i = 0; i < sg_config_n_keys(); i++) {
    const sg_config_key *k = sg_config_key_at(i);
    char flag[64];
    snprintf(flag, sizeof flag, "--%s", k->name);
    for (char *p = flag + 2; *p; p++)
      if (*p == '_') *p = '-';
    printf("  %-24s %s\n", flag, k->help);
  }
  printf("\nEach setting is also SKETCHGUIDE_<NAME> in the environment (SKETCHGUIDE_PORT, SKETCHGUIDE_MAX_QUEUE).\n");
}

/* Returns 1 when a SIGTERM or SIGINT is pending (consuming it). */
static int signal_pending(const sigset_t *set) {
  struct timespec zero = {0, 0};
  return sigtimedwait(set, NULL, &zero) > 0;
}

/* After the drain: keeps the service up (job queries answered, new work refused) while finished jobs' results
 * have not been fetched, for at most limit_s; a second SIGTERM or SIGINT ends the wait. */
static void await_collection(sg_jobs *jobs, const sigset_t *sigs, double limit_s, serve_log *lg) {
  sg_jobs_stats st;
  if (limit_s <= 0 || sg_jobs_stats_get(jobs, &st) || !st.uncollected) return;
  logf_(lg, SG_JOBS_LOG_INFO, "serve: waiting up to %.0f s for the results of %d finished job(s) to be fetched",
        limit_s, (int)st.uncollected);
  struct timespec t0, now, tick = {0, 50 * 1000000L};
  clock_gettime(CLOCK_MONOTONIC, &t0);
  for (;;) {
    if (sigtimedwait(sigs, NULL, &tick) > 0) {
      logf_(lg, SG_JOBS_LOG_WARN, "serve: second signal: not waiting for the results to be fetched");
      return;
    }
    if (sg_jobs_stats_get(jobs, &st) || !st.uncollected) return;
    clock_gettime(CLOCK_MONOTONIC, &now);
    if ((double)(now.tv_sec - t0.tv_sec) + 1e-9 * (double)(now.tv_nsec - t0.tv_nsec) >= limit_s) break;
  }
  logf_(lg, SG_JOBS_LOG_WARN, "serve: %d finished job(s) left with results nobody fetched", (int)st.uncollected);
}

/* One tiny generation so that the first request does not pay for lazy initialisation (guided when possible). */
static int warm_up(sg_model *m, int32_t steps, char *err, size_t errlen) {
  const sg_model_info *info = sg_model_get_info(m);
  int32_t n = info->image_size;
  float *map = calloc((size_t)n * (size_t)n, sizeof *map);
  if (!map) return -1;
  for (int32_t y = n / 4; y < 3 * n / 4; y++) /* a square outline */
    for (int32_t x = n / 4; x < 3 * n / 4; x++)
      map[y * n + x] = (y == n / 4 || y == 3 * n / 4 - 1 || x == n / 4 || x == 3 * n / 4 - 1) ? 1.0f : 0.0f;
  sg_generate_params p = sg_generate_default_params(m);
  p.prompt = "warm-up";
  p.steps = steps;
  p.stop_step = -1;
  p.sketch = info->has_lgp ? map : NULL;
  if (!info->has_lgp) p.beta = 0;
  sg_result r;
  int rc = sg_generate(m, &p, &r, err, errlen);
  if (rc == 0) sg_result_free(&r);
  free(map);
  return rc;
}

int cmd_serve(int argc, char **argv) {
  const char *config_path = getenv(SG_CONFIG_ENV_PREFIX "CONFIG");
  int print_config = 0;
  for (int i = 1; i < argc; i++) { /* first pass: what decides where the settings come from */
    if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
      help();
      return CLI_OK;
    }
    if (!strcmp(argv[i], "--print-config")) print_config = 1;
    if (!strcmp(argv[i], "--config") && i + 1 < argc) config_path = argv[++i];
    else if (!strncmp(argv[i], "--config=", 9)) config_path = argv[i] + 9;
  }
  char err[1024];
  sg_config c = sg_config_default_params();
  if (config_path && *config_path && sg_config_load_file(&c, config_path, err, sizeof err)) {
    cli_error("serve", "%s", err);
    return CLI_USAGE;
  }
  if (sg_config_load_env(&c, err, sizeof err)) {
    cli_error("serve", "%s", err);
    return CLI_USAGE;
  }
  cli_args a = {"serve", argc, argv, 1, 0};
  while (a.i < argc && !a.failed) {
    const char *v = NULL, *arg = argv[a.i];
    if (cli_value(&a, "--config", &v) || cli_flag(&a, "--print-config")) continue;
    char name[64], key[64], src[80];
    const char *eq = strchr(arg, '=');
    size_t n = eq ? (size_t)(eq - arg) : strlen(arg);
    if (strncmp(arg, "--", 2) || n < 3 || n - 2 >= sizeof name) {
      cli_unknown(&a);
      break;
    }
    memcpy(name, arg + 2, n - 2);
    name[n - 2] = 0;
    snprintf(src, sizeof src, "--%s", name);
    if (!sg_config_key_of_flag(name, key, sizeof key)) {
      cli_unknown(&a);
      break;
    }
    if (!cli_value(&a, src, &v) || a.failed) break;
    if (sg_config_set(&c, key, v, src, err, sizeof err)) {
      cli_error("serve", "%s", err);
      return CLI_USAGE;
    }
  }
  if (a.failed) return CLI_USAGE;
  if (sg_config_finish(&c, err, sizeof err)) {
    cli_error("serve", "%s", err);
    return CLI_USAGE;
  }
  if (print_config) {
    char *j = sg_config_to_json(&c);
    if (!j) return CLI_FAIL;
    printf("%s\n", j);
    free(j);
    return CLI_OK;
  }

  /* Signals: blocked in every thread (all start after this) and taken by sigtimedwait below, so nothing runs in a
   * signal handler. A dead client must not kill the process. */
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGTERM);
  sigaddset(&sigs, SIGINT);
  pthread_sigmask(SIG_BLOCK, &sigs, NULL);
  signal(SIGPIPE, SIG_IGN);

  serve_log lg = {c.log_level};
  const char *model_dir = c.model[0] ? c.model : cli_default_model();
  char devs[SG_CONFIG_MAX_DEVICES][32];
  int32_t n_dev = sg_config_devices(&c, devs, SG_CONFIG_MAX_DEVICES);
  int rc = CLI_FAIL;
  sg_metrics *metrics = sg_metrics_new(sg_metrics_default_params());
  sg_model *models[SG_CONFIG_MAX_DEVICES] = {0}; /* one per entry; repeated devices share the first's model */
  int owner[SG_CONFIG_MAX_DEVICES] = {0};
  sg_jobs *jobs = NULL;
  sg_http *http = NULL;
  sg_store *store = NULL;
  sg_store_worker *worker = NULL;
  int frontend = !strcmp(c.role, "frontend"), worker_role = !strcmp(c.role, "worker");
  if (!metrics) goto done;
  if (c.redis_url[0]) { /* cluster mode: jobs in Redis (it may be down now: the store reconnects by itself) */
    sg_store_redis_params rp = sg_store_redis_default_params();
    rp.url = c.redis_url;
    rp.max_queue = c.max_queue;
    rp.keep_finished_seconds = c.keep_finished_seconds;
    rp.lease_seconds = c.lease_seconds;
    rp.heartbeat_seconds = c.heartbeat_seconds;
    rp.max_attempts = c.max_attempts;
    rp.log = log_line;
    rp.log_user = &lg;
    if (!(store = sg_store_redis_new(rp, err, sizeof err))) {
      cli_error("serve", "%s", err);
      rc = CLI_USAGE;
      goto done;
    }
  }

  sg_http_params hp = sg_http_default_params();
  hp.host = c.host;
  hp.port = c.port;
  hp.threads = c.http_threads;
  hp.max_connections = c.max_connections;
  hp.connection_timeout_s = c.connection_timeout_s;
  hp.sse_keepalive_s = c.sse_keepalive_s;
  hp.max_body_bytes = c.max_body_bytes;
  hp.max_image_pixels = c.max_image_pixels;
  hp.max_steps = c.max_steps;
  hp.max_images = c.max_images;
  hp.max_prompt_bytes = c.max_prompt_bytes;
  hp.default_timeout_ms = c.default_timeout_ms;
  hp.max_timeout_ms = c.max_timeout_ms;
  hp.cors_origins = c.cors_origins;
  hp.token = c.token;
  hp.metrics_require_token = c.metrics_require_token;
  hp.ui = c.ui;
  hp.result_ttl_s = c.keep_finished_seconds; /* OpenAI url results last as long as the job keeps its images */
  hp.version = SG_VERSION;
  hp.probes_only = worker_role;
  hp.log = log_line;
  hp.log_user = &lg;
  if (!(http = sg_http_start(hp, metrics, err, sizeof err))) {
    cli_error("serve", "%s", err);
    goto done;
  }
  memset(c.token, 0, sizeof c.token); /* the server keeps its own copy */
  int v6 = strchr(c.host, ':') != NULL;
  printf("listening on http://%s%s%s:%d\n", v6 ? "[" : "", c.host, v6 ? "]" : "", (int)sg_http_port(http));
  fflush(stdout);
  logf_(&lg, SG_JOBS_LOG_INFO, "serve: sketchguide %s on %s port %d; role %s, %s job store; %s%s%s%s", SG_VERSION,
        c.host, (int)sg_http_port(http), c.role, store ? "redis" : "local", frontend ? "no model" : "loading ",
        frontend ? "" : model_dir, frontend ? "" : " on ", frontend ? "" : c.devices);
  if (frontend) { /* no model here: its description comes from the workers, through Redis */
    int said = 0;
    while (sg_http_attach(http, store, NULL, "cluster") != 0) {
      if (!said++) logf_(&lg, SG_JOBS_LOG_INFO, "serve: waiting for a worker to publish its model in Redis");
      struct timespec tick = {0, 250 * 1000000L};
      if (sigtimedwait(&sigs, NULL, &tick) > 0) {
        rc = CLI_OK;
        goto done;
      }
    }
    printf("ready: frontend (redis job store)\n");
    fflush(stdout);
    logf_(&lg, SG_JOBS_LOG_INFO, "serve: ready (frontend)");
    goto serve;
  }

  int32_t threads = c.threads > 0 ? c.threads : cli_default_threads();
  for (int32_t i = 0; i < n_dev; i++) {
    for (int32_t k = 0; k < i && !models[i]; k++)
      if (!strcmp(devs[k], devs[i])) models[i] = models[k];
    if (models[i]) continue;
    sg_model_params mp = sg_model_default_params();
    mp.device = devs[i];
    mp.threads = threads;
    double t0 = cli_now();
    if (!(models[i] = sg_model_load(model_dir, mp, err, sizeof err))) {
      logf_(&lg, SG_JOBS_LOG_ERROR, "serve: model %s on %s: %s", model_dir, devs[i], err);
      goto done;
    }
    owner[i] = 1;
    double t1 = cli_now();
    if (c.warmup_steps > 0 && warm_up(models[i], c.warmup_steps, err, sizeof err)) {
      logf_(&lg, SG_JOBS_LOG_ERROR, "serve: warm-up on %s: %s", devs[i], err);
      goto done;
    }
    logf_(&lg, SG_JOBS_LOG_INFO, "serve: model %s on %s loaded in %.2f s, warmed up in %.2f s",
          sg_model_get_info(models[i])->name, devs[i], t1 - t0, cli_now() - t1);
    if (signal_pending(&sigs)) {
      logf_(&lg, SG_JOBS_LOG_INFO, "serve: stopped while loading");
      rc = CLI_OK;
      goto done;
    }
  }
  sg_jobs_params jp = sg_jobs_default_params();
  jp.max_queue = store ? n_dev : c.max_queue; /* cluster mode: the queue is Redis's; a worker takes what it runs */
  jp.max_batch = c.max_batch;
  jp.keep_finished_count = c.keep_finished_count;
  jp.keep_finished_seconds = c.keep_finished_seconds;
  jp.log = log_line;
  jp.log_user = &lg;
  if (!(jobs = sg_jobs_new(models, n_dev, jp, err, sizeof err))) {
    logf_(&lg, SG_JOBS_LOG_ERROR, "serve: %s", err);
    goto done;
  }
  if (store) {
    if (!(worker = sg_store_worker_start(store, jobs, sg_model_get_info(models[0]), c.worker_name, err,
                                         sizeof err))) {
      logf_(&lg, SG_JOBS_LOG_ERROR, "serve: %s", err);
      goto done;
    }
  } else if (!(store = sg_store_local_new(jobs))) {
    logf_(&lg, SG_JOBS_LOG_ERROR, "serve: out of memory");
    goto done;
  }
  /* a redis store knows the model once the worker has published it (at its first contact with Redis) */
  while (sg_http_attach(http, store, sg_model_get_info(models[0]), c.devices) != 0) {
    struct timespec tick = {0, 100 * 1000000L};
    if (sigtimedwait(&sigs, NULL, &tick) > 0) {
      rc = CLI_OK;
      goto done;
    }
  }
  printf("ready: model %s, %d worker(s) on %s\n", sg_model_get_info(models[0])->name, (int)n_dev, c.devices);
  fflush(stdout);
  logf_(&lg, SG_JOBS_LOG_INFO, "serve: ready");
serve:;

  int sig;
  do {
    sig = sigwaitinfo(&sigs, NULL);
  } while (sig < 0 && errno == EINTR);
  logf_(&lg, SG_JOBS_LOG_INFO, "serve: %s: draining (up to %.0f s for queued and running jobs)",
        sig == SIGINT ? "SIGINT" : "SIGTERM", c.drain_seconds);
  sg_http_drain(http);
  if (worker) { /* cluster mode: running jobs finish and are stored, or go back to the queue for another worker */
    if (sg_store_worker_stop(worker, c.drain_seconds) != 0)
      logf_(&lg, SG_JOBS_LOG_WARN, "serve: the drain time passed; the remaining jobs went back to the queue");
    worker = NULL;
  } else if (jobs) {
    if (sg_jobs_drain(jobs, c.drain_seconds) != 0)
      logf_(&lg, SG_JOBS_LOG_WARN, "serve: the drain time passed; the remaining jobs were cancelled");
    await_collection(jobs, &sigs, c.collect_seconds, &lg);
  }
  rc = CLI_OK;
done:
  /* the answers of the drained jobs go out first; a frontend's waiting clients' jobs run elsewhere and may take
   * up to drain_seconds to finish */
  if (frontend) sg_http_stop(http, c.drain_seconds);
  else sg_http_stop(http, 10.0);
  if (worker) sg_store_worker_stop(worker, 0);
  sg_store_free(store);
  sg_jobs_free(jobs);
  for (int32_t i = 0; i < n_dev; i++)
    if (owner[i]) sg_model_free(models[i]);
  sg_metrics_free(metrics);
  if (http || rc == CLI_OK) logf_(&lg, SG_JOBS_LOG_INFO, "serve: stopped");
  return rc;
}
