/* A growing byte buffer that keeps a NUL after its bytes, for the HTTP layer's request fields, bodies and streams.
 *
 * Basic usage:
 *   sg_buf b = {0};
 *   if (sg_buf_add(&b, "abc", 3)) { ... out of memory ... }   // b.data is "abc", b.len 3
 *   sg_buf_free(&b);                                           // b is empty again
 */
#ifndef SG_BUF_H
#define SG_BUF_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
  uint8_t *data; /* NULL while empty; else len bytes and a NUL */
  size_t len, cap;
} sg_buf;

/* Appends n bytes of p (keeping a NUL after them). Returns 0, or -1 when out of memory (b unchanged). */
int sg_buf_add(sg_buf *b, const void *p, size_t n);

/* Frees b's bytes and empties it; b may be reused. */
void sg_buf_free(sg_buf *b);

#endif
