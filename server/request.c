/* The request parser of POST /v1/generate: multipart fields or a JSON body into generation parameters (request.h). */
#include "request.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <time.h>

#include "buf.h"
#include "mem.h"
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
  P_FILLED,
  P_TIMEOUT_MS,
  P_ETA,
  P_DRY_RUN,
  P_BATCHING,
  P_COUNT
};
static const char *const PARAM_NAMES[P_COUNT] = {"prompt", "negative_prompt", "sketch", "beta", "stop",
                                                 "stop_step", "steps", "cfg", "seed", "sampler", "n", "invert",
                                                 "filled", "timeout_ms", "eta", "dry_run", "batching"};

/* The multipart parser's states (RFC 7578 and RFC 2046 5.1.1). */
typedef enum {
  MP_PREAMBLE,   /* before the first delimiter */
  MP_AFTER_DELIM, /* a delimiter was read: "--" (the end), or transport padding and CRLF (a part) */
  MP_HEADERS,    /* the part's header lines, up to an empty line */
  MP_DATA,       /* the part's value, up to the next delimiter */
  MP_END,        /* after the close delimiter: the epilogue is ignored */
} mp_state;

#define MP_MAX_BOUNDARY 70   /* RFC 2046 */
#define MP_MAX_HEADER_LINE 1024
#define MP_MAX_HEADERS 16
#define JSON_MAX_MEMBERS 64  /* members of a JSON body (there are P_COUNT parameters); more are refused unparsed */

/* A member of a JSON body's object as json_prescan found it: its key's text and, for a number, the number's text
 * (offsets into the body), so that numbers are read from what the client wrote, not from jansson's double. */
typedef struct {
  size_t key_off, key_len, num_off, num_len;
  int number;
} json_member;

struct sg_request {
  sg_request_limits lim;
  int kind;            /* 0 = not known yet, 1 = JSON, 2 = multipart */
  sg_buf raw;             /* a JSON body */
  int json;            /* the body is JSON */
  json_member members[JSON_MAX_MEMBERS];
  int n_members;
  sg_buf vals[P_COUNT + SG_REQUEST_MAX_NAMES]; /* the parameters, then the values kept under limits.names */
  uint8_t present[P_COUNT + SG_REQUEST_MAX_NAMES];
  int last_param;
  int has_err;
  sg_request_error err;
  float *map;
  /* multipart */
  char delim[MP_MAX_BOUNDARY + 5]; /* "\r\n--" boundary */
  size_t delim_len, matched;       /* bytes of delim matched so far */
  mp_state mp;
  int mp_parts;
  int after_dashes;                /* MP_AFTER_DELIM: dashes seen (1 = one '-') */
  int after_cr;                    /* MP_AFTER_DELIM / MP_HEADERS: a CR was the last byte */
  sg_buf line;                        /* the header line being read */
  int n_headers;
  int part;                        /* the current part's parameter, -1 before a Content-Disposition */
  int has_disposition;
};

/* Decodes base64 (standard or URL alphabet, padding optional, ASCII white space ignored) into *out. Returns 0,
 * -1 for malformed text, -2 when out of memory. */
static int b64_decode(const char *s, size_t n, sg_buf *out) {
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
      if (sg_buf_add(out, &byte, 1)) return -2;
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

const char *sg_request_safe_name(const char *s, char *out, size_t cap) {
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

/* Returns the index of a name in the body: limits.names first (the parameter it stands for, or P_COUNT + its index
 * when it is kept as it is), then the parameters'; -1 when unknown. */
static int param_index(const sg_request *q, const char *name) {
  for (int i = 0; i < q->lim.n_names; i++)
    if (!strcmp(name, q->lim.names[i].name)) {
      const char *as = q->lim.names[i].as;
      if (!as) return P_COUNT + i;
      name = as;
      break;
    }
  for (int i = 0; i < P_COUNT; i++)
    if (!strcmp(name, PARAM_NAMES[i])) return i;
  return -1;
}

/* The name of index p in messages. */
static const char *pname(const sg_request *q, int p) {
  return p < P_COUNT ? PARAM_NAMES[p] : q->lim.names[p - P_COUNT].name;
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
    return sg_request_fail(q, p == P_SKETCH ? SG_REQUEST_ETOOLARGE : SG_REQUEST_EBAD, pname(q, p),
                           "%s: value too long", pname(q, p));
  }
  if (sg_buf_add(&q->vals[p], data, size)) return sg_request_fail(q, SG_REQUEST_ENOMEM, NULL, "out of memory");
  return 0;
}

static int part_begin(sg_request *q, const char *name);

int sg_request_add_field(sg_request *q, const char *name, uint64_t off, const void *data, size_t size) {
  if (q->has_err) return q->err.code;
  if (off == 0) {
    if (part_begin(q, name)) return q->err.code;
  } else {
    int p = name ? param_index(q, name) : -1;
    if (p < 0 || p != q->last_param || off != q->vals[p].len)
      return sg_request_fail(q, SG_REQUEST_EBAD, NULL, "a piece of a field out of order");
  }
  return size ? field_add(q, q->last_param, data, size) : 0;
}

int sg_request_add_json(sg_request *q, const void *data, size_t n) {
  if (q->has_err) return q->err.code;
  q->json = 1;
  q->kind = 1;
  if (sg_buf_add(&q->raw, data, n)) return sg_request_fail(q, SG_REQUEST_ENOMEM, NULL, "out of memory");
  return 0;
}

/* A JSON number too large for jansson (an integer beyond 64 bits, a real beyond double): names the parameter whose
 * value it is (the key before the number that jansson stopped at). Returns the recorded error's code (EINVALID). */
static int number_overflow(sg_request *q, const json_error_t *je) {
  const char *t = (const char *)q->raw.data;
  size_t k = je->position < (int)q->raw.len ? (size_t)je->position : q->raw.len;
  while (k > 0 && strchr("0123456789+-.eE", t[k - 1])) k--;
  while (k > 0 && strchr(" \t\r\n", t[k - 1])) k--;
  if (k > 0 && t[k - 1] == ':') {
    k--;
    while (k > 0 && strchr(" \t\r\n", t[k - 1])) k--;
    if (k > 1 && t[k - 1] == '"') {
      size_t end = k - 1, start = end;
      while (start > 0 && t[start - 1] != '"') start--;
      for (int p = 0; start > 0 && p < P_COUNT; p++)
        if (strlen(PARAM_NAMES[p]) == end - start && !strncmp(t + start, PARAM_NAMES[p], end - start))
          return sg_request_fail(q, SG_REQUEST_EINVALID, PARAM_NAMES[p],
                                 "%s: the number is out of range (integers must fit in 64 bits)", PARAM_NAMES[p]);
    }
  }
  return sg_request_fail(q, SG_REQUEST_EINVALID, NULL, "a number out of range (line %d, column %d): %s", je->line,
                         je->column, je->text);
}

/* Returns the index after the JSON string that opens at t[i] (a '"'), or n when it does not end. */
static size_t json_skip_string(const char *t, size_t i, size_t n) {
  for (i++; i < n; i++) {
    if (t[i] == '\\') i++;
    else if (t[i] == '"') return i + 1;
  }
  return n;
}

static size_t json_skip_blank(const char *t, size_t i, size_t n) {
  while (i < n && strchr(" \t\r\n", t[i]) && t[i]) i++;
  return i;
}

/* Walks the top level of a JSON body before jansson sees it, so that no body costs more than its own size: an
 * array as the whole body, or more than JSON_MAX_MEMBERS members, is refused unparsed; a member's array or object
 * value (which is refused anyway: values are strings, numbers or booleans) is blanked to "[]" in place, however
 * deep or long it is, so that jansson builds nothing of it; numbers' texts are recorded in q->members. Text that
 * is not well-formed is left for jansson to report. Returns 0 or the recorded error's code. */
static int json_prescan(sg_request *q) {
  char *t = (char *)q->raw.data;
  size_t n = q->raw.len, i = json_skip_blank(t, 0, n);
  if (i < n && t[i] == '[') return sg_request_fail(q, SG_REQUEST_EBAD, NULL, "the JSON body must be an object");
  if (i >= n || t[i] != '{') return 0;
  for (i = json_skip_blank(t, i + 1, n); i < n && t[i] != '}';) {
    if (t[i] != '"') return 0;
    json_member m = {.key_off = i + 1};
    i = json_skip_string(t, i, n);
    if (i >= n) return 0;
    m.key_len = i - 1 - m.key_off;
    i = json_skip_blank(t, i, n);
    if (i >= n || t[i] != ':') return 0;
    i = json_skip_blank(t, i + 1, n);
    if (i >= n) return 0;
    if (t[i] == '"') {
      i = json_skip_string(t, i, n);
    } else if (t[i] == '[' || t[i] == '{') {
      size_t start = i, depth = 0;
      for (; i < n; i++) {
        if (t[i] == '"') i = json_skip_string(t, i, n) - 1;
        else if (t[i] == '[' || t[i] == '{') depth++;
        else if ((t[i] == ']' || t[i] == '}') && --depth == 0) break;
      }
      if (i >= n) return sg_request_fail(q, SG_REQUEST_EBAD, NULL, "malformed JSON: an array or object never ends");
      i++;
      memset(t + start, ' ', i - start);
      t[start] = '[';
      t[start + 1] = ']';
    } else {
      m.number = t[i] == '-' || (t[i] >= '0' && t[i] <= '9');
      m.num_off = i;
      while (i < n && !strchr(" \t\r\n,}", t[i]) && t[i]) i++;
      m.num_len = i - m.num_off;
    }
    if (q->n_members == JSON_MAX_MEMBERS)
      return sg_request_fail(q, SG_REQUEST_EBAD, NULL, "the JSON body has more than %d members (unknown parameters)",
                             JSON_MAX_MEMBERS);
    q->members[q->n_members++] = m;
    i = json_skip_blank(t, i, n);
    if (i < n && t[i] == ',') i = json_skip_blank(t, i + 1, n);
    else break;
  }
  return 0;
}

/* Fills the parameters from the JSON body. Returns 0 or the recorded error's code. */
static int parse_json_body(sg_request *q) {
  json_error_t je;
  size_t blank = strspn(q->raw.data ? (const char *)q->raw.data : "", " \t\r\n");
  if (blank == q->raw.len)
    return sg_request_fail(q, SG_REQUEST_EBAD, NULL, "the JSON body is empty: send an object of parameters");
  if (json_prescan(q)) return q->err.code;
  json_t *root = json_loadb((const char *)q->raw.data, q->raw.len, JSON_REJECT_DUPLICATES, &je);
  if (!root && json_error_code(&je) == json_error_numeric_overflow)
    return number_overflow(q, &je);
  if (!root)
    return sg_request_fail(q, SG_REQUEST_EBAD, NULL, "malformed JSON (line %d, column %d): %s", je.line, je.column,
                           je.text);
  if (!json_is_object(root)) {
    json_decref(root);
    return sg_request_fail(q, SG_REQUEST_EBAD, NULL, "the JSON body must be an object");
  }
  const char *key;
  json_t *v;
  int k = -1;
  json_object_foreach(root, key, v) { /* in the order of the text (jansson 2.8 on), as json_prescan saw them */
    char name[48];
    k++;
    int p = param_index(q, key);
    if (p < 0) {
      sg_request_fail(q, SG_REQUEST_EBAD, NULL, "unknown parameter '%s'", sg_request_safe_name(key, name, sizeof name));
      break;
    }
    char tmp[64];
    const char *s = NULL;
    size_t n = 0;
    if (json_is_null(v)) continue;
    if (q->present[p]) { /* two names of limits.names for one parameter */
      sg_request_fail(q, SG_REQUEST_EBAD, pname(q, p), "%s: given more than once", pname(q, p));
      break;
    }
    if (json_is_string(v)) {
      s = json_string_value(v);
      n = json_string_length(v);
    } else if (json_is_number(v) && k < q->n_members && q->members[k].number &&
               q->members[k].key_len == strlen(key) && !memcmp(q->raw.data + q->members[k].key_off, key,
                                                                q->members[k].key_len)) {
      s = (const char *)q->raw.data + q->members[k].num_off; /* as written: "1e-999" is not the integer 0 */
      n = q->members[k].num_len;
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
      sg_request_fail(q, SG_REQUEST_EBAD, pname(q, p), "%s: must be a string or a number", pname(q, p));
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

/* ---- multipart/form-data ---- */

/* Starts a part called name (a parameter given at most once). Returns 0 or the recorded error's code. */
static int part_begin(sg_request *q, const char *name) {
  char shown[48];
  int p = name ? param_index(q, name) : -1;
  if (p < 0)
    return sg_request_fail(q, SG_REQUEST_EBAD, NULL, "unknown parameter '%s'",
                           sg_request_safe_name(name ? name : "", shown, sizeof shown));
  if (q->present[p])
    return sg_request_fail(q, SG_REQUEST_EBAD, pname(q, p), "%s: given more than once", pname(q, p));
  q->present[p] = 1;
  q->last_param = p;
  return 0;
}

/* Returns the next ';' of a header value from p that is not inside a quoted string (RFC 9110 quoted-string,
 * backslash escapes), or NULL. */
static const char *next_separator(const char *p) {
  for (int quoted = 0; *p; p++) {
    if (quoted && *p == '\\' && p[1])
      p++;
    else if (*p == '"')
      quoted = !quoted;
    else if (!quoted && *p == ';')
      return p;
  }
  return NULL;
}

/* Returns the value of parameter key (case-insensitive) in a header's "; key=value" list (a token or a quoted
 * string, backslash escapes undone) written into out, or NULL when it is absent or malformed. */
static const char *header_param(const char *v, const char *key, char *out, size_t cap) {
  size_t kn = strlen(key);
  for (const char *p = next_separator(v); p; p = next_separator(p)) {
    p++;
    while (*p == ' ' || *p == '\t') p++;
    if (strncasecmp(p, key, kn) || p[kn] != '=') continue;
    p += kn + 1;
    size_t o = 0;
    if (*p == '"') {
      for (p++; *p && *p != '"'; p++) {
        if (*p == '\\' && p[1]) p++;
        if (o + 1 >= cap) return NULL;
        out[o++] = *p;
      }
      if (*p != '"') return NULL;
    } else {
      for (; *p && *p != ';' && *p != ' ' && *p != '\t'; p++) {
        if (o + 1 >= cap) return NULL;
        out[o++] = *p;
      }
    }
    out[o] = 0;
    return out;
  }
  return NULL;
}

/* One header line of a part (without its CRLF). Returns 0 or the recorded error's code. */
static int part_header(sg_request *q, const char *line) {
  if (++q->n_headers > MP_MAX_HEADERS)
    return sg_request_fail(q, SG_REQUEST_EBAD, NULL, "multipart/form-data: more than %d headers in a part",
                           MP_MAX_HEADERS);
  const char *colon = strchr(line, ':');
  if (!colon || colon == line || strcspn(line, " \t") < (size_t)(colon - line))
    return sg_request_fail(q, SG_REQUEST_EBAD, NULL, "multipart/form-data: a malformed part header");
  if ((size_t)(colon - line) != 19 || strncasecmp(line, "Content-Disposition", 19)) return 0; /* others: ignored */
  const char *v = colon + 1;
  while (*v == ' ' || *v == '\t') v++;
  if (q->has_disposition)
    return sg_request_fail(q, SG_REQUEST_EBAD, NULL, "multipart/form-data: two Content-Disposition headers in a part");
  q->has_disposition = 1;
  if (strncasecmp(v, "form-data", 9) || (v[9] && v[9] != ';' && v[9] != ' ' && v[9] != '\t'))
    return sg_request_fail(q, SG_REQUEST_EBAD, NULL, "multipart/form-data: a part that is not form-data");
  char name[64];
  if (!header_param(v, "name", name, sizeof name))
    return sg_request_fail(q, SG_REQUEST_EBAD, NULL, "multipart/form-data: a part without a name");
  return part_begin(q, name);
}

/* Feeds n bytes of a multipart body through the state machine. Returns 0 or the recorded error's code. */
static int multipart_feed(sg_request *q, const uint8_t *d, size_t n) {
  const char *delim = q->delim;
  for (size_t i = 0; i < n && !q->has_err;) {
    uint8_t c = d[i];
    switch (q->mp) {
    case MP_PREAMBLE:
    case MP_DATA:
      if (q->matched == 0 && c != '\r') { /* a run of value bytes: up to the next CR */
        const uint8_t *cr = memchr(d + i, '\r', n - i);
        size_t run = cr ? (size_t)(cr - (d + i)) : n - i;
        if (q->mp == MP_DATA && field_add(q, q->part, d + i, run)) return q->err.code;
        i += run;
        continue;
      }
      if (c == (uint8_t)delim[q->matched]) {
        i++;
        if (++q->matched == q->delim_len) {
          q->matched = 0;
          q->mp = MP_AFTER_DELIM;
          q->after_dashes = q->after_cr = 0;
        }
        continue;
      }
      /* a mismatch: the bytes matched so far were data (no CR inside the delimiter but the first byte, so the
       * match restarts only at this byte) */
      if (q->mp == MP_DATA && field_add(q, q->part, delim, q->matched)) return q->err.code;
      q->matched = 0;
      continue;
    case MP_AFTER_DELIM:
      i++;
      if (q->after_cr) {
        if (c != '\n') return sg_request_fail(q, SG_REQUEST_EBAD, NULL, "multipart/form-data: a malformed delimiter");
        q->mp = MP_HEADERS;
        q->after_cr = 0;
        q->line.len = 0;
        q->n_headers = 0;
        q->part = -1;
        q->has_disposition = 0;
        q->mp_parts++;
      } else if (c == '-' && q->after_dashes >= 0) {
        if (++q->after_dashes == 2) q->mp = MP_END;
      } else if (q->after_dashes == 1) {
        return sg_request_fail(q, SG_REQUEST_EBAD, NULL, "multipart/form-data: a malformed delimiter");
      } else if (c == ' ' || c == '\t') {
        q->after_dashes = -1; /* transport padding */
      } else if (c == '\r') {
        q->after_cr = 1;
      } else {
        return sg_request_fail(q, SG_REQUEST_EBAD, NULL, "multipart/form-data: a malformed delimiter");
      }
      continue;
    case MP_HEADERS:
      i++;
      if (q->after_cr) {
        q->after_cr = 0;
        if (c != '\n') return sg_request_fail(q, SG_REQUEST_EBAD, NULL, "multipart/form-data: a bare CR in a part header");
        if (q->line.len == 0) { /* the empty line: the value follows */
          if (!q->has_disposition)
            return sg_request_fail(q, SG_REQUEST_EBAD, NULL, "multipart/form-data: a part without Content-Disposition");
          q->mp = MP_DATA;
          q->part = q->last_param;
          q->matched = 0;
          continue;
        }
        if (part_header(q, (const char *)q->line.data)) return q->err.code;
        q->line.len = 0;
        continue;
      }
      if (c == '\r') {
        q->after_cr = 1;
        continue;
      }
      if (c == 0 || c == '\n' || q->line.len >= MP_MAX_HEADER_LINE)
        return sg_request_fail(q, SG_REQUEST_EBAD, NULL, "multipart/form-data: a malformed or too long part header");
      if (sg_buf_add(&q->line, &c, 1)) return sg_request_fail(q, SG_REQUEST_ENOMEM, NULL, "out of memory");
      continue;
    case MP_END:
      return 0; /* the epilogue */
    }
  }
  return q->has_err ? q->err.code : 0;
}

/* Returns 1 when the media type at ct (up to ';', white space or its end) is type, case-insensitively. */
static int media_type_is(const char *ct, const char *type) {
  size_t n = strlen(type);
  if (strncasecmp(ct, type, n)) return 0;
  const char *p = ct + n;
  while (*p == ' ' || *p == '\t') p++;
  return *p == 0 || *p == ';';
}

int sg_request_begin(sg_request *q, const char *content_type) {
  if (q->has_err) return q->err.code;
  const char *ct = content_type ? content_type : "";
  while (*ct == ' ' || *ct == '\t') ct++;
  if (media_type_is(ct, "application/json")) {
    q->kind = 1;
    q->json = 1;
    return 0;
  }
  if (!media_type_is(ct, "multipart/form-data"))
    return sg_request_fail(q, SG_REQUEST_EUNSUPPORTED, NULL, "the body must be multipart/form-data or application/json");
  char b[MP_MAX_BOUNDARY + 2];
  const char *bd = header_param(ct, "boundary", b, sizeof b);
  if (!bd || !*bd || strlen(bd) > MP_MAX_BOUNDARY || strpbrk(bd, "\r\n"))
    return sg_request_fail(q, SG_REQUEST_EBAD, NULL,
                           "multipart/form-data needs a boundary parameter of 1 to %d characters", MP_MAX_BOUNDARY);
  q->kind = 2;
  q->delim_len = (size_t)snprintf(q->delim, sizeof q->delim, "\r\n--%s", bd);
  /* the first delimiter may open the body without a CRLF before it: as if the body began with one */
  q->matched = 2;
  q->mp = MP_PREAMBLE;
  return 0;
}

int sg_request_add_body(sg_request *q, const void *data, size_t n) {
  if (q->has_err) return q->err.code;
  if (q->kind == 1) return sg_request_add_json(q, data, n);
  if (q->kind == 2) return multipart_feed(q, data, n);
  return sg_request_fail(q, SG_REQUEST_EBAD, NULL, "a body before its media type");
}

/* ---- the parameters ---- */

/* The text of parameter p, NULL when absent. Numbers and names must not contain NUL bytes. */
static const char *param_text(sg_request *q, int p) {
  if (!q->present[p]) return NULL;
  return q->vals[p].data ? (const char *)q->vals[p].data : "";
}

/* The one grammar of every numeric value, JSON's: an optional '-', digits without a leading zero, an optional
 * fraction, an optional exponent ("-12", "0.5", "1e3", "2.5E-1"); no '+', hex, "inf", "nan" or white space. Returns
 * 1 when s is such a number and fills the decimal digits (without leading zeros) into digits (up to cap - 1 of
 * them, *nd counts them all) and the power of ten they are scaled by into *exp10. */
static int number_syntax(const char *s, int *neg, char *digits, size_t cap, size_t *nd, long *exp10) {
  const char *p = s;
  *neg = *p == '-';
  if (*neg) p++;
  if (!(*p >= '0' && *p <= '9')) return 0;
  if (*p == '0' && p[1] >= '0' && p[1] <= '9') return 0;
  size_t n = 0;
  long e = 0;
  for (; *p >= '0' && *p <= '9'; p++)
    if (n || *p != '0') {
      if (n + 1 < cap) digits[n] = *p;
      n++;
    }
  if (*p == '.') {
    p++;
    if (!(*p >= '0' && *p <= '9')) return 0;
    size_t zeros = 0; /* zeros not yet known to be followed by another digit: trailing ones change nothing */
    for (; *p >= '0' && *p <= '9'; p++) {
      if (*p == '0') {
        zeros++;
        continue;
      }
      for (; zeros; zeros--, e--)
        if (n) {
          if (n + 1 < cap) digits[n] = '0';
          n++;
        }
      if (n + 1 < cap) digits[n] = *p;
      n++;
      e--;
    }
  }
  if (*p == 'e' || *p == 'E') {
    p++;
    int eneg = *p == '-';
    if (*p == '-' || *p == '+') p++;
    if (!(*p >= '0' && *p <= '9')) return 0;
    long x = 0;
    for (; *p >= '0' && *p <= '9'; p++)
      if (x < 100000) x = x * 10 + (*p - '0');
    e += eneg ? -x : x;
  }
  if (*p) return 0;
  digits[n < cap ? n : cap - 1] = 0;
  *nd = n;
  *exp10 = e;
  return 1;
}

/* The text of parameter p checked against the number grammar, or NULL with an error recorded (EBAD). */
static const char *number_text(sg_request *q, int p, int *neg, char *digits, size_t cap, size_t *nd, long *exp10) {
  const char *s = param_text(q, p);
  char shown[40];
  if (strlen(s) != q->vals[p].len || !number_syntax(s, neg, digits, cap, nd, exp10)) {
    sg_request_fail(q, SG_REQUEST_EBAD, PARAM_NAMES[p], "%s: '%s' is not a decimal number", PARAM_NAMES[p],
                    sg_request_safe_name(s, shown, sizeof shown));
    return NULL;
  }
  return s;
}

/* Parses parameter p as a whole number in [lo, hi] into *out, exactly (no trip through double: "1e3" and "1000.0"
 * are 1000, "2.5" is not whole). Returns 0 (absent: *out unchanged), 1, or a negative code with the error
 * recorded: EBAD when it is not a number, EINVALID when it is not whole or out of range. */
static int int_param(sg_request *q, int p, int64_t lo, int64_t hi, int64_t *out) {
  if (!q->present[p]) return 0;
  const char *name = PARAM_NAMES[p];
  int neg;
  char digits[MAX_FIELD_BYTES + 8];
  size_t nd;
  long e;
  if (!number_text(q, p, &neg, digits, sizeof digits, &nd, &e)) return q->err.code;
  if (nd >= sizeof digits) /* cannot happen within MAX_FIELD_BYTES; refused rather than misread */
    return sg_request_fail(q, SG_REQUEST_EINVALID, name, "%s: must be between %lld and %lld", name, (long long)lo,
                           (long long)hi);
  /* whole: the digits scaled away (e < 0) are zeros; a fraction's trailing zeros are not digits already, and a
   * value is at most MAX_FIELD_BYTES long, so every digit is in the buffer */
  while (e < 0 && nd > 0 && digits[nd - 1] == '0') nd--, e++;
  if (nd == 0) e = 0; /* zero */
  if (e < 0) return sg_request_fail(q, SG_REQUEST_EINVALID, name, "%s: must be a whole number", name);
  /* |value| = digits x 10^e; anything of more than 19 digits is beyond int64 */
  uint64_t mag = 0;
  int big = nd + (size_t)e > 19;
  for (size_t k = 0; !big && k < nd + (size_t)e; k++) {
    unsigned dgt = k < nd ? (unsigned)(digits[k] - '0') : 0;
    if (mag > (UINT64_MAX - dgt) / 10) big = 1;
    else mag = mag * 10 + dgt;
  }
  int ok = !big && (neg ? mag <= (uint64_t)INT64_MAX + 1 : mag <= (uint64_t)INT64_MAX);
  int64_t v = 0;
  if (ok) v = neg ? (mag == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)mag) : (int64_t)mag;
  if (!ok || v < lo || v > hi)
    return sg_request_fail(q, SG_REQUEST_EINVALID, name, "%s: must be between %lld and %lld", name, (long long)lo,
                           (long long)hi);
  *out = v;
  return 1;
}

/* Compares the number (-1)^neg x digits x 10^exp10 (number_syntax's digits, nd of them) with the whole number b,
 * exactly. Returns <0, 0 or >0. */
static int decimal_cmp(int neg, const char *digits, size_t nd, long exp10, int64_t b) {
  while (nd && digits[nd - 1] == '0') nd--, exp10++;
  if (!nd) return b > 0 ? -1 : b < 0 ? 1 : 0; /* zero, "-0" too */
  int bneg = b < 0;
  if (neg != bneg) return neg ? -1 : 1;
  char bd[24];
  long bn = b ? snprintf(bd, sizeof bd, "%llu", bneg ? 0ULL - (unsigned long long)b : (unsigned long long)b) : 0;
  int mag; /* |number| against |b|: both 0.d1d2... x 10^(integer digits) */
  long in = (long)nd + exp10;
  if (!bn || in != bn) {
    mag = !bn || in > bn ? 1 : -1;
  } else {
    mag = 0;
    for (long k = 0; !mag && k < ((long)nd > bn ? (long)nd : bn); k++) {
      char x = k < (long)nd ? digits[k] : '0', y = k < bn ? bd[k] : '0';
      mag = x == y ? 0 : x > y ? 1 : -1;
    }
  }
  return neg ? -mag : mag;
}

/* Parses parameter p as a number in [lo, hi] (whole bounds, compared exactly: 100.0000000000000000000001 is over
 * 100 although it is 100 as a double) into *out. Returns 0 (absent: *out unchanged), 1, or a negative code with the
 * error recorded: EBAD when it is not a number, EINVALID when out of range. */
static int real_param(sg_request *q, int p, double lo, double hi, double *out) {
  if (!q->present[p]) return 0;
  const char *name = PARAM_NAMES[p];
  int neg;
  char digits[MAX_FIELD_BYTES + 8];
  size_t nd;
  long e;
  const char *s = number_text(q, p, &neg, digits, sizeof digits, &nd, &e);
  if (!s) return q->err.code;
  errno = 0;
  double v = strtod(s, NULL); /* the grammar above is a subset of strtod's */
  if (!isfinite(v) || decimal_cmp(neg, digits, nd, e, (int64_t)lo) < 0 || decimal_cmp(neg, digits, nd, e, (int64_t)hi) > 0)
    return sg_request_fail(q, SG_REQUEST_EINVALID, name, "%s: must be between %g and %g", name, lo, hi);
  *out = v;
  return 1;
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Reads parameter p, a mode of the words auto, true/1/yes, false/0/no (any case; invert and filled), with parse
 * (sg_invert_parse or sg_filled_parse, which read the same words) into *out, left as it is when p is absent.
 * Returns 1 when given, 0 when absent, or the recorded error's code (EINVALID, naming p). */
static int mode_param(sg_request *q, int p, int (*parse)(const char *), int *out) {
  const char *s = param_text(q, p);
  if (!s) return 0;
  int v = strlen(s) == q->vals[p].len ? parse(s) : -1; /* a NUL inside is no word */
  if (v < 0) {
    char shown[40];
    return sg_request_fail(q, SG_REQUEST_EINVALID, PARAM_NAMES[p], "%s: '%s' is not auto, true or false",
                           PARAM_NAMES[p], sg_request_safe_name(s, shown, sizeof shown));
  }
  *out = v;
  return 1;
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
  int sketch = q->present[P_SKETCH];
  if (!sketch && !P->sketch_optional)
    return sg_request_fail(q, SG_REQUEST_EBAD, "sketch", "sketch: required (a PNG or JPEG file)");
  double d;
  int64_t i;
  int rc;
  int32_t max_steps = P->max_steps;
  if ((rc = int_param(q, P_STEPS, 1, max_steps, &i)) < 0) return rc;
  if (rc) a->jr.steps = (int32_t)i;
  if (a->jr.steps > max_steps) a->jr.steps = max_steps;
  if ((rc = real_param(q, P_BETA, 0, 100, &d)) < 0) return rc;
  if (rc) a->jr.beta = d;
  if (!sketch) { /* unguided */
    if (rc && d > 0) return sg_request_fail(q, SG_REQUEST_EINVALID, "beta", "beta: guidance needs a sketch");
    a->jr.beta = 0;
  }
  if (q->present[P_STOP] && q->present[P_STOP_STEP])
    return sg_request_fail(q, SG_REQUEST_EINVALID, "stop_step", "stop_step: give stop or stop_step, not both");
  if ((rc = real_param(q, P_STOP, 0, 1, &d)) < 0) return rc;
  if (rc) a->jr.stop = d;
  if ((rc = int_param(q, P_STOP_STEP, 0, a->jr.steps, &i)) < 0) return rc;
  if (rc) a->jr.stop_step = (int32_t)i;
  if ((rc = real_param(q, P_CFG, 0, 100, &d)) < 0) return rc;
  if (rc) a->jr.cfg = d;
  if ((rc = real_param(q, P_ETA, 0, 10, &d)) < 0) return rc;
  if (rc) a->jr.eta = d;
  int64_t seed = -1;
  if ((rc = int_param(q, P_SEED, -1, INT64_MAX - SG_JOBS_MAX_IMAGES, &seed)) < 0) return rc;
  if (seed < 0) {
    uint32_t v = 0;
    if (getrandom(&v, sizeof v, 0) != sizeof v) v = (uint32_t)(now_s() * 1e6);
    seed = v;
    a->seed_random = 1;
  }
  a->jr.seed = seed;
  if ((rc = int_param(q, P_N, 1, P->max_images, &i)) < 0) return rc;
  if (rc) a->jr.n_images = (int32_t)i;
  if ((rc = int_param(q, P_TIMEOUT_MS, 1, P->max_timeout_ms, &i)) < 0) return rc;
  if (rc) a->timeout_ms = i;
  if (a->jr.beta > 0 && !P->has_lgp && sg_generate_guided_steps(a->jr.steps, a->jr.stop, a->jr.stop_step) > 0)
    return sg_request_fail(q, SG_REQUEST_EINVALID, "beta", "beta: this model has no LGP, so it cannot follow a sketch");
  char shown[40];
  const char *s = param_text(q, P_SAMPLER);
  if (s) {
    int k = strlen(s) == q->vals[P_SAMPLER].len ? sg_sampler_kind_parse(s) : -1;
    if (k < 0)
      return sg_request_fail(q, SG_REQUEST_EINVALID, "sampler", "sampler: '%s' is not ddim, ddpm, euler_a or dpmpp_2m",
                             sg_request_safe_name(s, shown, sizeof shown));
    a->jr.sampler = (sg_sampler_kind)k;
  }
  int inv = SG_INVERT_AUTO, filled = SG_FILLED_AUTO;
  if ((rc = mode_param(q, P_INVERT, sg_invert_parse, &inv)) < 0) return rc;
  if ((rc = mode_param(q, P_FILLED, sg_filled_parse, &filled)) < 0) return rc;
  if ((s = param_text(q, P_DRY_RUN))) {
    int v = strlen(s) == q->vals[P_DRY_RUN].len ? sg_invert_parse(s) : -1; /* the same words: true/false/1/0 */
    if (v != SG_INVERT_TRUE && v != SG_INVERT_FALSE)
      return sg_request_fail(q, SG_REQUEST_EINVALID, "dry_run", "dry_run: '%s' is not true or false",
                             sg_request_safe_name(s, shown, sizeof shown));
    a->dry_run = v == SG_INVERT_TRUE;
  }
  if ((s = param_text(q, P_BATCHING))) {
    int v = strlen(s) == q->vals[P_BATCHING].len ? sg_invert_parse(s) : -1;
    if (v != SG_INVERT_TRUE && v != SG_INVERT_FALSE)
      return sg_request_fail(q, SG_REQUEST_EINVALID, "batching", "batching: '%s' is not true or false",
                             sg_request_safe_name(s, shown, sizeof shown));
    a->jr.solo = v == SG_INVERT_FALSE; /* false: never share a step with other jobs (bit-exact repeatability) */
  }
  if (!sketch) return 0;
  /* the sketch: by its magic bytes, its size checked from the header before decoding */
  sg_buf *sk = &q->vals[P_SKETCH];
  if (sk->len > 5 && !memcmp(sk->data, "data:", 5)) { /* a data URL in a multipart text field */
    sg_buf dec = {0};
    const char *comma = memchr(sk->data, ',', sk->len);
    int brc = comma && memmem(sk->data, (size_t)((const uint8_t *)comma - sk->data), ";base64", 7)
                  ? b64_decode(comma + 1, sk->len - (size_t)((const uint8_t *)comma + 1 - sk->data), &dec)
                  : -1;
    if (brc) {
      sg_buf_free(&dec);
      if (brc == -2) return sg_request_fail(q, SG_REQUEST_ENOMEM, NULL, "out of memory");
      return sg_request_fail(q, SG_REQUEST_EBAD, "sketch", "sketch: a data URL must be base64 (data:image/png;base64,...)");
    }
    sg_buf_free(sk);
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
  rc = q->map ? sg_sketch_map_filled(&im, size, (sg_invert)inv, (sg_filled)filled, q->map, &a->inverted,
                                     &a->filled_regions, err, sizeof err)
             : SG_IMAGE_ENOMEM;
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
  l.has_lgp = 1;
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
  if (!lim || lim->n_names < 0 || lim->n_names > SG_REQUEST_MAX_NAMES || (lim->n_names && !lim->names)) return NULL;
  sg_request *q = calloc(1, sizeof *q);
  if (!q) return NULL;
  q->lim = *lim;
  q->last_param = -1;
  return q;
}

void sg_request_free(sg_request *q) {
  if (!q) return;
  sg_buf_free(&q->raw);
  sg_buf_free(&q->line);
  for (int i = 0; i < P_COUNT + SG_REQUEST_MAX_NAMES; i++) sg_buf_free(&q->vals[i]);
  free(q->map);
  free(q);
}

int sg_request_parse(sg_request *q, sg_request_params *out) {
  memset(out, 0, sizeof *out);
  if (!q->has_err && q->json) parse_json_body(q);
  /* a body in which the boundary never shows has no parts (and so no prompt); one cut short is malformed */
  if (!q->has_err && q->kind == 2 && q->mp != MP_END && (q->mp != MP_PREAMBLE || q->mp_parts))
    sg_request_fail(q, SG_REQUEST_EBAD, NULL, "malformed or truncated multipart/form-data body (no closing delimiter)");
  if (q->has_err) return q->err.code;
  return gen_parse(q, out);
}

const sg_request_error *sg_request_get_error(const sg_request *q) { return q && q->has_err ? &q->err : NULL; }

const char *sg_request_extra(const sg_request *q, const char *name, size_t *len) {
  for (int i = 0; q && name && i < q->lim.n_names; i++)
    if (!q->lim.names[i].as && !strcmp(name, q->lim.names[i].name) && q->present[P_COUNT + i]) {
      if (len) *len = q->vals[P_COUNT + i].len;
      return q->vals[P_COUNT + i].data ? (const char *)q->vals[P_COUNT + i].data : "";
    }
  return NULL;
}

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
  /* as sg_generate counts them: none without a sketch or at beta 0 */
  int32_t guided = j->sketch && j->beta > 0 ? sg_generate_guided_steps(j->steps, j->stop, j->stop_step) : 0;
  json_object_set_new(p, "guided_steps", json_integer(guided));
  json_object_set_new(p, "cfg", json_real(j->cfg));
  json_object_set_new(p, "eta", json_real(j->eta));
  json_object_set_new(p, "seed", json_integer(j->seed));
  json_object_set_new(p, "sampler", json_string(sg_sampler_kind_name(j->sampler)));
  json_object_set_new(p, "n", json_integer(j->n_images));
  json_object_set_new(p, "timeout_ms", json_integer(a->timeout_ms));
  json_object_set_new(p, "batching", json_boolean(!j->solo));
  int64_t ink = 0;
  for (int32_t k = 0; j->sketch && k < size * size; k++) ink += j->sketch[k] > 0.5f;
  json_object_set_new(s, "format", json_string(sg_image_format_name(a->format)));
  json_object_set_new(s, "width", json_integer(a->width));
  json_object_set_new(s, "height", json_integer(a->height));
  json_object_set_new(s, "inverted", json_boolean(a->inverted));
  json_object_set_new(s, "filled_regions", json_integer(a->filled_regions));
  json_object_set_new(s, "stroke_pixels", json_integer(ink));
  json_object_set_new(s, "map_size", json_integer(size));
  json_object_set_new(o, "valid", json_true());
  json_object_set_new(o, "params", p);
  json_object_set_new(o, "sketch", s);
  char *text = json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(15));
  json_decref(o);
  return sg_mem_json_to_malloc(text); /* the caller's free() */
}
