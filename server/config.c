/* The service's settings: one table of names, types and ranges behind the file, variable and flag sources. */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "errbuf.h"
#include "http.h"
#include "jobs.h"
#include "mem.h"
#include "store.h"

typedef enum { T_I32, T_I64, T_F64, T_BOOL, T_STR, T_LIST, T_LEVEL } kind;

typedef struct {
  sg_config_key key;
  kind type;
  size_t off, size; /* size: of a text field */
  double lo, hi;    /* numbers */
} setting;

#define F(field) offsetof(sg_config, field), sizeof(((sg_config *)0)->field)

static const setting SETTINGS[] = {
    {{"host", "address to listen on (IPv4, IPv6 or a name; 0.0.0.0 or :: for every interface)"}, T_STR, F(host), 0, 0},
    {{"port", "TCP port; 0 picks a free one (printed at start)"}, T_I32, F(port), 0, 65535},
    {{"model", "model directory (null: $SKETCHGUIDE_MODEL, else the bundled models/shapes)"}, T_STR, F(model), 0, 0},
    {{"devices", "comma-separated devices, one worker each: cpu, cuda, cuda:N (cpu,cpu: two CPU workers)"}, T_STR,
     F(devices), 0, 0},
    {{"threads", "torch CPU threads (0: the cores this process may use)"}, T_I32, F(threads), 0, 1024},
    {{"http_threads", "HTTP event-loop threads (parsing, image decoding; never inference)"}, T_I32, F(http_threads), 1,
     64},
    {{"max_connections", "most simultaneous connections; more are refused"}, T_I32, F(max_connections), 1, 65536},
    {{"connection_timeout_s", "idle or stalled connections are closed after this many seconds (1 to 3600)"}, T_I32,
     F(connection_timeout_s), 1, 3600},
    {{"sse_keepalive_s", "an event stream quiet this long gets a comment line, for proxies' idle timeouts (0: never)"},
     T_I32, F(sse_keepalive_s), 0, 86400},
    {{"max_queue", "jobs that may wait for a busy worker; beyond it 429"}, T_I32, F(max_queue), 0, 100000},
    {{"max_batch", "jobs each worker advances together, one U-Net pass per step for all (1: one at a time)"}, T_I32,
     F(max_batch), 1, SG_JOBS_MAX_BATCH},
    {{"max_body_bytes", "largest request body; beyond it 413"}, T_I64, F(max_body_bytes), 1024, 2147483647.0},
    {{"max_image_pixels", "largest sketch, width x height, checked before decoding"}, T_I64, F(max_image_pixels), 1,
     268435456.0},
    {{"max_steps", "most sampling steps per request"}, T_I32, F(max_steps), 1, 10000},
    {{"max_images", "most images per request (n)"}, T_I32, F(max_images), 1, 64},
    {{"max_prompt_bytes", "longest prompt and negative prompt, in bytes of UTF-8"}, T_I32, F(max_prompt_bytes), 1,
     65536},
    {{"default_timeout_ms", "deadline of a request that gives no timeout_ms"}, T_I64, F(default_timeout_ms), 1,
     86400000},
    {{"max_timeout_ms", "largest timeout_ms a request may give"}, T_I64, F(max_timeout_ms), 1, 86400000},
    {{"keep_finished_count", "finished jobs kept for status and image queries"}, T_I32, F(keep_finished_count), 1,
     1000000},
    {{"keep_finished_seconds", "how long a finished job is kept"}, T_F64, F(keep_finished_seconds), 1, 1e7},
    {{"drain_seconds", "on SIGTERM/SIGINT, how long queued and running jobs may take before they are cancelled"},
     T_F64, F(drain_seconds), 0, 86400},
    {{"collect_seconds", "after the drain, how long jobs' results nobody has fetched yet keep job queries answered"},
     T_F64, F(collect_seconds), 0, 86400},
    {{"cors_origins", "origins allowed by CORS (a list, or comma-separated; \"*\" for any; empty: CORS off)"}, T_LIST,
     F(cors_origins), 0, 0},
    {{"token_file", "file holding the bearer token (or set SKETCHGUIDE_TOKEN); null: no authentication"}, T_STR,
     F(token_file), 0, 0},
    {{"metrics_require_token", "whether /metrics needs the token (/healthz and /readyz never do)"}, T_BOOL,
     F(metrics_require_token), 0, 0},
    {{"ui", "serve the browser sketch pad at / (false: / answers 404; the API is unchanged)"}, T_BOOL, F(ui), 0, 0},
    {{"log_level", "debug, info, warn or error (prompts are logged at debug only)"}, T_LEVEL, F(log_level), 0, 0},
    {{"warmup_steps", "steps of the warm-up generation on each worker before ready (0: none)"}, T_I32,
     F(warmup_steps), 0, 100},
    {{"role", "all, frontend or worker: what this replica does in cluster mode (redis_url); all without Redis"},
     T_STR, F(role), 0, 0},
    {{"redis_url", "redis://HOST[:PORT][/DB]: cluster mode, jobs kept in Redis (empty: local, in this process)"},
     T_STR, F(redis_url), 0, 0},
    {{"worker_name", "this worker's name in Redis (empty: host name and process id)"}, T_STR, F(worker_name), 0, 0},
    {{"lease_seconds", "cluster mode: a running job whose worker is silent this long is run by another"}, T_F64,
     F(lease_seconds), 0.5, 86400},
    {{"heartbeat_seconds", "cluster mode: a worker's heartbeat period (below half of lease_seconds)"}, T_F64,
     F(heartbeat_seconds), 0.05, 3600},
    {{"max_attempts", "cluster mode: a job started this many times without finishing ends failed"}, T_I32,
     F(max_attempts), 1, 100},
};
#undef F

#define N_SETTINGS ((int32_t)(sizeof SETTINGS / sizeof *SETTINGS))

/* Text settings whose default (and JSON null) is the empty string. */
static int nullable(const setting *s) { return !strcmp(s->key.name, "model") || !strcmp(s->key.name, "token_file"); }

static const char *const LEVELS[] = {"debug", "info", "warn", "error"};

sg_config sg_config_default_params(void) {
  /* the HTTP layer's and the job manager's own defaults, so that each number lives in one place */
  sg_http_params h = sg_http_default_params();
  sg_jobs_params j = sg_jobs_default_params();
  sg_config c;
  memset(&c, 0, sizeof c);
  snprintf(c.host, sizeof c.host, "%s", h.host);
  c.port = h.port;
  snprintf(c.devices, sizeof c.devices, "cpu");
  c.threads = 0;
  c.http_threads = h.threads;
  c.max_connections = h.max_connections;
  c.connection_timeout_s = h.connection_timeout_s;
  c.sse_keepalive_s = h.sse_keepalive_s;
  c.max_queue = j.max_queue;
  c.max_batch = j.max_batch;
  c.max_body_bytes = h.max_body_bytes;
  c.max_image_pixels = h.max_image_pixels;
  c.max_steps = h.max_steps;
  c.max_images = h.max_images;
  c.max_prompt_bytes = h.max_prompt_bytes;
  c.default_timeout_ms = h.default_timeout_ms;
  c.max_timeout_ms = h.max_timeout_ms;
  c.keep_finished_count = j.keep_finished_count;
  c.keep_finished_seconds = j.keep_finished_seconds;
  c.drain_seconds = 30;
  c.collect_seconds = 10;
  c.metrics_require_token = h.metrics_require_token;
  c.ui = h.ui;
  c.log_level = SG_CONFIG_LOG_INFO;
  c.warmup_steps = 2;
  snprintf(c.role, sizeof c.role, "all");
  sg_store_redis_params rp = sg_store_redis_default_params();
  c.lease_seconds = rp.lease_seconds;
  c.heartbeat_seconds = rp.heartbeat_seconds;
  c.max_attempts = rp.max_attempts;
  return c;
}

int32_t sg_config_n_keys(void) { return N_SETTINGS; }

const sg_config_key *sg_config_key_at(int32_t i) { return i >= 0 && i < N_SETTINGS ? &SETTINGS[i].key : NULL; }

const char *sg_config_log_level_name(int32_t level) { return level >= 0 && level < 4 ? LEVELS[level] : "unknown"; }

int32_t sg_config_log_level_parse(const char *name) {
  if (!name) return -1;
  for (int32_t i = 0; i < 4; i++)
    if (!strcasecmp(name, LEVELS[i])) return i;
  if (!strcasecmp(name, "warning")) return SG_CONFIG_LOG_WARN;
  return -1;
}

static const setting *find(const char *key) {
  for (int32_t i = 0; i < N_SETTINGS; i++)
    if (!strcmp(SETTINGS[i].key.name, key)) return &SETTINGS[i];
  return NULL;
}

static void *field(sg_config *c, const setting *s) { return (char *)c + s->off; }
static const void *cfield(const sg_config *c, const setting *s) { return (const char *)c + s->off; }

/* Stores a text value; returns 0 or SG_CONFIG_EINVAL when it does not fit or has control characters. */
static int set_text(sg_config *c, const setting *s, const char *v, const char *src, char *err, size_t errlen) {
  size_t n = strlen(v);
  if (n >= s->size) {
    sg_set_err(err, errlen, "%s: longer than %zu bytes", src, s->size - 1);
    return SG_CONFIG_EINVAL;
  }
  for (size_t i = 0; i < n; i++)
    if ((unsigned char)v[i] < 0x20 || v[i] == 0x7f) {
      sg_set_err(err, errlen, "%s: control characters are not allowed", src);
      return SG_CONFIG_EINVAL;
    }
  memcpy(field(c, s), v, n + 1);
  return 0;
}

/* Stores a number after the range check; returns 0 or SG_CONFIG_EINVAL. */
static int set_number(sg_config *c, const setting *s, double v, const char *src, char *err, size_t errlen) {
  if (!(v >= s->lo && v <= s->hi)) {
    sg_set_err(err, errlen, "%s: %g is out of range (%.15g to %.15g)", src, v, s->lo, s->hi);
    return SG_CONFIG_EINVAL;
  }
  switch (s->type) {
    case T_I32: *(int32_t *)field(c, s) = (int32_t)v; break;
    case T_I64: *(int64_t *)field(c, s) = (int64_t)v; break;
    default: *(double *)field(c, s) = v; break;
  }
  return 0;
}

int sg_config_set(sg_config *c, const char *key, const char *value, const char *source, char *err, size_t errlen) {
  if (err && errlen) *err = 0;
  const char *src = source ? source : key;
  const setting *s = key ? find(key) : NULL;
  if (!c || !s) {
    sg_set_err(err, errlen, "%s: unknown setting", src ? src : "(null)");
    return SG_CONFIG_EINVAL;
  }
  if (!value) {
    sg_set_err(err, errlen, "%s: missing value", src);
    return SG_CONFIG_EINVAL;
  }
  switch (s->type) {
    case T_I32:
    case T_I64: {
      char *end;
      errno = 0;
      long long v = strtoll(value, &end, 10);
      if (end == value || *end || errno) {
        sg_set_err(err, errlen, "%s: '%s' is not an integer", src, value);
        return SG_CONFIG_EINVAL;
      }
      if (v < (long long)s->lo || v > (long long)s->hi) {
        sg_set_err(err, errlen, "%s: %lld is out of range (%.15g to %.15g)", src, v, s->lo, s->hi);
        return SG_CONFIG_EINVAL;
      }
      if (s->type == T_I32) *(int32_t *)field(c, s) = (int32_t)v;
      else *(int64_t *)field(c, s) = (int64_t)v;
      return 0;
    }
    case T_F64: {
      char *end;
      errno = 0;
      double v = strtod(value, &end);
      if (end == value || *end || errno || !isfinite(v)) {
        sg_set_err(err, errlen, "%s: '%s' is not a number", src, value);
        return SG_CONFIG_EINVAL;
      }
      return set_number(c, s, v, src, err, errlen);
    }
    case T_BOOL: {
      static const char *const yes[] = {"true", "1", "yes", "on"}, *const no[] = {"false", "0", "no", "off"};
      for (int i = 0; i < 4; i++) {
        if (!strcasecmp(value, yes[i])) return *(int *)field(c, s) = 1, 0;
        if (!strcasecmp(value, no[i])) return *(int *)field(c, s) = 0, 0;
      }
      sg_set_err(err, errlen, "%s: '%s' is not true or false", src, value);
      return SG_CONFIG_EINVAL;
    }
    case T_LEVEL: {
      int32_t l = sg_config_log_level_parse(value);
      if (l < 0) {
        sg_set_err(err, errlen, "%s: '%s' is not debug, info, warn or error", src, value);
        return SG_CONFIG_EINVAL;
      }
      *(int32_t *)field(c, s) = l;
      return 0;
    }
    case T_STR:
    case T_LIST: return set_text(c, s, value, src, err, errlen);
  }
  return SG_CONFIG_EINVAL;
}

const char *sg_config_key_of_flag(const char *flag, char *buf, size_t buflen) {
  if (!flag || !buf || buflen == 0) return NULL;
  size_t n = strlen(flag);
  if (n + 1 > buflen) return NULL;
  for (size_t i = 0; i <= n; i++) {
    if (flag[i] == '_') return NULL; /* flags use dashes only */
    buf[i] = flag[i] == '-' ? '_' : flag[i];
  }
  return find(buf) ? buf : NULL;
}

/* Applies one JSON value to setting s; src is "file: key". */
static int set_json(sg_config *c, const setting *s, json_t *v, const char *src, char *err, size_t errlen) {
  switch (s->type) {
    case T_I32:
    case T_I64:
      if (!json_is_integer(v)) {
        sg_set_err(err, errlen, "%s: must be an integer", src);
        return SG_CONFIG_EINVAL;
      }
      return set_number(c, s, (double)json_integer_value(v), src, err, errlen);
    case T_F64:
      if (!json_is_number(v)) {
        sg_set_err(err, errlen, "%s: must be a number", src);
        return SG_CONFIG_EINVAL;
      }
      return set_number(c, s, json_number_value(v), src, err, errlen);
    case T_BOOL:
      if (!json_is_boolean(v)) {
        sg_set_err(err, errlen, "%s: must be true or false", src);
        return SG_CONFIG_EINVAL;
      }
      *(int *)field(c, s) = json_is_true(v);
      return 0;
    case T_LEVEL:
    case T_STR:
      if (json_is_null(v) && nullable(s)) return set_text(c, s, "", src, err, errlen);
      if (!json_is_string(v)) {
        sg_set_err(err, errlen, "%s: must be a string%s", src, nullable(s) ? " or null" : "");
        return SG_CONFIG_EINVAL;
      }
      if (s->type == T_LEVEL) {
        char tmp[64];
        snprintf(tmp, sizeof tmp, "%s", json_string_value(v));
        return sg_config_set(c, s->key.name, tmp, src, err, errlen);
      }
      if (strlen(json_string_value(v)) != json_string_length(v)) {
        sg_set_err(err, errlen, "%s: must not contain NUL characters", src);
        return SG_CONFIG_EINVAL;
      }
      return set_text(c, s, json_string_value(v), src, err, errlen);
    case T_LIST: {
      if (json_is_string(v)) return set_text(c, s, json_string_value(v), src, err, errlen);
      if (!json_is_array(v)) {
        sg_set_err(err, errlen, "%s: must be a list of strings", src);
        return SG_CONFIG_EINVAL;
      }
      char buf[sizeof c->cors_origins];
      size_t o = 0, i;
      json_t *e;
      buf[0] = 0;
      json_array_foreach(v, i, e) {
        const char *t = json_string_value(e);
        if (!t || !*t || strchr(t, ',')) {
          sg_set_err(err, errlen, "%s: entry %zu must be a non-empty string without commas", src, i);
          return SG_CONFIG_EINVAL;
        }
        size_t n = strlen(t);
        if (o + n + 2 > sizeof buf) {
          sg_set_err(err, errlen, "%s: longer than %zu bytes", src, sizeof buf - 1);
          return SG_CONFIG_EINVAL;
        }
        if (o) buf[o++] = ',';
        memcpy(buf + o, t, n + 1);
        o += n;
      }
      return set_text(c, s, buf, src, err, errlen);
    }
  }
  return SG_CONFIG_EINVAL;
}

int sg_config_load_file(sg_config *c, const char *path, char *err, size_t errlen) {
  if (err && errlen) *err = 0;
  if (!c || !path) {
    sg_set_err(err, errlen, "config: missing argument");
    return SG_CONFIG_EINVAL;
  }
  FILE *f = fopen(path, "rb");
  if (!f) {
    sg_set_err(err, errlen, "%s: %s", path, strerror(errno));
    return SG_CONFIG_EIO;
  }
  json_error_t je;
  json_t *root = json_loadf(f, JSON_REJECT_DUPLICATES, &je);
  fclose(f);
  if (!root) {
    sg_set_err(err, errlen, "%s: line %d: %s", path, je.line, je.text);
    return SG_CONFIG_EINVAL;
  }
  int rc = 0;
  if (!json_is_object(root)) {
    sg_set_err(err, errlen, "%s: must hold a JSON object", path);
    rc = SG_CONFIG_EINVAL;
  }
  const char *key;
  json_t *v;
  json_object_foreach(root, key, v) {
    if (rc) break;
    char src[512];
    snprintf(src, sizeof src, "%s: %s", path, key);
    const setting *s = find(key);
    if (!s) {
      sg_set_err(err, errlen, "%s: unknown setting '%s'", path, key);
      rc = SG_CONFIG_EINVAL;
    } else {
      rc = set_json(c, s, v, src, err, errlen);
    }
  }
  json_decref(root);
  return rc;
}

int sg_config_load_env(sg_config *c, char *err, size_t errlen) {
  if (err && errlen) *err = 0;
  for (int32_t i = 0; i < N_SETTINGS; i++) {
    const setting *s = &SETTINGS[i];
    char name[96];
    size_t n = snprintf(name, sizeof name, SG_CONFIG_ENV_PREFIX "%s", s->key.name);
    for (size_t k = 0; k < n; k++) name[k] = (char)toupper((unsigned char)name[k]);
    const char *v = getenv(name);
    if (!v) continue;
    if (!*v && s->type != T_STR && s->type != T_LIST) continue;
    int rc = sg_config_set(c, s->key.name, v, name, err, errlen);
    if (rc) return rc;
  }
  const char *tok = getenv(SG_CONFIG_ENV_PREFIX "TOKEN");
  if (tok && *tok) {
    size_t n = strlen(tok);
    if (n >= sizeof c->token) {
      sg_set_err(err, errlen, SG_CONFIG_ENV_PREFIX "TOKEN: longer than %zu bytes", sizeof c->token - 1);
      return SG_CONFIG_EINVAL;
    }
    memcpy(c->token, tok, n + 1);
    c->_token_from_env = 1;
  }
  return 0;
}

/* A bearer token as RFC 6750 allows (b64token): letters, digits and -._~+/ then optional '='. */
static int token_ok(const char *t) {
  size_t n = strlen(t), i = 0;
  if (n == 0) return 0;
  for (; i < n && (isalnum((unsigned char)t[i]) || strchr("-._~+/", t[i])); i++) {
  }
  if (i == 0) return 0;
  for (; i < n && t[i] == '='; i++) {
  }
  return i == n;
}

/* Reads the token file into c->token, dropping trailing white space. */
static int read_token(sg_config *c, char *err, size_t errlen) {
  FILE *f = fopen(c->token_file, "rb");
  if (!f) {
    sg_set_err(err, errlen, "token_file: %s: %s", c->token_file, strerror(errno));
    return SG_CONFIG_EIO;
  }
  char buf[sizeof c->token + 2];
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  int bad = ferror(f);
  fclose(f);
  if (bad) {
    sg_set_err(err, errlen, "token_file: %s: read error", c->token_file);
    return SG_CONFIG_EIO;
  }
  buf[n] = 0;
  while (n > 0 && isspace((unsigned char)buf[n - 1])) buf[--n] = 0;
  if (n >= sizeof c->token || strlen(buf) != n) {
    sg_set_err(err, errlen, "token_file: %s: not a token (too long, or binary)", c->token_file);
    return SG_CONFIG_EINVAL;
  }
  memcpy(c->token, buf, n + 1);
  memset(buf, 0, sizeof buf);
  return 0;
}

int32_t sg_config_devices(const sg_config *c, char (*out)[32], int32_t max) {
  int32_t n = 0;
  const char *p = c->devices;
  for (;;) {
    const char *e = strchr(p, ',');
    size_t len = e ? (size_t)(e - p) : strlen(p);
    while (len && isspace((unsigned char)*p)) p++, len--;
    while (len && isspace((unsigned char)p[len - 1])) len--;
    if (len == 0 || len >= 32 || n >= max) return -1;
    char d[32];
    memcpy(d, p, len);
    d[len] = 0;
    int ok = !strcmp(d, "cpu") || !strcmp(d, "cuda");
    if (!ok && !strncmp(d, "cuda:", 5) && d[5]) {
      ok = 1;
      for (const char *q = d + 5; *q; q++) ok &= isdigit((unsigned char)*q) != 0;
    }
    if (!ok) return -1;
    memcpy(out[n++], d, len + 1);
    if (!e) break;
    p = e + 1;
  }
  return n;
}

int sg_config_finish(sg_config *c, char *err, size_t errlen) {
  if (err && errlen) *err = 0;
  if (!c) return SG_CONFIG_EINVAL;
  if (!c->host[0]) {
    sg_set_err(err, errlen, "host: must not be empty");
    return SG_CONFIG_EINVAL;
  }
  char devs[SG_CONFIG_MAX_DEVICES][32];
  if (sg_config_devices(c, devs, SG_CONFIG_MAX_DEVICES) < 0) {
    sg_set_err(err, errlen, "devices: '%s' is not a comma-separated list of cpu, cuda or cuda:N (at most %d)",
               c->devices, SG_CONFIG_MAX_DEVICES);
    return SG_CONFIG_EINVAL;
  }
  if (strcmp(c->role, "all") && strcmp(c->role, "frontend") && strcmp(c->role, "worker")) {
    sg_set_err(err, errlen, "role: '%s' is not all, frontend or worker", c->role);
    return SG_CONFIG_EINVAL;
  }
  if (strcmp(c->role, "all") && !c->redis_url[0]) {
    sg_set_err(err, errlen, "role: %s needs redis_url (cluster mode); without Redis a replica does all", c->role);
    return SG_CONFIG_EINVAL;
  }
  if (c->redis_url[0] && strncmp(c->redis_url, "redis://", 8)) {
    sg_set_err(err, errlen, "redis_url: '%s' is not redis://HOST[:PORT][/DB]", c->redis_url);
    return SG_CONFIG_EINVAL;
  }
  if (c->lease_seconds <= 2 * c->heartbeat_seconds) {
    sg_set_err(err, errlen, "lease_seconds: %g must exceed twice heartbeat_seconds (%g)", c->lease_seconds,
               c->heartbeat_seconds);
    return SG_CONFIG_EINVAL;
  }
  if (c->default_timeout_ms > c->max_timeout_ms) {
    sg_set_err(err, errlen, "default_timeout_ms: %lld is above max_timeout_ms (%lld)", (long long)c->default_timeout_ms,
               (long long)c->max_timeout_ms);
    return SG_CONFIG_EINVAL;
  }
  for (const char *p = c->cors_origins; *p;) {
    const char *e = strchr(p, ',');
    size_t len = e ? (size_t)(e - p) : strlen(p);
    int ok = len > 0;
    for (size_t i = 0; i < len; i++) ok &= p[i] > ' ' && p[i] < 0x7f;
    if (!ok) {
      sg_set_err(err, errlen, "cors_origins: '%s' must be origins (scheme://host[:port]) or * separated by commas",
                 c->cors_origins);
      return SG_CONFIG_EINVAL;
    }
    if (!e) break;
    p = e + 1;
  }
  if (c->token_file[0]) {
    if (c->_token_from_env) {
      sg_set_err(err, errlen, "token_file and " SG_CONFIG_ENV_PREFIX "TOKEN: give one of them");
      return SG_CONFIG_EINVAL;
    }
    int rc = read_token(c, err, errlen);
    if (rc) return rc;
  }
  if (c->token[0] && !token_ok(c->token)) {
    sg_set_err(err, errlen, "%s: the token must be letters, digits and -._~+/ (then optional '=')",
               c->_token_from_env ? SG_CONFIG_ENV_PREFIX "TOKEN" : "token_file");
    return SG_CONFIG_EINVAL;
  }
  return 0;
}

char *sg_config_to_json(const sg_config *c) {
  json_t *o = json_object();
  if (!o) return NULL;
  for (int32_t i = 0; i < N_SETTINGS; i++) {
    const setting *s = &SETTINGS[i];
    const void *f = cfield(c, s);
    json_t *v = NULL;
    switch (s->type) {
      case T_I32: v = json_integer(*(const int32_t *)f); break;
      case T_I64: v = json_integer(*(const int64_t *)f); break;
      case T_F64: v = json_real(*(const double *)f); break;
      case T_BOOL: v = json_boolean(*(const int *)f); break;
      case T_LEVEL: v = json_string(sg_config_log_level_name(*(const int32_t *)f)); break;
      case T_STR: v = nullable(s) && !*(const char *)f ? json_null() : json_string((const char *)f); break;
      case T_LIST: {
        v = json_array();
        for (const char *p = f; v && *p;) {
          const char *e = strchr(p, ',');
          size_t len = e ? (size_t)(e - p) : strlen(p);
          json_array_append_new(v, json_stringn(p, len));
          if (!e) break;
          p = e + 1;
        }
        break;
      }
    }
    if (!v || json_object_set_new(o, s->key.name, v)) {
      json_decref(o);
      return NULL;
    }
  }
  char *out = json_dumps(o, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(15));
  json_decref(o);
  return sg_mem_json_to_malloc(out); /* the caller's free() */
}
