/* Buffers that may be large and short-lived (request bodies, decoded sketches): given back to the system when freed.
 *
 * glibc raises its mmap threshold to the largest block freed so far (up to 32 MiB): once the engine has freed a
 * few large tensors, a 16 MiB sketch decoded on an HTTP thread comes from that thread's arena, and a thread arena's
 * free top is never trimmed (not even by malloc_trim), so each thread kept its largest request for good. A fixed
 * process-wide threshold fixes that but maps and unmaps every tensor the engine makes (3.5x slower steps). These
 * functions map blocks of SG_MEM_MAP_MIN bytes or more apart, whatever the threshold, and smaller ones come from
 * malloc; a block from them goes back to them only (sg_mem_realloc, sg_mem_free), never to free().
 *
 * Basic usage:
 *   uint8_t *p = sg_mem_alloc(16 << 20);   // NULL when out of memory
 *   p = sg_mem_realloc(p, 32 << 20);        // NULL when out of memory (the old block is then still valid)
 *   sg_mem_free(p);                         // its pages are the system's again
 */
#ifndef SG_MEM_H
#define SG_MEM_H

#include <stddef.h>

/* Blocks of this many bytes or more (with the block's header) are mapped apart. */
#define SG_MEM_MAP_MIN ((size_t)1 << 20)

/* n bytes, aligned to 16 (n 0 gives a valid block). Returns NULL when out of memory. */
void *sg_mem_alloc(size_t n);

/* p (NULL: a new block) resized to n bytes, its first min(old, n) bytes kept. Returns NULL when out of memory,
 * p then unchanged. */
void *sg_mem_realloc(void *p, size_t n);

/* Frees a block of sg_mem_alloc or sg_mem_realloc; NULL does nothing. */
void sg_mem_free(void *p);

/* Sets the process's malloc for engine work, once at start before any thread: a fixed mmap threshold of
 * SG_MEM_MALLOC_MMAP_MIN and no trimming of freed memory below SG_MEM_MALLOC_TRIM_MIN. Without it glibc maps and
 * unmaps a step's tensors until its dynamic threshold has risen, and a thread arena gives its free top back and
 * faults it in again at every step: a 50-step guided image took 1.72 s in serve's worker thread against 1.36 s
 * with these settings (1 thread; 2.99 s against 2.16 s with 2 threads; medians of paired runs). Blocks of SG_MEM_MAP_MIN bytes or more from these
 * functions are mapped apart whatever malloc does, so request bodies and sketches are still given back. Returns 0,
 * or -1 when malloc refused a setting (nothing else is changed then). */
#define SG_MEM_MALLOC_MMAP_MIN ((size_t)32 << 20)
#define SG_MEM_MALLOC_TRIM_MIN ((size_t)1 << 30)
int sg_mem_tune_process(void);

/* Frees text that jansson allocated (json_dumps) with the free function jansson was given, whichever it is (the
 * server gives it these, so that a JSON body's strings are given back too); NULL does nothing. */
void sg_mem_json_free(void *text);

/* A copy of a json_dumps result in a block that free() takes, the result freed (sg_mem_json_free); NULL for NULL
 * or when out of memory. */
char *sg_mem_json_to_malloc(char *text);

#endif
