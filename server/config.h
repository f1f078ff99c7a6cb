/* The service's settings: built-in defaults, then a JSON file, then SKETCHGUIDE_* variables, then flags.
 *
 * Basic usage:
 *   sg_config c = sg_config_default_params();
 *   char err[512];
 *   if (sg_config_load_file(&c, "config/sketchguide.json", err, sizeof err) ||
 *       sg_config_load_env(&c, err, sizeof err) ||
 *       sg_config_set(&c, "port", "0", "--port", err, sizeof err) ||
 *       sg_config_finish(&c, err, sizeof err))
 *     fprintf(stderr, "%s\n", err);      // the message names the setting and where it came from
 *
 * Every setting has one name: the JSON key ("max_queue"), the variable SKETCHGUIDE_ plus the name in upper case
 * (SKETCHGUIDE_MAX_QUEUE) and the flag -- plus the name with dashes (--max-queue). The bearer token is never a
 * setting of its own: it comes from the variable SKETCHGUIDE_TOKEN or from the file named by token_file, so that
 * it never shows in a config file, on a command line or in sg_config_to_json.
 *
 * Errors: every call returns 0 (SG_CONFIG_OK) or a negative SG_CONFIG_E* code with a message in err (errlen bytes)
 * that names the setting and its source ("--port: 'x' is not an integer", "cfg.json: max_queue: ..."). Nothing
 * here prints, exits or keeps global state.
 */
#ifndef SG_CONFIG_H
#define SG_CONFIG_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SG_CONFIG_ENV_PREFIX "SKETCHGUIDE_"

/* Most workers (entries of devices). */
#define SG_CONFIG_MAX_DEVICES 64

enum {
  SG_CONFIG_OK = 0,
  SG_CONFIG_EINVAL = -1, /* a bad value, an unknown setting, or a malformed file */
  SG_CONFIG_EIO = -2,    /* a file could not be read */
};

/* Log levels, as sg_jobs_log_level. */
enum { SG_CONFIG_LOG_DEBUG = 0, SG_CONFIG_LOG_INFO, SG_CONFIG_LOG_WARN, SG_CONFIG_LOG_ERROR };

typedef struct {
  char host[256];                /* "127.0.0.1" */
  int32_t port;                  /* 8080; 0 = any free port */
  char model[4096];              /* "" = $SKETCHGUIDE_MODEL's fallback: the bundled model */
  char devices[512];             /* "cpu"; a comma-separated list, one worker each */
  int32_t threads;               /* torch CPU threads; 0 = the cores this process may use (cli_default_threads) */
  int32_t http_threads;          /* HTTP event-loop threads; 2 */
  int32_t max_connections;       /* 256 */
  int32_t connection_timeout_s;  /* idle or stalled connections are closed after it; 30 (1 .. 3600: never 0, which
                                    would let stalled clients hold every connection) */
  int32_t sse_keepalive_s;       /* 15: a comment line on event streams quiet this long (sg_http_params) */
  int32_t max_queue;             /* 16 jobs waiting for a worker */
  int32_t max_batch;             /* 1 job per worker at a time; more share each step's U-Net pass (sg_jobs_params) */
  int64_t max_body_bytes;        /* 16 MiB */
  int64_t max_image_pixels;      /* 4096 x 4096 */
  int32_t max_steps;             /* 150 */
  int32_t max_images;            /* 4 per request */
  int32_t max_prompt_bytes;      /* 2000 bytes of UTF-8, prompt and negative prompt each */
  int64_t default_timeout_ms;    /* 300000: the deadline of a request without timeout_ms */
  int64_t max_timeout_ms;        /* 3600000 */
  int32_t keep_finished_count;   /* 256 finished jobs kept for queries */
  double keep_finished_seconds;  /* 600 */
  double drain_seconds;          /* 30: how long a shutdown waits for queued and running jobs */
  double collect_seconds;        /* 10: then how long it waits for finished jobs' results to be fetched */
  char cors_origins[4096];       /* "" = CORS off; comma-separated origins, or "*" */
  char token_file[4096];         /* "" = none */
  int metrics_require_token;     /* 0: /metrics stays open like /healthz and /readyz */
  int ui;                        /* 1: the sketch pad at / (sg_http_params.ui) */
  int32_t log_level;             /* SG_CONFIG_LOG_INFO */
  int32_t warmup_steps;          /* 2; 0 = no warm-up generation */
  char role[16];                 /* "all"; "frontend" (HTTP, no model) or "worker" (model, probes only): redis_url */
  char redis_url[512];           /* "" = local mode; "redis://HOST[:PORT][/DB]" = cluster mode */
  char worker_name[128];         /* "" = host name and pid */
  double lease_seconds;          /* 10 */
  double heartbeat_seconds;      /* 2 */
  int32_t max_attempts;          /* 3 */
  char token[1024];              /* set by load_env (SKETCHGUIDE_TOKEN) or finish (token_file); "" = no auth */
  int _token_from_env;
} sg_config;

/* One setting, for help texts and documentation checks. */
typedef struct {
  const char *name;  /* JSON key */
  const char *help;  /* one line */
} sg_config_key;

/* Returns the built-in defaults (the values of config/sketchguide.json). */
sg_config sg_config_default_params(void);

/* Returns the number of settings, and setting i (0-based; NULL out of range). */
int32_t sg_config_n_keys(void);
const sg_config_key *sg_config_key_at(int32_t i);

/* Applies the JSON object in the file at path (only the keys it has; unknown keys are an error). Returns 0,
 * SG_CONFIG_EIO when the file cannot be read, or SG_CONFIG_EINVAL. */
int sg_config_load_file(sg_config *c, const char *path, char *err, size_t errlen);

/* Applies every SKETCHGUIDE_<NAME> variable that is set and not empty (an empty string clears a text setting),
 * and SKETCHGUIDE_TOKEN. Other SKETCHGUIDE_* variables are ignored. Returns 0 or SG_CONFIG_EINVAL. */
int sg_config_load_env(sg_config *c, char *err, size_t errlen);

/* Sets the setting key (the JSON name) from text; source names it in messages. Returns 0 or SG_CONFIG_EINVAL
 * (unknown key, or a value of the wrong type or out of range). */
int sg_config_set(sg_config *c, const char *key, const char *value, const char *source, char *err, size_t errlen);

/* Returns the JSON name of a flag's name ("max-queue" -> "max_queue") written into buf, or NULL when no setting
 * has that flag. */
const char *sg_config_key_of_flag(const char *flag, char *buf, size_t buflen);

/* Checks the settings together (timeouts, devices, origins) and reads token_file. Returns 0, SG_CONFIG_EIO or
 * SG_CONFIG_EINVAL. */
int sg_config_finish(sg_config *c, char *err, size_t errlen);

/* Returns the settings as a JSON object in the file's format (without the token) in a buffer the caller frees,
 * or NULL when out of memory. */
char *sg_config_to_json(const sg_config *c);

/* Splits devices into out (max entries of 32 bytes). Returns the count, or -1 when the list is malformed. */
int32_t sg_config_devices(const sg_config *c, char (*out)[32], int32_t max);

/* Returns "debug", "info", "warn" or "error"; and the level of such a name, or -1. */
const char *sg_config_log_level_name(int32_t level);
int32_t sg_config_log_level_parse(const char *name);

#ifdef __cplusplus
}
#endif

#endif
