/* Tests of core/tokenizer.c against token ids from the original CLIP tokenizer and the Python reference. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer.h"

#include "check.h"

static size_t unhex(const char *hex, char *out) {
  size_t n = strlen(hex) / 2;
  for (size_t i = 0; i < n; i++) {
    unsigned v;
    sscanf(hex + 2 * i, "%2x", &v);
    out[i] = (char)v;
  }
  return n;
}

/* Whether text a (la bytes) and text b (lb bytes) encode to the same ids. */
static int same_encoding(const sg_tokenizer *tok, const char *a, size_t la, const char *b, size_t lb) {
  int32_t ia[64], ib[64];
  int64_t na = sg_tokenizer_encode(tok, a, la, ia, 64), nb = sg_tokenizer_encode(tok, b, lb, ib, 64);
  return na >= 0 && na <= 64 && na == nb && memcmp(ia, ib, (size_t)na * sizeof *ia) == 0;
}

/* Lower-casing as Python's str.lower() (Final_Sigma, full mappings) and HTML references with U+0000 in them. */
static void check_casing(const sg_tokenizer *tok) {
  static const struct {
    const char *text, *same;
  } cases[] = {
      {"\xce\x9f\xce\x94\xce\x9f\xce\xa3", "\xce\xbf\xce\xb4\xce\xbf\xcf\x82"},         /* ΟΔΟΣ -> οδος (final) */
      {"\xce\xa3\xce\x91", "\xcf\x83\xce\xb1"},                                     /* ΣΑ -> σα */
      {"\xce\xa3", "\xcf\x83"},                                                       /* Σ alone -> σ */
      {"\xce\x91\xce\xa3'", "\xce\xb1\xcf\x82'"},                                     /* ' is case-ignorable */
      {"\xce\x91\xce\xa3\xcc\x81\xce\x92", "\xce\xb1\xcf\x83\xcc\x81\xce\xb2"},             /* a letter after the mark */
      {"\xce\x91\xce\xa3 \xce\x92", "\xce\xb1\xcf\x82 \xce\xb2"},                         /* a space ends the word */
      {"\xc4\xb0", "i\xcc\x87"},                                                      /* İ -> i + U+0307 */
  };
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++)
    CHECK(same_encoding(tok, cases[i].text, strlen(cases[i].text), cases[i].same, strlen(cases[i].same)),
          "case %zu: %s does not lower-case to %s", i, cases[i].text, cases[i].same);
  /* "&Aacute\0x" is "á\0x" (the longest entity prefix, then the rest), not "á" */
  CHECK(same_encoding(tok, "&Aacute\0x", 9, "\xc3\xa1\0x", 4), "&Aacute followed by U+0000");
  CHECK(same_encoding(tok, "&amp\0;", 6, "&\0;", 3), "&amp followed by U+0000");
}

static int same_ids(const json_t *want, const int32_t *got, size_t n) {
  if (json_array_size(want) != n) return 0;
  for (size_t i = 0; i < n; i++)
    if (json_integer_value(json_array_get(want, i)) != got[i]) return 0;
  return 1;
}

/* Every entry of a vectors file: {text | hex, ids, sd15_input_ids | input_ids}. Returns the entry count. */
static size_t check_vectors(const sg_tokenizer *tok, const char *path) {
  json_error_t jerr;
  json_t *root = json_load_file(path, 0, &jerr);
  CHECK(root && json_is_array(root), "%s: %s", path, jerr.text);
  if (!root) return 0;
  size_t i;
  json_t *v;
  static char buf[1 << 16];
  int32_t *ids = malloc(4096 * sizeof *ids), in[77];
  json_array_foreach(root, i, v) {
    const char *text = json_string_value(json_object_get(v, "text"));
    size_t len = text ? strlen(text) : unhex(json_string_value(json_object_get(v, "hex")), buf);
    if (!text) text = buf;
    int64_t n = sg_tokenizer_encode(tok, text, len, ids, 4096);
    CHECK(n >= 0 && n <= 4096 && same_ids(json_object_get(v, "ids"), ids, (size_t)n), "%s entry %zu: ids differ (%lld)",
          path, i, (long long)n);
    json_t *want = json_object_get(v, "sd15_input_ids");
    if (!want) want = json_object_get(v, "input_ids");
    int32_t count = -1;
    CHECK(sg_tokenizer_input_ids(tok, text, len, in, 77, &count) == 0 && same_ids(want, in, 77),
          "%s entry %zu: input ids differ", path, i);
    CHECK(count == n, "%s entry %zu: token count %d, want %lld", path, i, count, (long long)n);
  }
  free(ids);
  json_decref(root);
  return i;
}

int main(int argc, char **argv) {
  if (argc < 3 || argc % 2 == 0) {
    fprintf(stderr, "usage: %s VOCAB VECTORS.json [VOCAB VECTORS.json ...]\n", argv[0]);
    return 2;
  }
  char err[256];
  for (int a = 1; a + 1 < argc; a += 2) {
    sg_tokenizer *tok = sg_tokenizer_load(argv[a], sg_tokenizer_default_params(), err, sizeof err);
    CHECK(tok != NULL, "load %s: %s", argv[a], err);
    if (!tok) continue;
    size_t n = check_vectors(tok, argv[a + 1]);
    check_casing(tok);
    printf("%s: %zu vectors checked (vocabulary %d)\n", argv[a + 1], n, sg_tokenizer_vocab_size(tok));
    /* the output buffer is never overrun and the count is the full count */
    int32_t small[2];
    CHECK(sg_tokenizer_encode(tok, "a b c d e", 9, small, 2) == 5, "count beyond cap");
    CHECK(sg_tokenizer_input_ids(tok, "x", 1, small, 2, NULL) == SG_TOKENIZER_EINVAL, "short output accepted");
    CHECK(sg_tokenizer_encode(tok, NULL, 3, small, 2) == SG_TOKENIZER_EINVAL, "NULL text accepted");
    sg_tokenizer_free(tok);
  }
  /* bad files give a message, not a crash */
  CHECK(sg_tokenizer_load("/nonexistent/merges.txt", sg_tokenizer_default_params(), err, sizeof err) == NULL &&
            strstr(err, "cannot open"), "missing file: %s", err);
  char tmpl[] = "/tmp/sgtokXXXXXX";
  int fd = mkstemp(tmpl);
  FILE *f = fdopen(fd, "w");
  fputs("#version: 0.2\na b c\n", f);
  fclose(f);
  CHECK(sg_tokenizer_load(tmpl, sg_tokenizer_default_params(), err, sizeof err) == NULL && strstr(err, "two symbols"),
        "bad merge line: %s", err);
  sg_tokenizer_params p = sg_tokenizer_default_params();
  p.merges_count = 5;
  CHECK(sg_tokenizer_load(tmpl, p, err, sizeof err) == NULL && strstr(err, "wanted"), "too few merges: %s", err);
  remove(tmpl);
  sg_tokenizer_free(NULL);
  printf("%d failed\n", failures);
  return failures ? 1 : 0;
}
