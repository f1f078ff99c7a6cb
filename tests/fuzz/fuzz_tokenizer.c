/* Fuzz target for core/tokenizer.c: any bytes as a prompt, through CLIP's vocabulary (HTML unescaping, Unicode
 * cleaning, the split pattern, BPE); checks that the counts, the ids and the model input agree with each other. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer.h"

#include "fuzz.h"

static sg_tokenizer *tok;

/* Loads the vocabulary named by $SG_FUZZ_VOCAB, else the one the build chose (SG_FUZZ_VOCAB_DEFAULT). */
int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc, (void)argv;
  const char *path = getenv("SG_FUZZ_VOCAB");
#ifdef SG_FUZZ_VOCAB_DEFAULT
  if (!path || !*path) path = SG_FUZZ_VOCAB_DEFAULT;
#endif
  FUZZ_CHECK(path && *path, "no vocabulary: set SG_FUZZ_VOCAB to a bpe_simple_vocab or merges.txt file");
  char err[256];
  tok = sg_tokenizer_load(path, sg_tokenizer_default_params(), err, sizeof err);
  FUZZ_CHECK(tok != NULL, "cannot load the vocabulary %s: %s", path, err);
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t len) {
  const char *text = (const char *)data;
  int32_t vocab = sg_tokenizer_vocab_size(tok), max_length = sg_tokenizer_max_length(tok);

  /* the count alone, then all the ids: the same count, every id in the vocabulary */
  int64_t n = sg_tokenizer_encode(tok, text, len, NULL, 0);
  FUZZ_CHECK(n >= 0, "encode of %zu bytes failed: %lld", len, (long long)n);
  int32_t *ids = malloc(sizeof *ids * (size_t)(n ? n : 1));
  FUZZ_CHECK(ids != NULL, "out of memory for %lld ids", (long long)n);
  int64_t again = sg_tokenizer_encode(tok, text, len, ids, (size_t)n);
  FUZZ_CHECK(again == n, "encode counted %lld ids, then %lld", (long long)n, (long long)again);
  for (int64_t i = 0; i < n; i++)
    FUZZ_CHECK(ids[i] >= 0 && ids[i] < vocab, "id %d at %lld is outside the vocabulary (%d)", ids[i], (long long)i,
               vocab);

  /* a short output gets the same prefix, the full count, and nothing written past its end */
  int32_t few[4] = {-7, -7, -7, -7};
  int64_t short_n = sg_tokenizer_encode(tok, text, len, few, 3);
  FUZZ_CHECK(short_n == n, "encode with room for 3 ids counted %lld, not %lld", (long long)short_n, (long long)n);
  for (int64_t i = 0; i < 3 && i < n; i++) FUZZ_CHECK(few[i] == ids[i], "the first ids differ with a short output");
  FUZZ_CHECK(few[3] == -7, "encode wrote past its output");

  /* the model input: start, the first max_length - 2 ids, end, padding */
  int32_t *in = malloc(sizeof *in * (size_t)max_length);
  FUZZ_CHECK(in != NULL, "out of memory");
  int32_t count = -1;
  FUZZ_CHECK(sg_tokenizer_input_ids(tok, text, len, in, (size_t)max_length, &count) == 0, "input_ids failed");
  FUZZ_CHECK(count == (n > INT32_MAX ? INT32_MAX : n), "input_ids counted %d, encode %lld", count, (long long)n);
  int64_t used = n < max_length - 2 ? n : max_length - 2;
  FUZZ_CHECK(in[0] == sg_tokenizer_sot_id(tok), "input does not start with the start id");
  for (int64_t i = 0; i < used; i++) FUZZ_CHECK(in[1 + i] == ids[i], "input id %lld differs", (long long)i);
  FUZZ_CHECK(in[1 + used] == sg_tokenizer_eot_id(tok), "no end id after %lld ids", (long long)used);
  for (int64_t i = used + 2; i < max_length; i++)
    FUZZ_CHECK(in[i] == sg_tokenizer_pad_id(tok), "input %lld is not padding", (long long)i);
  free(in);
  free(ids);
  return 0;
}
