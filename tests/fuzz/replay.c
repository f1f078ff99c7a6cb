/* A plain main() for the fuzz targets: runs each saved input (files, or every file of a folder) once, so that the
 * seed corpora and the crashes found stay regression tests in the ordinary gcc build, without libFuzzer. */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fuzz.h"

/* Reads the whole file at path into a buffer of exactly its size (so that a sanitizer sees any overread).
 * Returns the buffer (the caller frees it; non-NULL even when empty) or NULL when it cannot be read. */
static uint8_t *read_all(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  size_t cap = 4096, n = 0;
  uint8_t *buf = malloc(cap);
  for (size_t got; buf && (got = fread(buf + n, 1, cap - n, f)) > 0;) {
    n += got;
    if (n == cap) {
      uint8_t *bigger = realloc(buf, cap *= 2);
      if (!bigger) free(buf);
      buf = bigger;
    }
  }
  int bad = ferror(f);
  fclose(f);
  if (!buf || bad) {
    free(buf);
    return NULL;
  }
  uint8_t *exact = malloc(n ? n : 1);
  if (exact) memcpy(exact, buf, n);
  free(buf);
  *len = n;
  return exact;
}

/* Runs the target on one file. Returns 0, or -1 when it cannot be read. */
static int run_file(const char *path) {
  size_t len = 0;
  uint8_t *data = read_all(path, &len);
  if (!data) {
    fprintf(stderr, "replay: cannot read %s\n", path);
    return -1;
  }
  LLVMFuzzerTestOneInput(data, len);
  free(data);
  return 0;
}

static int by_name(const struct dirent **a, const struct dirent **b) { return strcmp((*a)->d_name, (*b)->d_name); }

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s FILE_OR_FOLDER...  (runs each input once)\n", argv[0]);
    return 2;
  }
  if (LLVMFuzzerInitialize) LLVMFuzzerInitialize(&argc, &argv);
  long count = 0;
  for (int i = 1; i < argc; i++) {
    struct stat st;
    if (stat(argv[i], &st)) {
      fprintf(stderr, "replay: no such file or folder: %s\n", argv[i]);
      return 1;
    }
    if (!S_ISDIR(st.st_mode)) {
      if (run_file(argv[i])) return 1;
      count++;
      continue;
    }
    struct dirent **names;
    int n = scandir(argv[i], &names, NULL, by_name);
    if (n < 0) {
      fprintf(stderr, "replay: cannot list %s\n", argv[i]);
      return 1;
    }
    int rc = 0;
    for (int j = 0; j < n; j++) {
      char path[4096];
      snprintf(path, sizeof path, "%s/%s", argv[i], names[j]->d_name);
      if (!rc && names[j]->d_name[0] != '.' && !stat(path, &st) && S_ISREG(st.st_mode)) {
        if (run_file(path))
          rc = 1;
        else
          count++;
      }
      free(names[j]);
    }
    free(names);
    if (rc) return 1;
  }
  if (count == 0) {
    fprintf(stderr, "replay: no inputs found in the paths given\n");
    return 1;
  }
  printf("replayed %ld inputs\n", count);
  return 0;
}
