/* Tests of core/mem.c: blocks across the mapping threshold keep their bytes, a freed large block leaves the
 * resident set even after glibc has raised its own threshold above it, also after sg_mem_tune_process. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mem.h"

#include "check.h"

static long resident_kb(void) {
  FILE *f = fopen("/proc/self/statm", "r");
  long size = 0, pages = 0;
  if (!f) return -1;
  if (fscanf(f, "%ld %ld", &size, &pages) != 2) pages = -1;
  fclose(f);
  return pages < 0 ? -1 : pages * (sysconf(_SC_PAGESIZE) / 1024);
}

static int holds(const uint8_t *p, size_t n, unsigned seed) {
  for (size_t i = 0; i < n; i++)
    if (p[i] != (uint8_t)(i * 31 + seed)) return 0;
  return 1;
}

static void fill(uint8_t *p, size_t n, unsigned seed) {
  for (size_t i = 0; i < n; i++) p[i] = (uint8_t)(i * 31 + seed);
}

static void test_sizes(void) {
  uint8_t *z = sg_mem_alloc(0);
  CHECK(z != NULL && (uintptr_t)z % 16 == 0, "0 bytes");
  sg_mem_free(z);
  sg_mem_free(NULL);
  CHECK(sg_mem_alloc(SIZE_MAX) == NULL && sg_mem_alloc(SIZE_MAX / 2 + 1) == NULL, "impossible sizes");
  /* small -> small -> across the threshold -> larger -> back under it, the bytes kept every time */
  size_t sizes[] = {100, 5000, SG_MEM_MAP_MIN - 16, SG_MEM_MAP_MIN, 3 * SG_MEM_MAP_MIN + 7, 9 * SG_MEM_MAP_MIN,
                    2 * SG_MEM_MAP_MIN, 4000, 10};
  size_t n = sizes[0];
  uint8_t *p = sg_mem_realloc(NULL, n);
  CHECK(p != NULL, "first block");
  fill(p, n, 7);
  for (size_t k = 1; p && k < sizeof sizes / sizeof *sizes; k++) {
    uint8_t *q = sg_mem_realloc(p, sizes[k]);
    CHECK(q != NULL && (uintptr_t)q % 16 == 0, "realloc to %zu", sizes[k]);
    if (!q) break;
    size_t kept = n < sizes[k] ? n : sizes[k];
    CHECK(holds(q, kept, 7), "bytes kept from %zu to %zu", n, sizes[k]);
    p = q;
    n = sizes[k];
    fill(p, n, 7);
  }
  CHECK(p == NULL || sg_mem_realloc(p, SIZE_MAX) == NULL, "impossible realloc");
  CHECK(p == NULL || holds(p, n, 7), "a failed realloc keeps the block");
  sg_mem_free(p);
}

/* glibc raises its mmap threshold to the largest block freed: after a 30 MiB block, a 16 MiB malloc comes from the
 * heap and stays resident when freed. An sg_mem block of that size must not. */
static void test_given_back(void) {
  uint8_t *big = malloc(30u << 20);
  CHECK(big != NULL, "malloc 30 MiB");
  if (!big) return;
  memset(big, 1, 30u << 20);
  free(big);
  long base = resident_kb();
  size_t n = 16u << 20;
  uint8_t *p = sg_mem_alloc(n);
  CHECK(p != NULL, "16 MiB");
  if (!p) return;
  memset(p, 2, n);
  long used = resident_kb();
  sg_mem_free(p);
  long after = resident_kb();
  printf("resident: %ld kB before, %ld kB with a 16 MiB block, %ld kB after freeing it\n", base, used, after);
  CHECK(used - base > 12 * 1024, "the block was resident (%ld kB more)", used - base);
  CHECK(after - base < 2 * 1024, "freeing it kept %ld kB resident", after - base);
}

/* sg_mem_tune_process (which serve and the command line call at start: a fixed 32 MiB mapping threshold, no
 * trimming below 1 GiB) leaves sg_mem's own large blocks given back; its effect on speed is bench_http's. */
static void test_tuned_still_given_back(void) {
  CHECK(sg_mem_tune_process() == 0, "tune");
  test_given_back();
}

int main(void) {
  test_sizes();
  test_given_back();
  test_tuned_still_given_back();
  if (failures) fprintf(stderr, "%d failure(s)\n", failures);
  return failures ? 1 : 0;
}
