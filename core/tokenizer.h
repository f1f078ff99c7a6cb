/* CLIP BPE tokenizer: text to the token ids of Stable Diffusion's text encoder.
 *
 * Basic usage:
 *   sg_tokenizer_params p = sg_tokenizer_default_params();
 *   char err[256];
 *   sg_tokenizer *tok = sg_tokenizer_load("models/shapes/merges.txt", p, err, sizeof err);
 *   int32_t ids[77], n;
 *   if (tok && sg_tokenizer_input_ids(tok, "a red star", 10, ids, 77, &n) == 0) { ... }
 *   sg_tokenizer_free(tok);
 *
 * Reads CLIP's bpe_simple_vocab_16e6.txt (plain or .gz) or a merges.txt (with vocab.json beside it, which is
 * implied by the merges and not read). Text is cleaned as CLIP does (HTML-unescaped twice, white space
 * collapsed, stripped, lower-cased as Python's str.lower(): full case mappings and the final sigma), split with
 * CLIP's pattern and merged by rank, giving tools/clip_tokenizer.py's ids (tests/core/check_tokenizer_diff.py
 * compares them on random text). Invalid UTF-8 reads as U+FFFD. A loaded tokenizer is immutable: every call below is thread-safe.
 */
#ifndef SG_TOKENIZER_H
#define SG_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct sg_tokenizer sg_tokenizer;

typedef struct {
  int32_t merges_count; /* merge lines to use after the header; 0: all of them (CLIP's 48,894 for bpe_simple_vocab) */
  int32_t pad_id;       /* padding id; -1: the end-of-text id (SD 1.x) */
  int32_t max_length;   /* ids per input, start and end included (77) */
} sg_tokenizer_params;

enum {
  SG_TOKENIZER_OK = 0,
  SG_TOKENIZER_ENOMEM = -1, /* out of memory */
  SG_TOKENIZER_EINVAL = -2, /* a bad argument (NULL text, too small an output) */
};

/* Returns the defaults: all merges (CLIP's count for bpe_simple_vocab files), pad with end-of-text, 77 ids. */
sg_tokenizer_params sg_tokenizer_default_params(void);

/* Loads a vocabulary: a bpe_simple_vocab file (.txt or .txt.gz), a merges.txt, a vocab.json (its merges.txt is
 * read) or a folder holding merges.txt. Returns NULL on failure with a message in err (errlen bytes). */
sg_tokenizer *sg_tokenizer_load(const char *path, sg_tokenizer_params params, char *err, size_t errlen);

/* Frees the tokenizer; NULL is ignored. */
void sg_tokenizer_free(sg_tokenizer *tok);

int32_t sg_tokenizer_vocab_size(const sg_tokenizer *tok);
int32_t sg_tokenizer_sot_id(const sg_tokenizer *tok);
int32_t sg_tokenizer_eot_id(const sg_tokenizer *tok);
int32_t sg_tokenizer_pad_id(const sg_tokenizer *tok);
int32_t sg_tokenizer_max_length(const sg_tokenizer *tok);

/* Encodes len bytes of UTF-8 text to ids, without start and end tokens, writing at most cap of them to ids
 * (which may be NULL when cap is 0). Returns the total number of ids, which may exceed cap, or a negative
 * SG_TOKENIZER_E* code. */
int64_t sg_tokenizer_encode(const sg_tokenizer *tok, const char *text, size_t len, int32_t *ids, size_t cap);

/* Writes the model input for text into out (out_len must be at least max_length): start id, the first
 * max_length - 2 ids, end id, padding. Sets *n_tokens (when not NULL) to the prompt's id count before
 * truncation. Returns 0 or a negative SG_TOKENIZER_E* code. */
int sg_tokenizer_input_ids(const sg_tokenizer *tok, const char *text, size_t len, int32_t *out, size_t out_len,
                           int32_t *n_tokens);

#ifdef __cplusplus
}
#endif

#endif
