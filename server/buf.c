/* The growing byte buffer of the HTTP layer (see buf.h). */
#include "buf.h"

#include <stdlib.h>
#include <string.h>

#include "mem.h"

int sg_buf_add(sg_buf *b, const void *p, size_t n) {
  if (n > SIZE_MAX / 2 - b->len - 1) return -1;
  if (b->len + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + n + 1) cap *= 2;
    uint8_t *d = sg_mem_realloc(b->data, cap); /* a large body is given back when freed */
    if (!d) return -1;
    b->data = d;
    b->cap = cap;
  }
  if (n) memcpy(b->data + b->len, p, n);
  b->len += n;
  b->data[b->len] = 0;
  return 0;
}

void sg_buf_free(sg_buf *b) {
  sg_mem_free(b->data);
  memset(b, 0, sizeof *b);
}
