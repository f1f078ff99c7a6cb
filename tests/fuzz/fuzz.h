/* The fuzz targets' interface (libFuzzer's entry points) and their check macro, shared with replay.c. */
#ifndef SG_FUZZ_H
#define SG_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

/* Runs one input; returns 0 (libFuzzer's convention). A broken invariant aborts through FUZZ_CHECK. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t len);

/* Optional one-time set-up (the tokenizer's vocabulary); returns 0. replay.c calls it when a target defines it. */
int LLVMFuzzerInitialize(int *argc, char ***argv) __attribute__((weak));

/* A broken invariant is a finding: say which and abort, so that libFuzzer saves the input as a crash. */
#define FUZZ_CHECK(cond, ...)                                        \
  do {                                                               \
    if (!(cond)) {                                                   \
      fprintf(stderr, "FUZZ CHECK FAILED %s:%d: ", __FILE__, __LINE__); \
      fprintf(stderr, __VA_ARGS__);                                  \
      fputc('\n', stderr);                                           \
      abort();                                                       \
    }                                                                \
  } while (0)

#endif
