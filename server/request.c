/* The request parser of POST /v1/generate: multipart fields or a JSON body into generation parameters (request.h). */
#include "request.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "generate.h"
#include "sampler.h"

#define MAX_FIELD_BYTES 256 /* a number or a name */

/* Request parameters, in one order for multipart fields and JSON keys. */
enum {
  P_PROMPT,
  P_NEGATIVE,
  P_SKETCH,
  P_BETA,
  P_STOP,
  P_STOP_STEP,
  P_STEPS,
  P_CFG,
  P_SEED,
  P_SAMPLER,
  P_N,
  P_INVERT,
  P_TIMEOUT_MS,
  P_ETA,
  P_DRY_RUN,
  P_COUNT
};
static const char *const PARAM_NAMES[P_COUNT] = {"prompt", "negative_prompt", "sketch", "beta", "stop",
                                                 "stop_step", "steps", "cfg", "seed", "sampler", "n", "invert",
                                                 "timeout_ms", "eta", "dry_run"};

typedef struct {
  uint8_t *data;
  size_t len, cap;
} buf;

struct sg_request {
  sg_request_limits lim;
  buf raw;             /* a JSON body */
  int json;            /* the body is JSON */
  buf vals[P_COUNT];
  uint8_t present[P_COUNT];
  int last_param;
  int has_err;
  sg_request_error err;
  float *map;
};

/* Appends n bytes (keeping a NUL after them). Returns 0, or -1 when out of memory. */
static int buf_add(buf *b, const void *p, size_t n) {
  if (b->len + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + n + 1) cap *= 2;
    uint8_t *d = realloc(b->data, cap);
    if (!d) return -1;
    b->data = d;
    b->cap = cap;
  }
  if (n) memcpy(b->data + b->len, p, n);
  b->len += n;
  b->data[b->len] = 0;
  return 0;
}

static void buf_free(buf *b) {
  free(b->data);
  memset(b, 0, sizeof *b);
}

/* Decodes base64 (standard or URL alphabet, padding optional, ASCII white space ignored) into *out. Returns 0,
 * -1 for malformed text, -2 when out of memory. */
static int b64_decode(const char *s, size_t n, buf *out) {
  uint32_t acc = 0;
  int bits = 0, pad = 0;
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    int v;
    if (c >= 'A' && c <= 'Z') v = c - 'A';
    else if (c >= 'a' && c <= 'z') v = c - 'a' + 26;
    else if (c >= '0' && c <= '9') v = c - '0' + 52;
    else if (c == '+' || c == '-') v = 62;
    else if (c == '/' || c == '_') v = 63;
    else if (c == '=') {
      pad++;
      continue;
    } else if (c == ' ' || c == '\n' || c == '\r' || c == '\t') continue;
    else return -1;
    if (pad) return -1; /* data after padding */
    acc = acc << 6 | (uint32_t)v;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      uint8_t byte = (uint8_t)(acc >> bits);
      if (buf_add(out, &byte, 1)) return -2;
    }
  }
  if (bits >= 6 || pad > 2) return -1;
  return 0;
}

/* Returns 1 when s[0..n) is valid UTF-8 without NUL bytes. */
static int utf8_ok(const uint8_t *s, size_t n) {
  for (size_t i = 0; i < n;) {
    uint8_t c = s[i];
    if (c == 0) return 0;
    if (c < 0x80) {
      i++;
      continue;
    }
    int len = c >= 0xf0 && c <= 0xf4 ? 4 : c >= 0xe0 ? 3 : c >= 0xc2 && c < 0xe0 ? 2 : 0;
    if (!len || c > 0xf4 || i + (size_t)len > n) return 0;
    uint32_t cp = c & (0x7f >> len);
    for (int k = 1; k < len; k++) {
      if ((s[i + k] & 0xc0) != 0x80) return 0;
      cp = cp << 6 | (s[i + k] & 0x3f);
    }
    if ((len == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) || (len == 4 && (cp < 0x10000 || cp > 0x10ffff)))
      return 0;
    i += (size_t)len;
  }
  return 1;
}

/* Copies a client-given name into out for a message: printable ASCII only, truncated. Returns out. */
static const char *safe_name(const char *s, char *out, size_t cap) {
  size_t o = 0;
  for (; s && *s && o + 4 < cap; s++) out[o++] = (*s >= 0x20 && *s < 0x7f && *s != '"') ? *s : '?';
  if (s && *s) out[o++] = '.', out[o++] = '.', out[o++] = '.';
  out[o] = 0;
  return out;
}

/* Records the first error (later ones are dropped). Returns the recorded code. */
static int vfail(sg_request *q, int code, const char *param, const char *fmt, va_list ap) {
  if (q->has_err) return q->err.code;
  q->has_err = 1;
  q->err.code = code;
  snprintf(q->err.param, sizeof q->err.param, "%s", param ? param : "");
  vsnprintf(q->err.message, sizeof q->err.message, fmt, ap);
  return code;
}

int sg_request_fail(sg_request *q, int code, const char *param, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int rc = vfail(q, code, param, fmt, ap);
  va_end(ap);
  return rc;
}

/* ---- the body ---- */

/* Returns the index of a parameter name, or -1. */
static int param_index(const char *name) {
  for (int i = 0; i < P_COUNT; i++)
    if (!strcmp(name, PARAM_NAMES[i])) return i;
  return -1;
}

int sg_request_is_param(const char *name, size_t n) {
  for (int i = 0; i < P_COUNT; i++)
    if (strlen(PARAM_NAMES[i]) == n && !strncmp(name, PARAM_NAMES[i], n)) return 1;
  return 0;
}

/* Appends a value's bytes to parameter p, within its size limit. Returns 0 or the recorded error's code. */
static int field_add(sg_request *q, int p, const void *data, size_t size) {
  size_t limit = p == P_SKETCH                       ? (size_t)q->lim.max_body_bytes
                 : (p == P_PROMPT || p == P_NEGATIVE) ? (size_t)q->lim.max_prompt_bytes
                                                       : MAX_FIELD_BYTES;
  if (q->vals[p].len + size > limit) {
    if (p == P_PROMPT || p == P_NEGATIVE)
      return sg_request_fail(q, SG_REQUEST_EINVALID, PARAM_NAMES[p], "%s: longer than %zu bytes", PARAM_NAMES[p],
                             limit);
    return sg_request_fail(q, p == P_SKETCH ? SG_REQUEST_ETOOLARGE : SG_REQUEST_EBAD, PARAM_NAMES[p],
                           "%s: value too long", PARAM_NAMES[p]);
  }
  if (buf_add(&q->vals[p], data, size)) return sg_request_fail(q, SG_REQUEST_ENOMEM, NULL, "out of memory");
  return 0;
}

int sg_request_add_field(sg_request *q, const char *name, uint64_t off, const void *data, size_t size) {
  if (q->has_err) return q->err.code;
  char shown[48];
  int p = name ? param_index(name) : -1;
  if (p < 0)
    return sg_request_fail(q, SG_REQUEST_EBAD, NULL, "unknown parameter '%s'",
                           safe_name(name ? name : "", shown, sizeof shown));
  /* a part starts at off 0; a piece of the same part continues at off == bytes so far */
  int continues = p == q->last_param && off == q->vals[p].len && off > 0;
  int empty_start = p == q->last_param && off == 0 && q->vals[p].len == 0;
  if (!continues && !empty_start) {
    if (q->present[p] || off != 0)
      return sg_request_fail(q, SG_REQUEST_EBAD, PARAM_NAMES[p], "%s: given more than once", PARAM_NAMES[p]);
    q->present[p] = 1;
    q->last_param = p;
  }
  return size ? field_add(q, p, data, size) : 0;
}

int sg_request_add_json(sg_request *q, const void *data, size_t n) {
  if (q->has_err) return q->err.code;
  q->json = 1;
  if (buf_add(&q->raw, data, n)) return sg_request_fail(q, SG_REQUEST_ENOMEM, NULL, "out of memory");
  return 0;
}

/* Fills the parameters from the JSON body. Returns 0 or the recorded error's code. */
static int parse_json_body(sg_request *q) {
  json_error_t je;
  json_t *root = json_loadb((const char *)q->raw.data, q->raw.len, JSON_REJECT_DUPLICATES, &je);
  if (!root)
    return sg_request_fail(q, SG_REQUEST_EBAD, NULL, "malformed JSON (line %d, column %d): %s", je.line, je.column,
                           je.text);
  if (!json_is_object(root)) {
    json_decref(root);
    return sg_request_fail(q, SG_REQUEST_EBAD, NULL, "the JSON body must be an object");
  }
  const char *key;
  json_t *v;
  json_object_foreach(root, key, v) {
    char name[48];
    int p = param_index(key);
    if (p < 0) {
      sg_request_fail(q, SG_REQUEST_EBAD, NULL, "unknown parameter '%s'", safe_name(key, name, sizeof name));
      break;
    }
    char tmp[64];
    const char *s = NULL;
    size_t n = 0;
    if (json_is_null(v)) continue;
    if (json_is_string(v)) {
      s = json_string_value(v);
      n = json_string_length(v);
    } else if (json_is_integer(v)) {
      n = (size_t)snprintf(tmp, sizeof tmp, "%lld", (long long)json_integer_value(v));
      s = tmp;
    } else if (json_is_real(v)) {
      n = (size_t)snprintf(tmp, sizeof tmp, "%.17g", json_real_value(v));
      s = tmp;
    } else if (json_is_boolean(v)) {
      s = json_is_true(v) ? "true" : "false";
      n = strlen(s);
    } else {
      sg_request_fail(q, SG_REQUEST_EBAD, PARAM_NAMES[p], "%s: must be a string or a number", PARAM_NAMES[p]);
      break;
    }
    if (p == P_SKETCH) { /* base64 or a data URL */
      const char *comma = n > 5 && !strncmp(s, "data:", 5) ? memchr(s, ',', n) : NULL;
      if (comma) {
        if (!memmem(s, (size_t)(comma - s), ";base64", 7)) {
          sg_request_fail(q, SG_REQUEST_EBAD, "sketch", "sketch: a data URL must be base64 (data:image/png;base64,...)");
          break;
        }
        n -= (size_t)(comma + 1 - s);
        s = comma + 1;
      }
      int rc = b64_decode(s, n, &q->vals[p]);
      if (rc) {
        sg_request_fail(q, rc == -2 ? SG_REQUEST_ENOMEM : SG_REQUEST_EBAD, "sketch",
                        rc == -2 ? "out of memory" : "sketch: not base64 (or a data URL)");
        break;
      }
      q->present[p] = 1;
      continue;
    }
    q->present[p] = 1;
    if (field_add(q, p, s, n)) break;
  }
  json_decref(root);
  return q->has_err ? q->err.code : 0;
}

/* ---- the parameters ---- */

/* The text of parameter p, NULL when absent. Numbers and names must not contain NUL bytes. */
static const char *param_text(sg_request *q, int p) {
  if (!q->present[p]) return NULL;
  return q->vals[p].data ? (const char *)q->vals[p].data : "";
}

/* Parses parameter p as a number in [lo, hi] into *out. Returns 0 (absent: *out unchanged), 1, or a negative code
 * with the error recorded: EBAD when it is not a number, EINVALID when out of range (or not whole for an
 * integer). */
static int param_number(sg_request *q, int p, double lo, double hi, int integer, double *dout, int64_t *iout) {
  const char *s = param_text(q, p);
  if (!s) return 0;
  const char *name = PARAM_NAMES[p];
  char shown[40];
  safe_name(s, shown, sizeof shown);
  if (strlen(s) != q->vals[p].len || !*s)
    return sg_request_fail(q, SG_REQUEST_EBAD, name, "%s: '%s' is not a number", name, shown);
  char *end;
  errno = 0;
  long long iv = strtoll(s, &end, 10);
  if (integer && !*end && !errno) {
    if (iv < lo || iv > hi)
      return sg_request_fail(q, SG_REQUEST_EINVALID, name, "%s: must be between %.0f and %.0f", name, lo, hi);
    *iout = iv;
    return 1;
  }
  errno = 0;
  double v = strtod(s, &end);
  if (end == s || *end || !isfinite(v))
    return sg_request_fail(q, SG_REQUEST_EBAD, name, "%s: '%s' is not a%s number", name, shown,
                           isfinite(v) ? "" : " finite");
  if (integer && v != floor(v)) return sg_request_fail(q, SG_REQUEST_EINVALID, name, "%s: must be a whole number", name);
  if (!(v >= lo && v <= hi)) {
    if (integer) return sg_request_fail(q, SG_REQUEST_EINVALID, name, "%s: must be between %.0f and %.0f", name, lo, hi);
    return sg_request_fail(q, SG_REQUEST_EINVALID, name, "%s: must be between %g and %g", name, lo, hi);
  }
  if (integer) *iout = (int64_t)v;
  else *dout = v;
  return 1;
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Fills *a from the parameters: values, the sketch decoded and mapped. Returns 0 or the recorded error's code. */
static int gen_parse(sg_request *q, sg_request_params *a) {
  const sg_request_limits *P = &q->lim;
  a->jr = P->defaults;
  a->jr.n_images = 1;
  a->timeout_ms = P->default_timeout_ms;
  a->map_size = P->image_size;
  const char *prompt = param_text(q, P_PROMPT);
  if (!prompt) return sg_request_fail(q, SG_REQUEST_EBAD, "prompt", "prompt: required");
  if (!q->vals[P_PROMPT].len) return sg_request_fail(q, SG_REQUEST_EINVALID, "prompt", "prompt: must not be empty");
  for (int p = P_PROMPT; p <= P_NEGATIVE; p++)
    if (q->present[p] && !utf8_ok(q->vals[p].data, q->vals[p].len))
      return sg_request_fail(q, SG_REQUEST_EINVALID, PARAM_NAMES[p], "%s: must be UTF-8 text without NUL characters",
                             PARAM_NAMES[p]);
  a->jr.prompt = prompt;
  a->jr.negative_prompt = param_text(q, P_NEGATIVE);
  if (!q->present[P_SKETCH]) return sg_request_fail(q, SG_REQUEST_EBAD, "sketch", "sketch: required (a PNG or JPEG file)");
  double d;
  int64_t i;
  int rc;
  int32_t max_steps = P->max_steps;
  if ((rc = param_number(q, P_STEPS, 1, max_steps, 1, &d, &i)) < 0) return rc;
  if (rc) a->jr.steps = (int32_t)i;
  if (a->jr.steps > max_steps) a->jr.steps = max_steps;
  if ((rc = param_number(q, P_BETA, 0, 100, 0, &d, &i)) < 0) return rc;
  if (rc) a->jr.beta = d;
  if (q->present[P_STOP] && q->present[P_STOP_STEP])
    return sg_request_fail(q, SG_REQUEST_EINVALID, "stop_step", "stop_step: give stop or stop_step, not both");
  if ((rc = param_number(q, P_STOP, 0, 1, 0, &d, &i)) < 0) return rc;
  if (rc) a->jr.stop = d;
  if ((rc = param_number(q, P_STOP_STEP, 0, a->jr.steps, 1, &d, &i)) < 0) return rc;
  if (rc) a->jr.stop_step = (int32_t)i;
  if ((rc = param_number(q, P_CFG, 0, 100, 0, &d, &i)) < 0) return rc;
  if (rc) a->jr.cfg = d;
  if ((rc = param_number(q, P_ETA, 0, 10, 0, &d, &i)) < 0) return rc;
  if (rc) a->jr.eta = d;
  int64_t seed = -1;
  if ((rc = param_number(q, P_SEED, -1, (double)(INT64_MAX - SG_JOBS_MAX_IMAGES), 1, &d, &seed)) < 0) return rc;
  if (seed < 0) {
    uint32_t v = 0;
    if (getrandom(&v, sizeof v, 0) != sizeof v) v = (uint32_t)(now_s() * 1e6);
    seed = v;
    a->seed_random = 1;
  }
  a->jr.seed = seed;
  if ((rc = param_number(q, P_N, 1, P->max_images, 1, &d, &i)) < 0) return rc;
  if (rc) a->jr.n_images = (int32_t)i;
  if ((rc = param_number(q, P_TIMEOUT_MS, 1, (double)P->max_timeout_ms, 1, &d, &i)) < 0) return rc;
  if (rc) a->timeout_ms = i;
  char shown[40];
  const char *s = param_text(q, P_SAMPLER);
  if (s) {
    int k = strlen(s) == q->vals[P_SAMPLER].len ? sg_sampler_kind_parse(s) : -1;
    if (k < 0)
      return sg_request_fail(q, SG_REQUEST_EINVALID, "sampler", "sampler: '%s' is not ddim, ddpm, euler_a or dpmpp_2m",
                             safe_name(s, shown, sizeof shown));
    a->jr.sampler = (sg_sampler_kind)k;
  }
  int inv = SG_INVERT_AUTO;
  if ((s = param_text(q, P_INVERT))) {
    inv = strlen(s) == q->vals[P_INVERT].len ? sg_invert_parse(s) : -1;
    if (inv < 0)
      return sg_request_fail(q, SG_REQUEST_EINVALID, "invert", "invert: '%s' is not auto, true or false",
                             safe_name(s, shown, sizeof shown));
  }
  if ((s = param_text(q, P_DRY_RUN))) {
    int v = strlen(s) == q->vals[P_DRY_RUN].len ? sg_invert_parse(s) : -1; /* the same words: true/false/1/0 */
    if (v != SG_INVERT_TRUE && v != SG_INVERT_FALSE)
      return sg_request_fail(q, SG_REQUEST_EINVALID, "dry_run", "dry_run: '%s' is not true or false",
                             safe_name(s, shown, sizeof shown));
    a->dry_run = v == SG_INVERT_TRUE;
  }
  /* the sketch: by its magic bytes, its size checked from the header before decoding */
  buf *sk = &q->vals[P_SKETCH];
  if (sk->len > 5 && !memcmp(sk->data, "data:", 5)) { /* a data URL in a multipart text field */
    buf dec = {0};
    const char *comma = memchr(sk->data, ',', sk->len);
    int brc = comma && memmem(sk->data, (size_t)((const uint8_t *)comma - sk->data), ";base64", 7)
                  ? b64_decode(comma + 1, sk->len - (size_t)((const uint8_t *)comma + 1 - sk->data), &dec)
                  : -1;
    if (brc) {
      buf_free(&dec);
      if (brc == -2) return sg_request_fail(q, SG_REQUEST_ENOMEM, NULL, "out of memory");
      return sg_request_fail(q, SG_REQUEST_EBAD, "sketch", "sketch: a data URL must be base64 (data:image/png;base64,...)");
    }
    buf_free(sk);
    *sk = dec;
  }
  a->format = sg_image_sniff(sk->data, sk->len);
  sg_image_params ip = sg_image_default_params();
  ip.max_pixels = P->max_image_pixels;
  sg_image im;
  char err[200];
  if ((rc = sg_image_decode(sk->data, sk->len, ip, &im, err, sizeof err))) {
    if (rc == SG_IMAGE_EUNSUPPORTED)
      return sg_request_fail(q, SG_REQUEST_EUNSUPPORTED, "sketch", "sketch: not a PNG or JPEG image (by its content)");
    if (rc == SG_IMAGE_ETOOBIG) return sg_request_fail(q, SG_REQUEST_EINVALID, "sketch", "sketch: %s", err);
    if (rc == SG_IMAGE_ECORRUPT || rc == SG_IMAGE_EINVAL)
      return sg_request_fail(q, SG_REQUEST_EBAD, "sketch", "sketch: %s", err);
    return sg_request_fail(q, SG_REQUEST_ENOMEM, "sketch", "sketch: %s", err);
  }
  a->width = im.width;
  a->height = im.height;
  int32_t size = P->image_size;
  q->map = malloc(sizeof(float) * (size_t)size * (size_t)size);
  rc = q->map ? sg_sketch_map(&im, size, (sg_invert)inv, q->map, &a->inverted, err, sizeof err) : SG_IMAGE_ENOMEM;
  sg_image_free(&im);
  if (rc) {
    if (!q->map || rc == SG_IMAGE_ENOMEM) return sg_request_fail(q, SG_REQUEST_ENOMEM, "sketch", "sketch: out of memory");
    return sg_request_fail(q, rc == SG_IMAGE_ETOOBIG ? SG_REQUEST_EINVALID : SG_REQUEST_EBAD, "sketch", "sketch: %s",
                           err);
  }
  a->jr.sketch = q->map;
  return 0;
}

/* ---- public ---- */

sg_request_limits sg_request_default_limits(void) {
  sg_request_limits l;
  memset(&l, 0, sizeof l);
  l.max_body_bytes = 16 * 1024 * 1024;
  l.max_image_pixels = 4096 * 4096;
  l.max_steps = 150;
  l.max_images = 4;
  l.max_prompt_bytes = 2000;
  l.default_timeout_ms = 300000;
  l.max_timeout_ms = 3600000;
  l.image_size = 64;
  l.defaults.steps = 50;
  l.defaults.beta = 1.6;
  l.defaults.stop = 0.5;
  l.defaults.stop_step = -1;
  l.defaults.cfg = 7.5;
  l.defaults.sampler = SG_SAMPLER_DDIM;
  l.defaults.n_images = 1;
  return l;
}

sg_request *sg_request_new(const sg_request_limits *lim) {
  if (!lim) return NULL;
  sg_request *q = calloc(1, sizeof *q);
  if (!q) return NULL;
  q->lim = *lim;
  q->last_param = -1;
  return q;
}

void sg_request_free(sg_request *q) {
  if (!q) return;
  buf_free(&q->raw);
  for (int i = 0; i < P_COUNT; i++) buf_free(&q->vals[i]);
  free(q->map);
  free(q);
}

int sg_request_parse(sg_request *q, sg_request_params *out) {
  memset(out, 0, sizeof *out);
  if (!q->has_err && q->json) parse_json_body(q);
  if (q->has_err) return q->err.code;
  return gen_parse(q, out);
}

const sg_request_error *sg_request_get_error(const sg_request *q) { return q && q->has_err ? &q->err : NULL; }

char *sg_request_describe(const sg_request_params *a) {
  json_t *o = json_object(), *p = json_object(), *s = json_object();
  if (!o || !p || !s) {
    json_decref(o);
    json_decref(p);
    json_decref(s);
    return NULL;
  }
  const sg_job_request *j = &a->jr;
  int32_t size = a->map_size;
  json_object_set_new(p, "prompt", json_string(j->prompt));
  json_object_set_new(p, "negative_prompt", json_string(j->negative_prompt ? j->negative_prompt : ""));
  json_object_set_new(p, "steps", json_integer(j->steps));
  json_object_set_new(p, "beta", json_real(j->beta));
  json_object_set_new(p, "stop", json_real(j->stop));
  json_object_set_new(p, "stop_step", j->stop_step >= 0 ? json_integer(j->stop_step) : json_null());
  json_object_set_new(p, "guided_steps", json_integer(sg_generate_guided_steps(j->steps, j->stop, j->stop_step)));
  json_object_set_new(p, "cfg", json_real(j->cfg));
  json_object_set_new(p, "eta", json_real(j->eta));
  json_object_set_new(p, "seed", json_integer(j->seed));
  json_object_set_new(p, "sampler", json_string(sg_sampler_kind_name(j->sampler)));
  json_object_set_new(p, "n", json_integer(j->n_images));
  json_object_set_new(p, "timeout_ms", json_integer(a->timeout_ms));
  int64_t ink = 0;
  for (int32_t k = 0; j->sketch && k < size * size; k++) ink += j->sketch[k] > 0.5f;
  json_object_set_new(s, "format", json_string(sg_image_format_name(a->format)));
  json_object_set_new(s, "width", json_integer(a->width));
  json_object_set_new(s, "height", json_integer(a->height));
  json_object_set_new(s, "inverted", json_boolean(a->inverted));
  json_object_set_new(s, "stroke_pixels", json_integer(ink));
  json_object_set_new(s, "map_size", json_integer(size));
  json_object_set_new(o, "valid", json_true());
  json_object_set_new(o, "params", p);
  json_object_set_new(o, "sketch", s);
  char *text = json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(15));
  json_decref(o);
  return text;
}
