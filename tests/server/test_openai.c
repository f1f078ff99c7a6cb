/* Unit tests of server/openai.c without a server: the names of the OpenAI bodies through request.c (image as the
 * sketch, kept fields, an unguided generation), the checks of size, model and response_format, the error body, the
 * result URLs' table (expiry on an explicit clock, eviction of the oldest), and the base URL from Host. */
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "openai.h"

static uint8_t *sketch;
static size_t sketch_len;

/* A request of route's names with the JSON text given. Returns it parsed (rc in *rc); the caller frees it. */
static sg_request *parse_json(sg_openai_route route, const char *text, sg_request_params *out, int *rc) {
  sg_request_limits lim = sg_request_default_limits();
  sg_openai_limits(route, &lim);
  sg_request *q = sg_request_new(&lim);
  sg_request_begin(q, "application/json");
  sg_request_add_body(q, text, strlen(text));
  *rc = sg_request_parse(q, out);
  return q;
}

/* A multipart edit with the sketch as "image" and the fields given. */
static sg_request *parse_edit(const char *const *kv, int n, sg_request_params *out, int *rc) {
  sg_request_limits lim = sg_request_default_limits();
  sg_openai_limits(SG_OPENAI_EDITS, &lim);
  sg_request *q = sg_request_new(&lim);
  sg_request_begin(q, "multipart/form-data; boundary=BB");
  for (int i = 0; i < n; i++) sg_request_add_field(q, kv[2 * i], 0, kv[2 * i + 1], strlen(kv[2 * i + 1]));
  sg_request_add_field(q, "image", 0, sketch, sketch_len);
  *rc = sg_request_parse(q, out);
  return q;
}

static void test_names(void) {
  sg_request_params a;
  int rc;
  const char *kv[] = {"prompt", "a star", "size", "64x64", "model", "shapes", "steps", "3", "response_format", "url"};
  sg_request *q = parse_edit(kv, 5, &a, &rc);
  CHECK(rc == 0, "an edit parses: %s", sg_request_get_error(q) ? sg_request_get_error(q)->message : "");
  CHECK(a.jr.sketch != NULL && a.jr.steps == 3, "image is the sketch, steps passes through");
  size_t n = 0;
  const char *v = sg_request_extra(q, "size", &n);
  CHECK(v && n == 5 && !strcmp(v, "64x64"), "size is kept aside");
  CHECK(!sg_request_extra(q, "user", NULL), "an absent kept field is NULL");
  sg_openai_options o;
  sg_request_error e;
  CHECK(sg_openai_check(q, "shapes", 64, &o, &e) == 0 && o.format == SG_OPENAI_URL, "the check passes: url");
  CHECK(sg_openai_check(q, "other", 64, &o, &e) == SG_OPENAI_ENOTFOUND && !strcmp(e.param, "model") &&
            strstr(e.message, "'other'"),
        "another loaded model: not found, naming it (%s)", e.message);
  CHECK(sg_openai_check(q, "shapes", 512, &o, &e) == SG_OPENAI_EINVALID && strstr(e.message, "512x512"),
        "a size the model cannot make names the one it makes (%s)", e.message);
  sg_request_free(q);

  q = parse_json(SG_OPENAI_GENERATIONS, "{\"prompt\": \"x\", \"steps\": 2}", &a, &rc);
  CHECK(rc == 0 && a.jr.sketch == NULL && a.jr.beta == 0, "a generation without a sketch is unguided");
  CHECK(sg_openai_check(q, "shapes", 64, &o, &e) == 0 && o.format == SG_OPENAI_B64_JSON, "b64_json by default");
  sg_request_free(q);
  q = parse_json(SG_OPENAI_GENERATIONS, "{\"prompt\": \"x\", \"beta\": 1}", &a, &rc);
  CHECK(rc == SG_REQUEST_EINVALID && !strcmp(sg_request_get_error(q)->param, "beta"), "beta without a sketch");
  sg_request_free(q);
  q = parse_json(SG_OPENAI_EDITS, "{\"prompt\": \"x\"}", &a, &rc);
  CHECK(rc == SG_REQUEST_EBAD && !strcmp(sg_request_get_error(q)->param, "sketch"), "an edit needs its image");
  sg_request_free(q);
  q = parse_json(SG_OPENAI_GENERATIONS, "{\"prompt\": \"x\", \"image\": \"AAAA\"}", &a, &rc);
  CHECK(rc == SG_REQUEST_EBAD && strstr(sg_request_get_error(q)->message, "unknown parameter 'image'"),
        "generations have no image field");
  sg_request_free(q);

  static const char *const sizes[][2] = {{"auto", ""}, {"", ""}, {"64x64", ""}, {"64X64", "WIDTHxHEIGHT"},
                                         {"x64", "WIDTHxHEIGHT"}, {"64x", "WIDTHxHEIGHT"}, {"999999x1", "WIDTHxHEIGHT"},
                                         {"64x65", "cannot make"}, {"0x0", "cannot make"}};
  for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
    char text[128];
    snprintf(text, sizeof text, "{\"prompt\": \"x\", \"size\": \"%s\"}", sizes[i][0]);
    q = parse_json(SG_OPENAI_GENERATIONS, text, &a, &rc);
    int c = sg_openai_check(q, "shapes", 64, &o, &e);
    CHECK(*sizes[i][1] ? c < 0 && strstr(e.message, sizes[i][1]) != NULL : c == 0, "size '%s': %d %s", sizes[i][0],
          c, e.message);
    sg_request_free(q);
  }
}

static void test_error_body(void) {
  json_t *o = sg_openai_error_body(SG_OPENAI_EDITS, 400, "bad_request", "sketch", "sketch: required (a PNG)");
  json_t *e = json_object_get(o, "error");
  CHECK(e && !strcmp(json_string_value(json_object_get(e, "param")), "image") &&
            !strcmp(json_string_value(json_object_get(e, "message")), "image: required (a PNG)") &&
            !strcmp(json_string_value(json_object_get(e, "type")), "invalid_request_error"),
        "on the edits route the sketch is called image");
  json_decref(o);
  o = sg_openai_error_body(SG_OPENAI_GENERATIONS, 401, "unauthorized", NULL, "no token");
  e = json_object_get(o, "error");
  CHECK(e && json_is_null(json_object_get(e, "param")) &&
            !strcmp(json_string_value(json_object_get(e, "code")), "invalid_api_key") &&
            !strcmp(json_string_value(json_object_get(e, "type")), "authentication_error"),
        "401 is invalid_api_key");
  json_decref(o);
  o = sg_openai_error_body(SG_OPENAI_GENERATIONS, 429, "queue_full", "", "full");
  CHECK(!strcmp(json_string_value(json_object_get(json_object_get(o, "error"), "type")), "rate_limit_error"), "429");
  json_decref(o);
}

static void test_urls(void) {
  /* url results name the keys the caller registered (sg_store_file_put: tests/server/test_store.c) */
  uint8_t png[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  uint8_t *pngs[2] = {png, png};
  size_t lens[2] = {8, 8};
  const char *keys[2] = {"0123456789abcdef0123456789abcdef", "fedcba9876543210fedcba9876543210"};
  sg_openai_answer_params ap = {SG_OPENAI_URL, 1700000000, 64, "http://h:1", keys};
  json_t *o = sg_openai_answer(&ap, pngs, lens, 2);
  json_t *d = json_object_get(o, "data");
  CHECK(json_array_size(d) == 2 &&
            !strcmp(json_string_value(json_object_get(json_array_get(d, 1), "url")),
                    "http://h:1/v1/images/files/fedcba9876543210fedcba9876543210") &&
            !json_object_get(json_array_get(d, 0), "b64_json"),
        "url results name their keys");
  json_decref(o);
  ap.format = SG_OPENAI_B64_JSON;
  ap.keys = NULL;
  o = sg_openai_answer(&ap, pngs, lens, 1);
  CHECK(!strcmp(json_string_value(json_object_get(json_array_get(json_object_get(o, "data"), 0), "b64_json")),
                "iVBORw0KGgo="),
        "b64_json results need no keys");
  json_decref(o);

  char base[64];
  CHECK(!strcmp(sg_openai_base_url("127.0.0.1:8080", NULL, base, sizeof base), "http://127.0.0.1:8080"), "host");
  CHECK(!strcmp(sg_openai_base_url("[::1]:80", "https", base, sizeof base), "https://[::1]:80"), "https, IPv6");
  CHECK(!strcmp(sg_openai_base_url("evil.example/x?", NULL, base, sizeof base), ""), "a Host with a path: paths");
  CHECK(!strcmp(sg_openai_base_url(NULL, NULL, base, sizeof base), ""), "no Host: paths");
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: test_openai STAR_PNG\n");
    return 2;
  }
  FILE *fp = fopen(argv[1], "rb");
  if (!fp) return 2;
  fseek(fp, 0, SEEK_END);
  sketch_len = (size_t)ftell(fp);
  fseek(fp, 0, SEEK_SET);
  sketch = malloc(sketch_len);
  if (!sketch || fread(sketch, 1, sketch_len, fp) != sketch_len) return 2;
  fclose(fp);
  test_names();
  test_error_body();
  test_urls();
  free(sketch);
  if (failures) fprintf(stderr, "%d failure(s)\n", failures);
  return failures ? 1 : 0;
}
