/* Unit tests of server/request.c without a server: the number grammar (exact integers), the multipart parser split at
 * every byte, repeated and empty parts, media types, JSON edges, dry-run descriptions, and the filled mode. */
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "request.h"

static uint8_t *sketch;
static size_t sketch_len;

/* A multipart body of (name, value) pairs and the sketch file, written into out (cap bytes). Returns its length. */
static size_t multipart(char *out, size_t cap, const char *const *kv, int n) {
  size_t o = 0;
  for (int i = 0; i < n; i++)
    o += (size_t)snprintf(out + o, cap - o, "--BB\r\nContent-Disposition: form-data; name=\"%s\"\r\n\r\n%s\r\n", kv[2 * i],
                          kv[2 * i + 1]);
  o += (size_t)snprintf(out + o, cap - o,
                        "--BB\r\nContent-Disposition: form-data; name=\"sketch\"; filename=\"s.png\"\r\n"
                        "Content-Type: image/png\r\n\r\n");
  memcpy(out + o, sketch, sketch_len);
  o += sketch_len;
  o += (size_t)snprintf(out + o, cap - o, "\r\n--BB--\r\n");
  return o;
}

/* Parses a body given in pieces cut at the offsets in cuts (ascending, ncut of them). Returns the parse's code;
 * *out gets the parameters, *q the request (the caller frees it). */
static int parse_pieces(const char *ct, const char *body, size_t len, const size_t *cuts, int ncut, sg_request **q,
                        sg_request_params *out) {
  sg_request_limits lim = sg_request_default_limits();
  *q = sg_request_new(&lim);
  int rc = sg_request_begin(*q, ct);
  size_t at = 0;
  for (int i = 0; i <= ncut && !rc; i++) {
    size_t end = i < ncut ? cuts[i] : len;
    rc = sg_request_add_body(*q, body + at, end - at);
    at = end;
  }
  return sg_request_parse(*q, out);
}

static int parse(const char *ct, const char *body, size_t len, sg_request **q, sg_request_params *out) {
  return parse_pieces(ct, body, len, NULL, 0, q, out);
}

/* The seed parsed from a multipart field with this text, or the error code (negative) as an int64. */
static int64_t seed_of(const char *text, const char **param) {
  static char body[65536];
  const char *kv[] = {"prompt", "a star", "seed", text};
  size_t n = multipart(body, sizeof body, kv, 2);
  sg_request *q;
  sg_request_params p;
  int rc = parse("multipart/form-data; boundary=BB", body, n, &q, &p);
  int64_t v = rc ? rc : p.jr.seed;
  if (param) *param = rc ? (sg_request_get_error(q)->param[0] ? "seed" : "") : "";
  sg_request_free(q);
  return v;
}

static void test_numbers(void) {
  const struct {
    const char *text;
    int64_t want;
  } ok[] = {{"0", 0}, {"-0", 0}, {"42", 42}, {"1e3", 1000}, {"1E3", 1000}, {"1000.000", 1000}, {"1.5e1", 15},
            {"9223372036854775743", INT64_MAX - 64}, {"9.223372036854775743e18", INT64_MAX - 64},
            {"92233720368547757430e-1", INT64_MAX - 64}, {"0.0000000000000000000000000000000000000012e40", 12},
            {"1.000000000000000000000000000000000000000000000", 1}};
  for (size_t i = 0; i < sizeof ok / sizeof *ok; i++)
    CHECK(seed_of(ok[i].text, NULL) == ok[i].want, "seed %s: %lld", ok[i].text, (long long)seed_of(ok[i].text, NULL));
  const char *invalid[] = {"9223372036854775744", "9223372036854775807", "9223372036854775808", "18446744073709551616",
                           "99999999999999999999999999999", "-2", "-9223372036854775808", "1e19", "1e100000", "2.5",
                           "1e-1", "1.25e1"};
  for (size_t i = 0; i < sizeof invalid / sizeof *invalid; i++) {
    const char *param;
    int64_t v = seed_of(invalid[i], &param);
    CHECK(v == SG_REQUEST_EINVALID && !strcmp(param, "seed"), "seed %s: %lld", invalid[i], (long long)v);
  }
  const char *bad[] = {"", "0x10", "0x1p3", "+5", " 5", "5 ", ".5", "5.", "1e", "007", "1_0", "inf", "nan", "--1", "1e+",
                       "١"};
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    const char *param;
    int64_t v = seed_of(bad[i], &param);
    CHECK(v == SG_REQUEST_EBAD && !strcmp(param, "seed"), "seed '%s': %lld", bad[i], (long long)v);
  }
  CHECK(seed_of("-1", NULL) >= 0, "-1 draws a seed");
}

static void test_multipart_splits(void) {
  static char body[65536];
  const char *kv[] = {"prompt", "a star\r\n--B not a delimiter\r\r\n", "steps", "3", "seed", "42", "negative_prompt",
                      "", "dry_run", "true"};
  size_t n = multipart(body, sizeof body, kv, 5);
  sg_request *q;
  sg_request_params ref;
  const char *ct = "multipart/form-data; boundary=\"BB\"";
  CHECK(parse(ct, body, n, &q, &ref) == 0, "whole body: %s", sg_request_get_error(q)->message);
  char *want = sg_request_describe(&ref);
  CHECK(want && strstr(want, "\"prompt\":\"a star\\r\\n--B not a delimiter\\r\\r\\n\"") && strstr(want, "\"seed\":42") &&
            strstr(want, "\"steps\":3") && strstr(want, "\"negative_prompt\":\"\""),
        "%s", want ? want : "(null)");
  sg_request_free(q);
  for (size_t k = 1; k < n; k++) { /* two pieces cut at every byte, and three pieces */
    sg_request_params p;
    size_t cuts[2] = {k, k + (n - k) / 2};
    for (int ncut = 1; ncut <= 2; ncut++) {
      int rc = parse_pieces(ct, body, n, cuts, ncut, &q, &p);
      char *got = rc ? NULL : sg_request_describe(&p);
      CHECK(!rc && got && !strcmp(got, want), "cut at %zu (%d): %s", k, ncut, rc ? sg_request_get_error(q)->message : got);
      free(got);
      sg_request_free(q);
    }
  }
  size_t *every = malloc(sizeof *every * n);
  for (size_t k = 0; k + 1 < n; k++) every[k] = k + 1;
  sg_request_params p;
  int rc = parse_pieces(ct, body, n, every, (int)n - 1, &q, &p);
  char *got = rc ? NULL : sg_request_describe(&p);
  CHECK(!rc && got && !strcmp(got, want), "byte by byte: %s", got ? got : sg_request_get_error(q)->message);
  free(got);
  sg_request_free(q);
  free(every);
  free(want);
}

/* The error (code and param) of a multipart body of these pairs. */
static void expect_multipart_error(const char *const *kv, int n, int code, const char *param) {
  static char body[65536];
  size_t len = multipart(body, sizeof body, kv, n);
  sg_request *q;
  sg_request_params p;
  int rc = parse("multipart/form-data; boundary=BB", body, len, &q, &p);
  const sg_request_error *e = sg_request_get_error(q);
  CHECK(rc == code && e && !strcmp(e->param, param), "%s=%s...: %d %s", kv[0], kv[1], rc, e ? e->message : "");
  sg_request_free(q);
}

static void test_multipart_errors(void) {
  const char *empty_first[] = {"prompt", "", "prompt", "a star"};
  expect_multipart_error(empty_first, 2, SG_REQUEST_EBAD, "prompt");
  const char *empty_steps[] = {"prompt", "x", "steps", "", "steps", "3"};
  expect_multipart_error(empty_steps, 3, SG_REQUEST_EBAD, "steps");
  const char *twice[] = {"prompt", "x", "seed", "1", "seed", "1"};
  expect_multipart_error(twice, 3, SG_REQUEST_EBAD, "seed");
  const char *unknown[] = {"prompt", "x", "colour", "red"};
  expect_multipart_error(unknown, 2, SG_REQUEST_EBAD, "");
  const char *empty_num[] = {"prompt", "x", "cfg", ""};
  expect_multipart_error(empty_num, 2, SG_REQUEST_EBAD, "cfg");
  const char *beta0[] = {"prompt", "x", "beta", "0", "steps", "10", "dry_run", "1"};
  static char body[65536];
  size_t len = multipart(body, sizeof body, beta0, 4);
  sg_request *q;
  sg_request_params p;
  CHECK(parse("multipart/form-data; boundary=BB", body, len, &q, &p) == 0, "beta 0");
  char *d = sg_request_describe(&p);
  CHECK(d && strstr(d, "\"guided_steps\":0"), "beta 0 guides no step: %s", d ? d : "");
  free(d);
  sg_request_free(q);
  /* a quoted filename holding "; name=..." is the filename's: the part is still the sketch */
  len = (size_t)snprintf(body, sizeof body,
                         "--BB\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\na star\r\n"
                         "--BB\r\nContent-Disposition: form-data; filename=\"a;name=steps \\\"b\\\".png\"; name=\"sketch\"\r\n"
                         "Content-Type: image/png\r\n\r\n");
  memcpy(body + len, sketch, sketch_len);
  len += sketch_len;
  len += (size_t)snprintf(body + len, sizeof body - len, "\r\n--BB--\r\n");
  int qrc = parse("multipart/form-data; boundary=BB", body, len, &q, &p);
  CHECK(qrc == 0, "a filename with ;name= inside its quotes: %d %s", qrc, sg_request_get_error(q)->message);
  sg_request_free(q);
  /* framing: truncated, no closing delimiter, a part without a name, a bad delimiter line */
  const char *bodies[] = {"--BB\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\nx",
                          "--BB\r\nContent-Disposition: form-data; nom=\"prompt\"\r\n\r\nx\r\n--BB--\r\n",
                          "--BB\r\n\r\nx\r\n--BB--\r\n", "--BBx\r\n", "--BB\r\n--BB\r\n", "--BB-x"};
  for (size_t i = 0; i < sizeof bodies / sizeof *bodies; i++) {
    int rc = parse("multipart/form-data; boundary=BB", bodies[i], strlen(bodies[i]), &q, &p);
    CHECK(rc == SG_REQUEST_EBAD && !sg_request_get_error(q)->param[0], "body %zu: %d", i, rc);
    sg_request_free(q);
  }
}

static void test_media_types_and_json(void) {
  const char *unsupported[] = {NULL, "", "text/plain", "application/jsonx", "application/json-seq",
                               "multipart/form-dataX; boundary=BB", "application/x-www-form-urlencoded"};
  sg_request_limits lim = sg_request_default_limits();
  for (size_t i = 0; i < sizeof unsupported / sizeof *unsupported; i++) {
    sg_request *q = sg_request_new(&lim);
    CHECK(sg_request_begin(q, unsupported[i]) == SG_REQUEST_EUNSUPPORTED, "%s", unsupported[i] ? unsupported[i] : "NULL");
    sg_request_free(q);
  }
  const char *no_boundary[] = {"multipart/form-data", "multipart/form-data; boundary=",
                               "multipart/form-data; boundary=\"unterminated"};
  for (size_t i = 0; i < sizeof no_boundary / sizeof *no_boundary; i++) {
    sg_request *q = sg_request_new(&lim);
    CHECK(sg_request_begin(q, no_boundary[i]) == SG_REQUEST_EBAD, "%s", no_boundary[i]);
    sg_request_free(q);
  }
  const char *json_types[] = {"application/json", "APPLICATION/JSON; charset=utf-8", "application/json ; x=y"};
  for (size_t i = 0; i < sizeof json_types / sizeof *json_types; i++) {
    sg_request *q = sg_request_new(&lim);
    CHECK(sg_request_begin(q, json_types[i]) == 0, "%s", json_types[i]);
    sg_request_free(q);
  }
  const struct {
    const char *body;
    int code;
    const char *param, *needle;
  } cases[] = {{"", SG_REQUEST_EBAD, "", "the JSON body is empty"},
               {" \r\n", SG_REQUEST_EBAD, "", "the JSON body is empty"},
               {"{\"prompt\": \"x\", \"seed\": 9223372036854775808}", SG_REQUEST_EINVALID, "seed", "seed:"},
               {"{\"prompt\": \"x\", \"steps\":\n 1e400}", SG_REQUEST_EINVALID, "steps", "steps:"},
               {"{\"prompt\": \"x\", \"sketch\": \"AAAA\", \"seed\": \"0x10\"}", SG_REQUEST_EBAD, "seed", "seed:"},
               {"{\"prompt\": \"x\", \"sketch\": \"AAAA\", \"seed\": 2.5}", SG_REQUEST_EINVALID, "seed", "whole"}};
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
    sg_request *q;
    sg_request_params p;
    int rc = parse("application/json", cases[i].body, strlen(cases[i].body), &q, &p);
    const sg_request_error *e = sg_request_get_error(q);
    CHECK(rc == cases[i].code && e && !strcmp(e->param, cases[i].param) && strstr(e->message, cases[i].needle),
          "%s: %d %s", cases[i].body, rc, e ? e->message : "");
    sg_request_free(q);
  }
}

/* Bytes jansson allocates (json_set_alloc_funcs): what a JSON body makes the parser build. */
static size_t jansson_bytes;
static void *counting_malloc(size_t n) {
  jansson_bytes += n;
  return malloc(n);
}

/* The JSON body of (JSON text of) members and the sketch as base64, in a buffer the caller frees. */
static char *json_body(const char *members) {
  static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  size_t n = strlen(members);
  char *out = malloc(n + 4 * sketch_len / 3 + 64), *o = out;
  o += sprintf(o, "{\"sketch\": \"");
  for (size_t i = 0; i < sketch_len; i += 3) {
    uint32_t v = (uint32_t)sketch[i] << 16 | (i + 1 < sketch_len ? (uint32_t)sketch[i + 1] << 8 : 0) |
                 (i + 2 < sketch_len ? sketch[i + 2] : 0);
    *o++ = b64[v >> 18 & 63];
    *o++ = b64[v >> 12 & 63];
    *o++ = i + 1 < sketch_len ? b64[v >> 6 & 63] : '=';
    *o++ = i + 2 < sketch_len ? b64[v & 63] : '=';
  }
  sprintf(o, "\", %s}", members);
  return out;
}

/* A JSON number is read from its text, with the multipart field's grammar and exactness (jansson's double made
 * 1e-999 the whole number 0 and 2.0000000000000000001 the whole number 2); real bounds are compared exactly. */
static void test_numbers_exact(void) {
  const struct {
    const char *members;
    int code;
    const char *param;
  } cases[] = {{"\"prompt\": \"x\", \"seed\": 1e-999", SG_REQUEST_EINVALID, "seed"},
               {"\"prompt\": \"x\", \"steps\": 2.0000000000000000001", SG_REQUEST_EINVALID, "steps"},
               {"\"prompt\": \"x\", \"stop_step\": 1e-999", SG_REQUEST_EINVALID, "stop_step"},
               {"\"prompt\": \"x\", \"cfg\": 100.0000000000000000000001", SG_REQUEST_EINVALID, "cfg"},
               {"\"prompt\": \"x\", \"beta\": -1e-999", SG_REQUEST_EINVALID, "beta"},
               {"\"prompt\": \"x\", \"stop\": 1.00000000000000000001", SG_REQUEST_EINVALID, "stop"},
               {"\"prompt\": \"x\", \"eta\": \"10.0000000000000000000001\"", SG_REQUEST_EINVALID, "eta"},
               {"\"prompt\": \"x\", \"seed\": -0, \"cfg\": 100.000, \"stop\": 1e0, \"beta\": -0.0", 0, ""},
               {"\"prompt\": \"x\", \"steps\": 2.000e0, \"eta\": 1e-999, \"seed\": 5E0", 0, ""}};
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
    char *body = json_body(cases[i].members);
    sg_request *q;
    sg_request_params p;
    int rc = parse("application/json", body, strlen(body), &q, &p);
    const sg_request_error *e = sg_request_get_error(q);
    CHECK(rc == cases[i].code && (!rc || !strcmp(e->param, cases[i].param)), "%s: %d %s", cases[i].members, rc,
          e ? e->message : "");
    sg_request_free(q);
    free(body);
  }
  const char *kv[][2] = {{"cfg", "100.0000000000000000000001"}, {"beta", "-1e-999"}, {"eta", "10.00000000000000000001"},
                         {"stop", "1.0000000000000000000000000001"}};
  static char body[65536];
  for (size_t i = 0; i < sizeof kv / sizeof *kv; i++) {
    const char *f[] = {"prompt", "x", kv[i][0], kv[i][1]};
    size_t n = multipart(body, sizeof body, f, 2);
    sg_request *q;
    sg_request_params p;
    int rc = parse("multipart/form-data; boundary=BB", body, n, &q, &p);
    CHECK(rc == SG_REQUEST_EINVALID && !strcmp(sg_request_get_error(q)->param, kv[i][0]), "%s=%s: %d", kv[i][0],
          kv[i][1], rc);
    sg_request_free(q);
  }
}

/* A JSON body costs the parser no more than its size: an array as the body, a deep or long array or object as a
 * value, or thousands of members are refused before jansson builds them (2M empty objects cost 450 MB before). */
static void test_json_bombs(void) {
  size_t big = 3 << 20;
  char *t = malloc(2 * big + 64);
  const struct {
    const char *open, *item, *close;
    size_t reps;
    const char *param, *needle;
  } cases[] = {{"[", "{},", "{}]", big / 3, "", "must be an object"},
               {"{\"prompt\": [", "{},", "{}]}", big / 3, "prompt", "must be a string or a number"},
               {"{\"prompt\": ", "[", "", big, "prompt", "must be a string or a number"},
               {"{\"steps\": {", "\"a\":[\"}\"],", "\"b\":0}, \"x\": 1}", big / 8, "steps", "must be a string or a number"},
               {"{", "\"k\": 0, ", "\"k2\": 0}", 100, "", "more than 64 members"},
               {"{\"prompt\": \"x\", ", "\"sketch\": 0, ", "\"z\": 0}", 100000, "", "more than 64 members"}};
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
    size_t o = (size_t)sprintf(t, "%s", cases[i].open);
    for (size_t k = 0; k < cases[i].reps; k++) o += (size_t)sprintf(t + o, "%s", cases[i].item);
    if (!strcmp(cases[i].item, "[")) { /* deep nesting: close every level */
      memset(t + o, ']', cases[i].reps);
      o += cases[i].reps;
      t[o++] = '}';
    }
    o += (size_t)sprintf(t + o, "%s", cases[i].close);
    jansson_bytes = 0;
    sg_request *q;
    sg_request_params p;
    int rc = parse("application/json", t, o, &q, &p);
    const sg_request_error *e = sg_request_get_error(q);
    CHECK(rc == SG_REQUEST_EBAD && !strcmp(e->param, cases[i].param) && strstr(e->message, cases[i].needle),
          "bomb %zu: %d %s", i, rc, e ? e->message : "");
    CHECK(jansson_bytes < 65536, "bomb %zu (%zu bytes of text): jansson allocated %zu bytes", i, o, jansson_bytes);
    sg_request_free(q);
  }
  free(t);
}

/* The stroke pixels of a parsed request's sketch map. */
static int32_t ink_of(const sg_request_params *p) {
  int32_t n = 0;
  for (int32_t k = 0; p->jr.sketch && k < p->map_size * p->map_size; k++) n += p->jr.sketch[k] > 0.5f;
  return n;
}

/* filled, in both kinds of body: a solid square (a silhouette) becomes its outline unless filled is false, the
 * description counts the regions converted, and a value that is not auto/true/false is refused naming filled. */
static void test_filled(void) {
  enum { W = 128 };
  uint8_t *px = malloc(W * W);
  for (int y = 0; y < W; y++)
    for (int x = 0; x < W; x++) px[y * W + x] = x >= 32 && x < 96 && y >= 32 && y < 96 ? 0 : 255;
  uint8_t *png = NULL, *star = sketch;
  size_t png_len = 0, star_len = sketch_len;
  char err[200];
  CHECK(sg_png_encode(px, W, W, 1, NULL, 0, &png, &png_len, err, sizeof err) == 0, "square png: %s", err);
  sketch = png, sketch_len = png_len;
  static char body[65536];
  const struct {
    const char *value; /* multipart text; NULL: absent */
    int32_t regions;
  } cases[] = {{NULL, 1}, {"auto", 1}, {"TRUE", 1}, {"yes", 1}, {"1", 1}, {"false", 0}, {"No", 0}, {"0", 0}};
  int32_t ink[2] = {0, 0}; /* as drawn (false), outlined (auto) */
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
    const char *kv[] = {"prompt", "a square", "filled", cases[i].value};
    size_t n = multipart(body, sizeof body, kv, cases[i].value ? 2 : 1);
    sg_request *q;
    sg_request_params p;
    int rc = parse("multipart/form-data; boundary=BB", body, n, &q, &p);
    char *d = rc ? NULL : sg_request_describe(&p);
    char want[48];
    snprintf(want, sizeof want, "\"filled_regions\":%d", (int)cases[i].regions);
    CHECK(!rc && p.filled_regions == cases[i].regions && d && strstr(d, want), "filled=%s: %d %s",
          cases[i].value ? cases[i].value : "(absent)", rc, d ? d : sg_request_get_error(q)->message);
    if (!rc) ink[cases[i].regions] = ink_of(&p);
    free(d);
    sg_request_free(q);
  }
  /* the square is 32 x 32 at the 64 px map: 1024 pixels as drawn, its two-pixel outline about a quarter of that */
  CHECK(ink[0] >= 900 && ink[1] > 0 && ink[1] * 2 < ink[0], "stroke pixels as drawn %d, outlined %d", (int)ink[0],
        (int)ink[1]);
  const struct {
    const char *members;
    int32_t regions;
  } json_cases[] = {{"\"prompt\": \"x\", \"filled\": false", 0}, {"\"prompt\": \"x\", \"filled\": true", 1},
                    {"\"prompt\": \"x\", \"filled\": \"FALSE\"", 0}, {"\"prompt\": \"x\", \"filled\": \"auto\"", 1},
                    {"\"prompt\": \"x\", \"filled\": null", 1}, {"\"prompt\": \"x\", \"filled\": 0", 0}};
  for (size_t i = 0; i < sizeof json_cases / sizeof *json_cases; i++) {
    char *b = json_body(json_cases[i].members);
    sg_request *q;
    sg_request_params p;
    int rc = parse("application/json", b, strlen(b), &q, &p);
    CHECK(!rc && p.filled_regions == json_cases[i].regions, "%s: %d %s", json_cases[i].members, rc,
          rc ? sg_request_get_error(q)->message : "");
    sg_request_free(q);
    free(b);
  }
  const char *bad[] = {"maybe", "", "2", "auto ", "outline"};
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    const char *kv[] = {"prompt", "x", "filled", bad[i]};
    size_t n = multipart(body, sizeof body, kv, 2);
    sg_request *q;
    sg_request_params p;
    int rc = parse("multipart/form-data; boundary=BB", body, n, &q, &p);
    const sg_request_error *e = sg_request_get_error(q);
    CHECK(rc == SG_REQUEST_EINVALID && e && !strcmp(e->param, "filled") && !strncmp(e->message, "filled: ", 8),
          "filled='%s': %d %s", bad[i], rc, e ? e->message : "");
    sg_request_free(q);
  }
  const char *bad_json[] = {"\"prompt\": \"x\", \"filled\": \"maybe\"", "\"prompt\": \"x\", \"filled\": 2",
                            "\"prompt\": \"x\", \"filled\": \"\""};
  for (size_t i = 0; i < sizeof bad_json / sizeof *bad_json; i++) {
    char *b = json_body(bad_json[i]);
    sg_request *q;
    sg_request_params p;
    int rc = parse("application/json", b, strlen(b), &q, &p);
    const sg_request_error *e = sg_request_get_error(q);
    CHECK(rc == SG_REQUEST_EINVALID && e && !strcmp(e->param, "filled"), "%s: %d %s", bad_json[i], rc,
          e ? e->message : "");
    sg_request_free(q);
    free(b);
  }
  sketch = star, sketch_len = star_len;
  free(png);
  free(px);
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: test_request SKETCH.png\n");
    return 2;
  }
  FILE *f = fopen(argv[1], "rb");
  if (!f) {
    fprintf(stderr, "cannot open %s\n", argv[1]);
    return 2;
  }
  sketch = malloc(1 << 20);
  sketch_len = fread(sketch, 1, 1 << 20, f);
  fclose(f);
  test_numbers();
  test_multipart_splits();
  test_multipart_errors();
  test_media_types_and_json();
  test_filled();
  json_set_alloc_funcs(counting_malloc, free);
  test_numbers_exact();
  test_json_bombs();
  free(sketch);
  if (failures) fprintf(stderr, "%d failure(s)\n", failures);
  else printf("ok\n");
  return failures ? 1 : 0;
}
