/* Large short-lived buffers mapped apart from malloc's arenas, so that freeing them gives them back (see mem.h). */
#include "mem.h"

#include <jansson.h>
#include <malloc.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* In front of every block: the mapping's length (0: from malloc) and the usable size; 16 bytes keep the
 * alignment of malloc and of a page. */
typedef struct {
  size_t mapped, size;
} header;

static size_t page_round(size_t n) {
  size_t pg = (size_t)sysconf(_SC_PAGESIZE);
  return (n + pg - 1) / pg * pg;
}

static void *place(header *h, size_t mapped, size_t n) {
  h->mapped = mapped;
  h->size = n;
  return h + 1;
}

static void *alloc_total(size_t n) {
  size_t total = n + sizeof(header);
  if (total >= SG_MEM_MAP_MIN) {
    size_t len = page_round(total);
    void *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return m == MAP_FAILED ? NULL : place(m, len, n);
  }
  header *h = malloc(total);
  return h ? place(h, 0, n) : NULL;
}

void *sg_mem_alloc(size_t n) {
  if (n > SIZE_MAX / 2) return NULL;
  return alloc_total(n);
}

void *sg_mem_realloc(void *p, size_t n) {
  if (!p) return sg_mem_alloc(n);
  if (n > SIZE_MAX / 2) return NULL;
  header *h = (header *)p - 1;
  size_t total = n + sizeof(header);
  if (h->mapped && total >= SG_MEM_MAP_MIN) { /* stays mapped: the kernel moves the pages, nothing is copied */
    size_t len = page_round(total);
    if (len == h->mapped) return place(h, len, n);
    void *m = mremap(h, h->mapped, len, MREMAP_MAYMOVE);
    return m == MAP_FAILED ? NULL : place(m, len, n);
  }
  if (!h->mapped && total < SG_MEM_MAP_MIN) {
    header *g = realloc(h, total);
    return g ? place(g, 0, n) : NULL;
  }
  void *q = alloc_total(n); /* crosses the threshold one way or the other */
  if (!q) return NULL;
  memcpy(q, p, h->size < n ? h->size : n);
  sg_mem_free(p);
  return q;
}

void sg_mem_free(void *p) {
  if (!p) return;
  header *h = (header *)p - 1;
  if (h->mapped)
    munmap(h, h->mapped);
  else
    free(h);
}

void sg_mem_json_free(void *text) {
  json_free_t jfree;
  json_get_alloc_funcs(NULL, &jfree);
  if (text) jfree(text);
}

char *sg_mem_json_to_malloc(char *text) {
  char *copy = text ? strdup(text) : NULL;
  sg_mem_json_free(text);
  return copy;
}

int sg_mem_tune_process(void) {
  if (!mallopt(M_MMAP_THRESHOLD, (int)SG_MEM_MALLOC_MMAP_MIN)) return -1;
  if (!mallopt(M_TRIM_THRESHOLD, (int)SG_MEM_MALLOC_TRIM_MIN)) return -1;
  return 0;
}
