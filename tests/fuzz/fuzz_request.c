/* Fuzz target for server/request.c: a Content-Type line and a body (multipart/form-data or JSON) into generation
 * parameters, with the server's default limits; the same body fed whole and in fuzzer-chosen pieces must give the
 * same outcome, and an accepted request must be within the limits. */
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "request.h"

#include "fuzz.h"

/* The outcome of one parse, kept to compare the whole body's with the pieces'. */
typedef struct {
  int rc;
  sg_request_error err;
  char *describe; /* the dry-run answer without its seed when that was drawn at random; NULL on error */
  float *map;     /* the sketch map, map_size^2 floats, or NULL */
  int32_t map_size;
} outcome;

/* Returns 1 when s[0..n) is valid UTF-8 without NUL bytes (what the parser promises for prompts). */
static int utf8_ok(const unsigned char *s, size_t n) {
  for (size_t i = 0; i < n;) {
    unsigned c = s[i], len = c < 0x80 ? 1 : c >= 0xc2 && c < 0xe0 ? 2 : c >= 0xe0 && c < 0xf0 ? 3 : c >= 0xf0 && c <= 0xf4 ? 4 : 0;
    if (!c || !len || i + len > n) return 0;
    uint32_t cp = len == 1 ? c : c & (0x7fu >> len);
    for (unsigned k = 1; k < len; k++) {
      if ((s[i + k] & 0xc0) != 0x80) return 0;
      cp = cp << 6 | (s[i + k] & 0x3f);
    }
    if ((len == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) || (len == 4 && (cp < 0x10000 || cp > 0x10ffff)))
      return 0;
    i += len;
  }
  return 1;
}

/* Checks an accepted request against the limits and keeps what the other parse must match. */
static void check_accepted(const sg_request_limits *lim, const sg_request_params *p, outcome *o) {
  const sg_job_request *j = &p->jr;
  FUZZ_CHECK(j->prompt != NULL, "accepted without a prompt");
  size_t plen = strlen(j->prompt), nlen = j->negative_prompt ? strlen(j->negative_prompt) : 0;
  FUZZ_CHECK(plen <= (size_t)lim->max_prompt_bytes && nlen <= (size_t)lim->max_prompt_bytes,
             "prompt of %zu bytes, negative prompt of %zu (limit %d)", plen, nlen, lim->max_prompt_bytes);
  FUZZ_CHECK(utf8_ok((const unsigned char *)j->prompt, plen), "the prompt is not UTF-8");
  FUZZ_CHECK(!j->negative_prompt || utf8_ok((const unsigned char *)j->negative_prompt, nlen),
             "the negative prompt is not UTF-8");
  FUZZ_CHECK(j->steps >= 1 && j->steps <= lim->max_steps, "steps %d", j->steps);
  FUZZ_CHECK(j->n_images >= 1 && j->n_images <= lim->max_images, "n %d", j->n_images);
  FUZZ_CHECK(j->seed >= 0, "seed %lld", (long long)j->seed);
  FUZZ_CHECK(j->stop_step >= -1, "stop_step %d", j->stop_step);
  FUZZ_CHECK(j->beta == j->beta && j->stop == j->stop && j->cfg == j->cfg && j->eta == j->eta, "a NaN parameter");
  FUZZ_CHECK(p->timeout_ms > 0 && p->timeout_ms <= lim->max_timeout_ms, "timeout_ms %lld",
             (long long)p->timeout_ms);
  FUZZ_CHECK(p->map_size == lim->image_size, "map size %d", p->map_size);
  if (j->sketch) {
    FUZZ_CHECK(p->format == SG_IMAGE_PNG || p->format == SG_IMAGE_JPEG, "a sketch of format %d", (int)p->format);
    FUZZ_CHECK(p->width > 0 && p->height > 0 && (int64_t)p->width * p->height <= lim->max_image_pixels,
               "a %d x %d sketch", p->width, p->height);
    size_t n = (size_t)p->map_size * (size_t)p->map_size;
    for (size_t i = 0; i < n; i++) FUZZ_CHECK(j->sketch[i] == 0.0f || j->sketch[i] == 1.0f, "map[%zu] not binary", i);
    o->map = malloc(n * sizeof *o->map);
    FUZZ_CHECK(o->map != NULL, "out of memory");
    memcpy(o->map, j->sketch, n * sizeof *o->map);
    o->map_size = p->map_size;
  }
  char *d = sg_request_describe(p);
  FUZZ_CHECK(d != NULL, "sg_request_describe failed");
  json_error_t jerr;
  json_t *root = json_loads(d, 0, &jerr);
  FUZZ_CHECK(root && json_is_true(json_object_get(root, "valid")), "the dry-run answer is not JSON with valid true: %s",
             d);
  json_t *params = json_object_get(root, "params");
  FUZZ_CHECK(json_is_object(params), "the dry-run answer has no params: %s", d);
  if (p->seed_random) json_object_del(params, "seed");
  o->describe = json_dumps(root, JSON_SORT_KEYS | JSON_COMPACT);
  FUZZ_CHECK(o->describe != NULL, "out of memory");
  json_decref(root);
  free(d);
}

/* Parses the body after Content-Type ct in pieces: piece 0 means the whole body at once, else each piece's size
 * is 1 + (its first byte % piece). has_lgp says whether the model can follow a sketch. */
static void parse(const char *ct, const uint8_t *body, size_t len, size_t piece, int has_lgp, outcome *o) {
  memset(o, 0, sizeof *o);
  sg_request_limits lim = sg_request_default_limits();
  lim.has_lgp = has_lgp;
  sg_request *q = sg_request_new(&lim);
  FUZZ_CHECK(q != NULL, "sg_request_new failed");
  int rc = sg_request_begin(q, ct);
  FUZZ_CHECK(rc == 0 || rc == SG_REQUEST_EUNSUPPORTED || rc == SG_REQUEST_EBAD, "begin returned %d", rc);
  for (size_t at = 0; rc == 0 && at < len;) {
    size_t n = piece ? 1 + body[at] % piece : len;
    if (n > len - at) n = len - at;
    rc = sg_request_add_body(q, body + at, n);
    FUZZ_CHECK(rc <= 0 && rc >= SG_REQUEST_ENOMEM, "add_body returned %d", rc);
    at += n;
  }
  if (rc == 0) {
    sg_request_params p;
    rc = sg_request_parse(q, &p);
    FUZZ_CHECK(rc <= 0 && rc >= SG_REQUEST_ENOMEM, "parse returned %d", rc);
    if (rc == 0) {
      FUZZ_CHECK(sg_request_get_error(q) == NULL, "an accepted request has an error");
      check_accepted(&lim, &p, o);
    }
  }
  o->rc = rc;
  if (rc) {
    const sg_request_error *e = sg_request_get_error(q);
    FUZZ_CHECK(e != NULL && e->code == rc, "error %d without its record", rc);
    FUZZ_CHECK(e->message[0] != '\0', "error %d without a message", rc);
    FUZZ_CHECK(!e->param[0] || !strncmp(e->message, e->param, strlen(e->param)),
               "the message \"%s\" does not start with its parameter \"%s\"", e->message, e->param);
    FUZZ_CHECK(!e->param[0] || sg_request_is_param(e->param, strlen(e->param)), "the error's parameter \"%s\" is not one",
               e->param);
    o->err = *e;
    FUZZ_CHECK(sg_request_add_body(q, "x", 1) == rc || rc == SG_REQUEST_EUNSUPPORTED,
               "after error %d, add_body did not return it again", rc);
  }
  sg_request_free(q);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t len) {
  /* the Content-Type header's value, up to the first newline; the body after it */
  const uint8_t *nl = memchr(data, '\n', len);
  size_t ct_len = nl ? (size_t)(nl - data) : len;
  char *ct = malloc(ct_len + 1);
  FUZZ_CHECK(ct != NULL, "out of memory");
  memcpy(ct, data, ct_len);
  ct[ct_len] = 0;
  const uint8_t *body = nl ? nl + 1 : data + len;
  size_t body_len = nl ? len - ct_len - 1 : 0;

  outcome whole, pieces;
  int has_lgp = len % 7 != 0; /* now and then a model without an LGP, which refuses beta > 0 */
  parse(ct, body, body_len, 0, has_lgp, &whole);
  parse(ct, body, body_len, 1 + len % 23, has_lgp, &pieces);
  FUZZ_CHECK(whole.rc == pieces.rc, "the whole body gave %d (%s), its pieces %d (%s)", whole.rc, whole.err.message,
             pieces.rc, pieces.err.message);
  FUZZ_CHECK(!strcmp(whole.err.param, pieces.err.param) && !strcmp(whole.err.message, pieces.err.message),
             "the whole body's error \"%s\" (%s) differs from the pieces' \"%s\" (%s)", whole.err.message,
             whole.err.param, pieces.err.message, pieces.err.param);
  FUZZ_CHECK((whole.describe == NULL) == (pieces.describe == NULL) &&
                 (!whole.describe || !strcmp(whole.describe, pieces.describe)),
             "the parameters differ:\n%s\n%s", whole.describe ? whole.describe : "-",
             pieces.describe ? pieces.describe : "-");
  FUZZ_CHECK((whole.map == NULL) == (pieces.map == NULL) &&
                 (!whole.map || !memcmp(whole.map, pieces.map, sizeof(float) * (size_t)whole.map_size * (size_t)whole.map_size)),
             "the sketch maps differ");
  free(whole.describe), free(pieces.describe), free(whole.map), free(pieces.map);
  free(ct);
  return 0;
}
