/* Test driver for check_tokenizer_diff.py: hex-encoded UTF-8 lines on stdin -> the C tokenizer's ids, one line each. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer.h"

/* Decodes the hex digits of line (n characters) into out. Returns the byte count, or -1 on a bad digit. */
static long unhex(const char *line, size_t n, char *out) {
  if (n % 2) return -1;
  for (size_t i = 0; i < n; i += 2) {
    int v = 0;
    for (int k = 0; k < 2; k++) {
      char c = line[i + k];
      int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
      if (d < 0) return -1;
      v = v * 16 + d;
    }
    out[i / 2] = (char)v;
  }
  return (long)(n / 2);
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s VOCAB < HEX_LINES\n", argv[0]);
    return 2;
  }
  char err[256];
  sg_tokenizer *tok = sg_tokenizer_load(argv[1], sg_tokenizer_default_params(), err, sizeof err);
  if (!tok) {
    fprintf(stderr, "load %s: %s\n", argv[1], err);
    return 1;
  }
  char *line = NULL;
  size_t cap = 0;
  ssize_t got;
  int rc = 0;
  while ((got = getline(&line, &cap, stdin)) >= 0) {
    size_t n = (size_t)got;
    while (n && (line[n - 1] == '\n' || line[n - 1] == '\r')) n--;
    char *text = malloc(n / 2 + 1);
    long len = text ? unhex(line, n, text) : -1;
    int64_t count = len < 0 ? -1 : sg_tokenizer_encode(tok, text, (size_t)len, NULL, 0);
    int32_t *ids = count >= 0 ? malloc(((size_t)count + 1) * sizeof *ids) : NULL;
    if (!ids || sg_tokenizer_encode(tok, text, (size_t)len, ids, (size_t)count) != count) {
      printf("error %lld\n", (long long)count);
      rc = 1;
    } else {
      for (int64_t i = 0; i < count; i++) printf(i ? " %d" : "%d", ids[i]);
      printf("\n");
    }
    free(ids);
    free(text);
  }
  free(line);
  sg_tokenizer_free(tok);
  return rc;
}
