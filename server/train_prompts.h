/* The prompts of train-lgp --prompts: a prompt file read and checked line by line, or the built-in list.
 *
 * Basic usage:
 *   char err[512];
 *   train_prompts *p = train_prompts_read("prompts.txt", tok, err, sizeof err);  // or train_prompts_builtin(...)
 *   for (int32_t i = 0; p && i < p->n; i++) puts(p->text[i]);
 *   train_prompts_free(p);
 *
 * A prompt file is UTF-8 text, one prompt per line (LF or CRLF); blank lines and lines starting with '#' are
 * skipped; white space around a prompt is removed. Errors: a constructor returns NULL with a message in err that
 * names the line.
 */
#ifndef SG_TRAIN_PROMPTS_H
#define SG_TRAIN_PROMPTS_H

#include <stddef.h>
#include <stdint.h>

#include "tokenizer.h"

#define TRAIN_PROMPTS_MAX_BYTES 1024    /* per prompt */
#define TRAIN_PROMPTS_MAX_COUNT 1000000 /* prompts per file */
#define TRAIN_PROMPTS_MAX_FILE (64 << 20)

typedef struct {
  int32_t n;
  char **text; /* n NUL-terminated prompts */
} train_prompts;

/* Reads and checks a prompt file: valid UTF-8 without NUL bytes, at most TRAIN_PROMPTS_MAX_BYTES bytes and (when
 * tok is not NULL) at most tok's max_length - 2 tokens per prompt, at least one prompt. Returns the prompts (freed
 * with train_prompts_free), or NULL with a message in err. */
train_prompts *train_prompts_read(const char *path, const sg_tokenizer *tok, char *err, size_t errlen);

/* Returns the built-in list of everyday prompts (train_prompts_free frees it), or NULL when out of memory. */
train_prompts *train_prompts_builtin(void);

/* Returns the FNV-1a 64-bit hash of the prompts (each with its terminating NUL), to recognise a list again. */
uint64_t train_prompts_hash(const train_prompts *p);

/* Frees p; NULL is ignored. */
void train_prompts_free(train_prompts *p);

#endif
