/* sketchguide tokenize: prompts -> the text encoder's input ids as JSON lines, with the token count. */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "mem.h"
#include "model.h"
#include "tokenizer.h"

static const char HELP[] =
    "usage: sketchguide tokenize [--model DIR | --vocab FILE] [PROMPT...]\n\n"
    "Prints, for each prompt, one JSON line: {\"prompt\", \"tokens\" (the prompt's token count), \"max_tokens\"\n"
    "(what fits between the start and end tokens), \"truncated\", \"input_ids\" (the encoder's input: start id,\n"
    "tokens, end id, padding)}. With no PROMPT, reads one prompt per line from standard input.\n\n"
    "options:\n"
    "  --model DIR        use this model's vocabulary (default: $SKETCHGUIDE_MODEL, else the bundled model)\n"
    "  --vocab FILE       any CLIP-format vocabulary instead: bpe_simple_vocab_16e6.txt[.gz], merges.txt,\n"
    "                     vocab.json (its merges.txt beside it) or a folder holding merges.txt\n"
    "  --max-length N     input ids per prompt, start and end included (default 77; with --vocab only)\n";

/* Appends the UTF-8 decoding of s[0..len) to a new string, invalid sequences as U+FFFD (so the JSON is valid). */
static char *utf8_clean(const char *s, size_t len) {
  char *out = malloc(len * 3 + 1), *o = out;
  if (!out) return NULL;
  const unsigned char *p = (const unsigned char *)s, *end = p + len;
  while (p < end) {
    unsigned c = *p;
    int n = c < 0x80 ? 0 : (c & 0xE0) == 0xC0 ? 1 : (c & 0xF0) == 0xE0 ? 2 : (c & 0xF8) == 0xF0 ? 3 : -1;
    int ok = n >= 0;
    unsigned cp = n == 0 ? c : n == 1 ? c & 0x1F : n == 2 ? c & 0x0F : c & 0x07;
    for (int k = 1; ok && k <= n; k++) {
      if (p + k >= end || (p[k] & 0xC0) != 0x80) ok = 0;
      else cp = (cp << 6) | (p[k] & 0x3F);
    }
    if (ok && ((n == 1 && cp < 0x80) || (n == 2 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) ||
               (n == 3 && (cp < 0x10000 || cp > 0x10FFFF))))
      ok = 0;
    if (ok && c != 0) {
      memcpy(o, p, (size_t)n + 1);
      o += n + 1;
      p += n + 1;
    } else {
      memcpy(o, "\xEF\xBF\xBD", 3);
      o += 3;
      p++;
    }
  }
  *o = 0;
  return out;
}

/* Prints one JSON line for text; returns 0 or -1 after reporting. */
static int tokenize_one(const sg_tokenizer *tok, const char *text, size_t len) {
  int32_t L = sg_tokenizer_max_length(tok), n = 0;
  int32_t *ids = malloc((size_t)L * sizeof *ids);
  char *clean = utf8_clean(text, len);
  json_t *o = json_object(), *arr = json_array();
  int rc = -1;
  if (!ids || !clean || !o || !arr || sg_tokenizer_input_ids(tok, text, len, ids, (size_t)L, &n)) {
    cli_error("tokenize", "out of memory");
    goto done;
  }
  for (int32_t k = 0; k < L; k++) json_array_append_new(arr, json_integer(ids[k]));
  json_object_set_new(o, "prompt", json_string(clean));
  json_object_set_new(o, "tokens", json_integer(n));
  json_object_set_new(o, "max_tokens", json_integer(L - 2));
  json_object_set_new(o, "truncated", json_boolean(n > L - 2));
  json_object_set(o, "input_ids", arr);
  char *line = json_dumps(o, JSON_COMPACT);
  if (line) {
    puts(line);
    sg_mem_json_free(line);
    rc = 0;
  }
done:
  json_decref(arr);
  json_decref(o);
  free(clean);
  free(ids);
  return rc;
}

int cmd_tokenize(int argc, char **argv) {
  cli_args a = {"tokenize", argc, argv, 1, 0};
  const char *model_dir = NULL, *vocab = NULL, *max_s = NULL, *v;
  char **prompts = calloc((size_t)argc, sizeof *prompts);
  int n_prompts = 0, rest = 0;
  if (!prompts) return CLI_FAIL;
  while (a.i < argc && !a.failed) {
    if (!rest && (cli_flag(&a, "--help") || cli_flag(&a, "-h"))) {
      fputs(HELP, stdout);
      free(prompts);
      return CLI_OK;
    }
    if (rest || argv[a.i][0] != '-' || argv[a.i][1] == 0) prompts[n_prompts++] = argv[a.i++];
    else if (cli_flag(&a, "--")) rest = 1;
    else if (cli_value(&a, "--model", &v)) model_dir = v;
    else if (cli_value(&a, "--vocab", &v)) vocab = v;
    else if (cli_value(&a, "--max-length", &v)) max_s = v;
    else cli_unknown(&a);
  }
  int64_t max_length = 77;
  if (!a.failed && model_dir && vocab) {
    cli_error("tokenize", "--model and --vocab: give one of them");
    a.failed = 1;
  }
  if (!a.failed && max_s && !vocab) {
    cli_error("tokenize", "--max-length: only with --vocab (a model fixes its own)");
    a.failed = 1;
  }
  if (!a.failed && max_s && cli_parse_int("tokenize", "--max-length", max_s, 3, 4096, &max_length)) a.failed = 1;
  if (a.failed) {
    free(prompts);
    return CLI_USAGE;
  }
  char err[1024] = "";
  sg_tokenizer *tok;
  if (vocab) {
    sg_tokenizer_params tp = sg_tokenizer_default_params();
    tp.max_length = (int32_t)max_length;
    if (!(tok = sg_tokenizer_load(vocab, tp, err, sizeof err))) cli_error("tokenize", "--vocab %s: %s", vocab, err);
  } else {
    if (!model_dir) model_dir = cli_default_model();
    if (!(tok = sg_model_load_tokenizer(model_dir, err, sizeof err)))
      cli_error("tokenize", "--model %s: %s", model_dir, err);
  }
  if (!tok) {
    free(prompts);
    return CLI_USAGE;
  }
  int rc = CLI_OK;
  if (n_prompts) {
    for (int k = 0; k < n_prompts && rc == CLI_OK; k++)
      if (tokenize_one(tok, prompts[k], strlen(prompts[k]))) rc = CLI_FAIL;
  } else {
    char *line = NULL;
    size_t cap = 0;
    ssize_t got;
    while (rc == CLI_OK && (got = getline(&line, &cap, stdin)) >= 0) {
      size_t len = (size_t)got;
      if (len && line[len - 1] == '\n') len--;
      if (len && line[len - 1] == '\r') len--;
      if (tokenize_one(tok, line, len)) rc = CLI_FAIL;
      fflush(stdout);
    }
    free(line);
  }
  sg_tokenizer_free(tok);
  free(prompts);
  return rc;
}
