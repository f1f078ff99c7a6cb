/* Tests of core/edges: edge maps equal to tools/edges.py's bit for bit and F1 within 1e-12, on the reference file
 * from tools/gen_edges_vectors.py (argument 1), with the default detector and with its options (sigma, thinning,
 * minimum length); the GENERATED preset equal to edges.py's; argument checks. */
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "edges.h"

#include "check.h"

static int hexval(char c) { return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1; }

/* Decodes a hex string of exactly n bytes; returns a malloc'ed buffer or NULL. */
static uint8_t *from_hex(const char *s, size_t n) {
  if (!s || strlen(s) != 2 * n) return NULL;
  uint8_t *out = malloc(n ? n : 1);
  for (size_t i = 0; out && i < n; i++) {
    int a = hexval(s[2 * i]), b = hexval(s[2 * i + 1]);
    if (a < 0 || b < 0) {
      free(out);
      return NULL;
    }
    out[i] = (uint8_t)(a * 16 + b);
  }
  return out;
}

/* Decodes a string of n '0'/'1' characters into 0/255 bytes. */
static uint8_t *from_bits(const char *s, size_t n) {
  if (!s || strlen(s) != n) return NULL;
  uint8_t *out = malloc(n ? n : 1);
  for (size_t i = 0; out && i < n; i++) out[i] = s[i] == '1' ? 255 : 0;
  return out;
}

static void test_detect(json_t *cases) {
  size_t k, opts = 0;
  json_t *c;
  CHECK(json_array_size(cases) >= 8, "only %zu detection cases", json_array_size(cases));
  json_array_foreach(cases, k, c) {
    const char *name = json_string_value(json_object_get(c, "name"));
    int32_t w = (int32_t)json_integer_value(json_object_get(c, "w")), h = (int32_t)json_integer_value(json_object_get(c, "h"));
    int32_t ch = (int32_t)json_integer_value(json_object_get(c, "channels"));
    size_t n = (size_t)w * h;
    uint8_t *px = from_hex(json_string_value(json_object_get(c, "pixels")), n * ch);
    uint8_t *want = from_bits(json_string_value(json_object_get(c, "edges")), n), *got = malloc(n);
    CHECK(px && want && got, "%s: bad case", name);
    if (!px || !want || !got) goto next;
    char err[256] = "";
    double low = json_number_value(json_object_get(c, "low")), high = json_number_value(json_object_get(c, "high"));
    int rc;
    if (json_object_get(c, "sigma")) { /* a case of the options */
      sg_edges_params p = sg_edges_default_params();
      p.low = low, p.high = high;
      p.sigma = json_number_value(json_object_get(c, "sigma"));
      p.thin = json_is_true(json_object_get(c, "thin"));
      p.min_length = (int32_t)json_integer_value(json_object_get(c, "min_length"));
      rc = sg_edges_detect_params(px, w, h, ch, p, got, err, sizeof err);
      opts++;
    } else {
      rc = sg_edges_detect(px, w, h, ch, low, high, got, err, sizeof err);
    }
    CHECK(rc == 0, "%s: %s", name, err);
    size_t diff = 0, first = n, edges = 0;
    for (size_t i = 0; i < n; i++) {
      edges += got[i] != 0;
      if (got[i] != want[i]) {
        if (!diff) first = i;
        diff++;
      }
    }
    CHECK(diff == 0, "%s: %zu pixels differ, first at (%zu, %zu)", name, diff, first / (size_t)w, first % (size_t)w);
    for (size_t i = 0; i < n; i++)
      if (got[i] != 0 && got[i] != 255) {
        CHECK(0, "%s: value %d", name, got[i]);
        break;
      }
    printf("%-60s %dx%dx%d edges %zu\n", name, w, h, ch, edges);
  next:
    free(px), free(want), free(got);
  }
  CHECK(opts >= 8, "only %zu cases of the options", opts);
}

/* The C preset equals tools/edges.py GENERATED (written into the vectors), and the options are checked. */
static void test_params(json_t *gen) {
  sg_edges_params g = sg_edges_generated_params(4), d = sg_edges_default_params();
  CHECK(gen && json_number_value(json_object_get(gen, "sigma")) == g.sigma &&
            json_number_value(json_object_get(gen, "low")) == g.low &&
            json_number_value(json_object_get(gen, "high")) == g.high &&
            json_is_true(json_object_get(gen, "thin")) == (g.thin != 0) &&
            json_integer_value(json_object_get(gen, "min_length")) == g.min_length,
        "sg_edges_generated_params differs from tools/edges.py GENERATED");
  CHECK(d.sigma == 0 && d.low == SG_EDGES_LOW && d.high == SG_EDGES_HIGH && !d.thin && d.min_length == 0,
        "the default options changed");
  sg_edges_params g8 = sg_edges_generated_params(8);
  CHECK(g8.sigma == 2 * g.sigma && g8.min_length == 2 * g.min_length && g8.low == g.low && g8.thin == g.thin,
        "the preset does not scale with the latent pixel");
  uint8_t px[48] = {0}, out[16];
  char err[128] = "";
  sg_edges_params p = d;
  p.sigma = -1;
  CHECK(sg_edges_detect_params(px, 4, 4, 3, p, out, err, sizeof err) == SG_EDGES_EINVAL && strstr(err, "sigma"),
        "negative sigma accepted: %s", err);
  p.sigma = 17;
  CHECK(sg_edges_detect_params(px, 4, 4, 3, p, out, err, sizeof err) == SG_EDGES_EINVAL, "sigma 17 accepted");
  p.sigma = NAN;
  CHECK(sg_edges_detect_params(px, 4, 4, 3, p, out, err, sizeof err) == SG_EDGES_EINVAL, "NaN sigma accepted");
  p = d;
  p.min_length = -2;
  CHECK(sg_edges_detect_params(px, 4, 4, 3, p, out, err, sizeof err) == SG_EDGES_EINVAL, "min_length -2 accepted");
  p = g;
  p.sigma = 16;
  CHECK(sg_edges_detect_params(px, 4, 4, 3, p, out, err, sizeof err) == 0 && out[5] == 0, "sigma 16 on 4x4");
}

static void test_f1(json_t *cases) {
  size_t k;
  json_t *c;
  json_array_foreach(cases, k, c) {
    const char *name = json_string_value(json_object_get(c, "name"));
    int32_t w = (int32_t)json_integer_value(json_object_get(c, "w")), h = (int32_t)json_integer_value(json_object_get(c, "h"));
    size_t n = (size_t)w * h;
    uint8_t *p = from_bits(json_string_value(json_object_get(c, "pred")), n);
    uint8_t *r = from_bits(json_string_value(json_object_get(c, "ref")), n);
    json_t *f = json_object_get(c, "f1");
    CHECK(p && r && json_array_size(f) > 0, "%s: bad case", name);
    for (size_t tol = 0; p && r && tol < json_array_size(f); tol++) {
      double want = json_number_value(json_array_get(f, tol)), got = sg_edges_f1(p, r, w, h, (int32_t)tol);
      CHECK(fabs(got - want) <= 1e-12, "%s tol %zu: F1 %.17g, want %.17g", name, tol, got, want);
    }
    free(p), free(r);
  }
}

static void test_errors(void) {
  uint8_t px[12] = {0}, out[4];
  char err[128] = "";
  CHECK(sg_edges_detect(NULL, 2, 2, 3, SG_EDGES_LOW, SG_EDGES_HIGH, out, err, sizeof err) == SG_EDGES_EINVAL &&
            strlen(err) > 0,
        "NULL image accepted");
  CHECK(sg_edges_detect(px, 0, 2, 3, SG_EDGES_LOW, SG_EDGES_HIGH, out, err, sizeof err) == SG_EDGES_EINVAL &&
            strstr(err, "shape"),
        "zero width accepted: %s", err);
  CHECK(sg_edges_detect(px, 2, 2, 5, SG_EDGES_LOW, SG_EDGES_HIGH, out, err, sizeof err) == SG_EDGES_EINVAL,
        "5 channels accepted");
  CHECK(sg_edges_detect(px, 2, 2, 3, NAN, SG_EDGES_HIGH, out, err, sizeof err) == SG_EDGES_EINVAL, "NaN accepted");
  CHECK(sg_edges_detect(px, 2, 2, 3, SG_EDGES_LOW, SG_EDGES_HIGH, out, NULL, 0) == 0, "flat 2x2 image");
  CHECK(out[0] == 0 && out[3] == 0, "edges on a flat image");
  uint8_t one[1] = {200};
  CHECK(sg_edges_detect(one, 1, 1, 1, SG_EDGES_LOW, SG_EDGES_HIGH, out, err, sizeof err) == 0 && out[0] == 0,
        "1x1 image");
  CHECK(sg_edges_f1(NULL, px, 2, 2, 1) == 0.0 && sg_edges_f1(px, px, 2, 2, -1) == 0.0, "bad F1 arguments");
  uint8_t a[4] = {255, 0, 0, 0};
  CHECK(sg_edges_f1(a, a, 2, 2, 0) == 1.0, "identical maps");
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: test_edges edges_vectors.json\n");
    return 2;
  }
  json_error_t jerr;
  json_t *root = json_load_file(argv[1], 0, &jerr);
  CHECK(root, "%s: %s", argv[1], jerr.text);
  if (root) {
    test_detect(json_object_get(root, "detect"));
    test_f1(json_object_get(root, "f1"));
    test_params(json_object_get(root, "generated"));
    json_decref(root);
  }
  test_errors();
  if (failures) fprintf(stderr, "%d failures\n", failures);
  return failures ? 1 : 0;
}
