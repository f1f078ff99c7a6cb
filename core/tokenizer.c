/* CLIP BPE tokenizer: cleaning, CLIP's pre-tokenisation, byte-level BPE by merge rank (see tokenizer.h). */
#include "tokenizer.h"

#include "errbuf.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <zlib.h>

#include "unicode_data.h"

#define CLIP_MERGES 48894 /* 49152 - 256 - 2: the merge lines CLIP uses from bpe_simple_vocab_16e6.txt */
#define MAX_FILE (64u << 20)

static const char SOT[] = "<|startoftext|>";
static const char EOT[] = "<|endoftext|>";

/* ---- string -> id map (open addressing) ---- */

typedef struct {
  char **keys; /* owned strings; NULL marks an empty slot */
  int32_t *vals;
  size_t cap;
} strmap;

typedef struct {
  uint64_t *keys; /* (a << 32 | b) + 1; 0 marks an empty slot */
  int32_t *rank;
  size_t cap;
} pairmap;

struct sg_tokenizer {
  char **vocab; /* id -> token string */
  int32_t n_vocab;
  strmap ids;
  pairmap pairs;
  int32_t byte_id[256], byte_end_id[256]; /* ids of a byte's symbol, alone and with </w> */
  int32_t *merge_result;                   /* rank -> id of the merged token */
  int32_t n_merges;
  int32_t sot, eot, pad, max_length;
};

static uint64_t hash_bytes(const char *s, size_t n) {
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
  return h;
}

static uint64_t hash_u64(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdull;
  x ^= x >> 33;
  return x;
}

/* Returns the value of key (n bytes), or -1. */
static int32_t strmap_get(const strmap *m, const char *key, size_t n) {
  for (size_t i = hash_bytes(key, n) & (m->cap - 1);; i = (i + 1) & (m->cap - 1)) {
    if (!m->keys[i]) return -1;
    if (strlen(m->keys[i]) == n && memcmp(m->keys[i], key, n) == 0) return m->vals[i];
  }
}

/* Sets key -> val (a later value replaces an earlier one). The map must have room. Returns 0 or -1 (no memory). */
static int strmap_put(strmap *m, const char *key, int32_t val) {
  size_t n = strlen(key);
  for (size_t i = hash_bytes(key, n) & (m->cap - 1);; i = (i + 1) & (m->cap - 1)) {
    if (!m->keys[i]) {
      if (!(m->keys[i] = strdup(key))) return -1;
      m->vals[i] = val;
      return 0;
    }
    if (strcmp(m->keys[i], key) == 0) {
      m->vals[i] = val;
      return 0;
    }
  }
}

static int32_t pairmap_get(const pairmap *m, int32_t a, int32_t b) {
  uint64_t k = (((uint64_t)(uint32_t)a << 32) | (uint32_t)b) + 1;
  for (size_t i = hash_u64(k) & (m->cap - 1);; i = (i + 1) & (m->cap - 1)) {
    if (!m->keys[i]) return -1;
    if (m->keys[i] == k) return m->rank[i];
  }
}

/* Sets the rank of a pair; called in rank order, so that a repeated merge line keeps its later rank, as the
 * dict that CLIP builds from the merge list does. */
static void pairmap_put(pairmap *m, int32_t a, int32_t b, int32_t rank) {
  uint64_t k = (((uint64_t)(uint32_t)a << 32) | (uint32_t)b) + 1;
  for (size_t i = hash_u64(k) & (m->cap - 1);; i = (i + 1) & (m->cap - 1)) {
    if (!m->keys[i] || m->keys[i] == k) {
      m->keys[i] = k;
      m->rank[i] = rank;
      return;
    }
  }
}

static size_t pow2_at_least(size_t n) {
  size_t c = 16;
  while (c < n) c <<= 1;
  return c;
}

/* ---- UTF-8 ---- */

/* Appends the UTF-8 encoding of cp to out (room for 4 bytes needed). Returns the byte count. */
static int utf8_put(uint32_t cp, char *out) {
  if (cp < 0x80) {
    out[0] = (char)cp;
    return 1;
  }
  if (cp < 0x800) {
    out[0] = (char)(0xC0 | (cp >> 6));
    out[1] = (char)(0x80 | (cp & 0x3F));
    return 2;
  }
  if (cp < 0x10000) {
    out[0] = (char)(0xE0 | (cp >> 12));
    out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[2] = (char)(0x80 | (cp & 0x3F));
    return 3;
  }
  out[0] = (char)(0xF0 | (cp >> 18));
  out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
  out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
  out[3] = (char)(0x80 | (cp & 0x3F));
  return 4;
}

/* Decodes UTF-8 into code points (out needs n slots); malformed sequences become U+FFFD, one per maximal
 * invalid subpart as Python's errors="replace". Returns the code point count. */
static size_t utf8_decode(const unsigned char *s, size_t n, uint32_t *out) {
  size_t i = 0, k = 0;
  while (i < n) {
    unsigned c = s[i];
    if (c < 0x80) {
      out[k++] = c;
      i++;
      continue;
    }
    int need;
    uint32_t cp, lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) {
      need = 1;
      cp = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
      need = 2;
      cp = c & 0x0F;
      if (c == 0xE0) lo = 0xA0;
      if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      need = 3;
      cp = c & 0x07;
      if (c == 0xF0) lo = 0x90;
      if (c == 0xF4) hi = 0x8F;
    } else {
      out[k++] = 0xFFFD;
      i++;
      continue;
    }
    size_t j = i + 1;
    int ok = 1;
    for (int t = 0; t < need; t++, j++) {
      unsigned b = j < n ? s[j] : 0;
      unsigned l = t == 0 ? lo : 0x80, h = t == 0 ? hi : 0xBF;
      if (j >= n || b < l || b > h) {
        ok = 0;
        break;
      }
      cp = (cp << 6) | (b & 0x3F);
    }
    out[k++] = ok ? cp : 0xFFFD;
    i = j;
  }
  return k;
}

/* ---- Unicode classes ---- */

/* Returns the class of cp in a table of sorted, disjoint ranges (0 outside every range). */
static int range_class(const sg_uc_range *ranges, size_t n, uint32_t cp) {
  size_t lo = 0, hi = n;
  while (lo < hi) {
    size_t mid = (lo + hi) / 2;
    if (cp < ranges[mid].first)
      hi = mid;
    else if (cp > ranges[mid].last)
      lo = mid + 1;
    else
      return ranges[mid].cls;
  }
  return 0;
}

static int uc_class(uint32_t cp) { return range_class(sg_uc_ranges, sg_uc_nranges, cp); }

static int uc_sigma_class(uint32_t cp) { return range_class(sg_uc_sigma_ranges, sg_uc_nsigma_ranges, cp); }

/* Whether the capital sigma at s[i] (of n code points) is in Unicode's Final_Sigma context, as Python's
 * str.lower() decides it: a cased letter before it and none after it, skipping case-ignorable characters both
 * ways. Each scan stops at the first character that is not case-ignorable, so lowering a string costs O(n).
 * Returns 1 or 0. */
static int final_sigma(const uint32_t *s, size_t n, size_t i) {
  size_t j = i;
  while (j > 0 && uc_sigma_class(s[j - 1]) == 2) j--;
  if (j == 0 || uc_sigma_class(s[j - 1]) != 1) return 0;
  for (j = i + 1; j < n && uc_sigma_class(s[j]) == 2; j++) {
  }
  return j == n || uc_sigma_class(s[j]) != 1;
}

static const sg_uc_lower *uc_lower(uint32_t cp) {
  size_t lo = 0, hi = sg_uc_nlowers;
  while (lo < hi) {
    size_t mid = (lo + hi) / 2;
    if (cp < sg_uc_lowers[mid].cp)
      hi = mid;
    else if (cp > sg_uc_lowers[mid].cp)
      lo = mid + 1;
    else
      return &sg_uc_lowers[mid];
  }
  return NULL;
}

/* ---- HTML unescaping, as Python's html.unescape ---- */

static const char *html_entity(const char *name) {
  size_t lo = 0, hi = sg_html_nentities;
  while (lo < hi) {
    size_t mid = (lo + hi) / 2;
    int c = strcmp(name, sg_html_entities[mid].name);
    if (c < 0)
      hi = mid;
    else if (c > 0)
      lo = mid + 1;
    else
      return sg_html_entities[mid].value;
  }
  return NULL;
}

static int is_hex(uint32_t c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); }

static int html_name_char(uint32_t c) {
  return !(c == '\t' || c == '\n' || c == '\f' || c == ' ' || c == '<' || c == '&' || c == '#' || c == ';');
}

/* Appends the code points of a UTF-8 string. Returns the new length. */
static size_t put_utf8_string(const char *s, uint32_t *out, size_t k) {
  return k + utf8_decode((const unsigned char *)s, strlen(s), out + k);
}

/* The replacement of numeric reference num (Python's _replace_charref); returns 0 for "no character". */
static uint32_t html_numeric(uint64_t num) {
  for (size_t i = 0; i < sg_html_ninvalid_charrefs; i++)
    if (sg_html_invalid_charrefs[i].num == num) return sg_html_invalid_charrefs[i].cp;
  if ((num >= 0xD800 && num <= 0xDFFF) || num > 0x10FFFF) return 0xFFFD;
  for (size_t i = 0; i < sg_html_ninvalid_codepoints; i++)
    if (sg_html_invalid_codepoints[i] == num) return 0;
  return (uint32_t)num;
}

/* Unescapes in (n code points) into out, which needs room for 2n + 8 code points (a named reference's value
 * is at most 2 code points, never longer than its name plus '&'). Returns the new length. */
static size_t html_unescape(const uint32_t *in, size_t n, uint32_t *out) {
  size_t i = 0, k = 0;
  while (i < n) {
    if (in[i] != '&' || i + 1 >= n) {
      out[k++] = in[i++];
      continue;
    }
    size_t j = i + 1;
    if (in[j] == '#') {
      int hex = j + 1 < n && (in[j + 1] == 'x' || in[j + 1] == 'X');
      size_t d = j + 1 + (size_t)hex, e = d;
      uint64_t num = 0;
      while (e < n && (hex ? is_hex(in[e]) : (in[e] >= '0' && in[e] <= '9'))) {
        uint32_t c = in[e];
        uint32_t v = c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10;
        if (num <= 0x10FFFFull * 16) num = num * (hex ? 16 : 10) + v; /* saturates above the code space */
        e++;
      }
      if (e == d) { /* "&#" with no digits is left as it is */
        out[k++] = in[i++];
        continue;
      }
      if (e < n && in[e] == ';') e++;
      uint32_t cp = html_numeric(num);
      if (cp) out[k++] = cp;
      i = e;
      continue;
    }
    size_t e = j;
    while (e < n && e - j < 32 && html_name_char(in[e])) e++;
    if (e == j) {
      out[k++] = in[i++];
      continue;
    }
    size_t end = e < n && in[e] == ';' ? e + 1 : e;
    /* no entity name holds U+0000, which would end the C string early: only text before one can match */
    size_t z = 0;
    while (j + z < end && in[j + z]) z++;
    char name[32 * 4 + 2];
    size_t nb = 0;
    for (size_t t = j; t < end; t++) nb += (size_t)utf8_put(in[t], name + nb);
    name[nb] = 0;
    const char *val = z == end - j ? html_entity(name) : NULL;
    if (val) {
      k = put_utf8_string(val, out, k);
      i = end;
      continue;
    }
    /* the longest prefix (at least 2 characters, no ';') that is a name */
    int done = 0;
    for (size_t x = (z < end - j - 1 ? z : end - j - 1); x > 1; x--) {
      nb = 0;
      for (size_t t = j; t < j + x; t++) nb += (size_t)utf8_put(in[t], name + nb);
      name[nb] = 0;
      if ((val = html_entity(name))) {
        k = put_utf8_string(val, out, k);
        for (size_t t = j + x; t < end; t++) out[k++] = in[t];
        done = 1;
        break;
      }
    }
    if (!done)
      for (size_t t = i; t < end; t++) out[k++] = in[t];
    i = end;
  }
  return k;
}

/* ---- loading ---- */

/* Reads a whole (possibly gzipped) file. Returns a NUL-terminated buffer the caller frees, or NULL. */
static char *read_file(const char *path, size_t *len, char *err, size_t errlen) {
  gzFile f = gzopen(path, "rb");
  if (!f) {
    sg_set_err(err, errlen, "%s: cannot open", path);
    return NULL;
  }
  size_t cap = 1 << 20, n = 0;
  char *buf = malloc(cap + 1);
  for (;;) {
    if (!buf) {
      sg_set_err(err, errlen, "%s: out of memory", path);
      gzclose(f);
      return NULL;
    }
    int r = gzread(f, buf + n, (unsigned)(cap - n));
    if (r < 0) {
      sg_set_err(err, errlen, "%s: read error", path);
      free(buf);
      gzclose(f);
      return NULL;
    }
    n += (size_t)r;
    if (r == 0) break;
    if (n == cap) {
      if (cap >= MAX_FILE) {
        sg_set_err(err, errlen, "%s: larger than %u bytes", path, MAX_FILE);
        free(buf);
        gzclose(f);
        return NULL;
      }
      char *nb = realloc(buf, cap * 2 + 1);
      if (!nb) free(buf);
      buf = nb;
      cap *= 2;
    }
  }
  gzclose(f);
  buf[n] = 0;
  *len = n;
  return buf;
}

/* GPT-2's byte -> printable code point table. */
static void byte_to_unicode(uint32_t table[256]) {
  int n = 0;
  for (int b = 0; b < 256; b++) {
    int printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    table[b] = printable ? (uint32_t)b : (uint32_t)(256 + n++);
  }
}

static int add_token(sg_tokenizer *t, const char *s) {
  if (!(t->vocab[t->n_vocab] = strdup(s))) return -1;
  return strmap_put(&t->ids, s, t->n_vocab++);
}

static const char *resolve_path(const char *path, char *buf, size_t buflen) {
  struct stat st;
  size_t n = strlen(path);
  if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
    snprintf(buf, buflen, "%s/merges.txt", path);
    return buf;
  }
  if (n >= 10 && strcmp(path + n - 10, "vocab.json") == 0) {
    snprintf(buf, buflen, "%.*smerges.txt", (int)(n - 10), path);
    return buf;
  }
  return path;
}

sg_tokenizer_params sg_tokenizer_default_params(void) {
  sg_tokenizer_params p = {0, -1, 77};
  return p;
}

sg_tokenizer *sg_tokenizer_load(const char *path, sg_tokenizer_params params, char *err, size_t errlen) {
  char pbuf[4096];
  if (!path) {
    sg_set_err(err, errlen, "no vocabulary path");
    return NULL;
  }
  if (params.max_length < 2) {
    sg_set_err(err, errlen, "max_length %d is below 2", params.max_length);
    return NULL;
  }
  path = resolve_path(path, pbuf, sizeof pbuf);
  size_t len;
  char *text = read_file(path, &len, err, errlen);
  if (!text) return NULL;
  /* split lines in place */
  size_t nlines = 0;
  for (size_t i = 0; i < len; i++) nlines += text[i] == '\n';
  char **lines = malloc((nlines + 1) * sizeof *lines);
  sg_tokenizer *t = calloc(1, sizeof *t);
  if (!lines || !t) goto nomem;
  size_t nl = 0;
  for (char *p = text, *q; p && *p; p = q) {
    q = strchr(p, '\n');
    if (q) *q++ = 0;
    size_t ln = strlen(p);
    if (ln && p[ln - 1] == '\r') p[--ln] = 0;
    lines[nl++] = p;
  }
  size_t first = nl && (lines[0][0] == '#' || lines[0][0] == '"') ? 1 : 0;
  size_t nm = 0;
  for (size_t i = first; i < nl; i++)
    if (lines[i][strspn(lines[i], " \t")]) lines[first + nm++] = lines[i];
  int32_t want = params.merges_count;
  if (want == 0 && strstr(path, "bpe_simple_vocab")) want = CLIP_MERGES;
  if (want > 0) {
    if ((size_t)want > nm) {
      sg_set_err(err, errlen, "%s: %zu merge lines, %d wanted", path, nm, want);
      goto fail;
    }
    nm = (size_t)want;
  }
  t->n_merges = (int32_t)nm;
  size_t nvocab = 512 + nm + 2;
  t->vocab = calloc(nvocab, sizeof *t->vocab);
  t->merge_result = malloc((nm + 1) * sizeof *t->merge_result);
  t->ids.cap = pow2_at_least(nvocab * 2);
  t->ids.keys = calloc(t->ids.cap, sizeof *t->ids.keys);
  t->ids.vals = malloc(t->ids.cap * sizeof *t->ids.vals);
  t->pairs.cap = pow2_at_least(nm * 2 + 1);
  t->pairs.keys = calloc(t->pairs.cap, sizeof *t->pairs.keys);
  t->pairs.rank = malloc(t->pairs.cap * sizeof *t->pairs.rank);
  if (!t->vocab || !t->merge_result || !t->ids.keys || !t->ids.vals || !t->pairs.keys || !t->pairs.rank) goto nomem;
  uint32_t b2u[256];
  byte_to_unicode(b2u);
  /* CLIP's vocabulary order: the byte symbols sorted as the table's values, i.e. by byte order of the printable
     bytes first, then the others; Python's list(bytes_to_unicode().values()) follows the table's key order */
  int order[256], no = 0;
  for (int b = 0; b < 256; b++)
    if (b2u[b] == (uint32_t)b) order[no++] = b;
  for (int b = 0; b < 256; b++)
    if (b2u[b] != (uint32_t)b) order[no++] = b;
  char sym[16];
  for (int pass = 0; pass < 2; pass++)
    for (int i = 0; i < 256; i++) {
      int n = utf8_put(b2u[order[i]], sym);
      if (pass) memcpy(sym + n, "</w>", 5);
      else sym[n] = 0;
      if (add_token(t, sym)) goto nomem;
    }
  for (size_t r = 0; r < nm; r++) {
    char *a = lines[first + r];
    a += strspn(a, " \t");
    char *sp = a + strcspn(a, " \t");
    char *b = sp + strspn(sp, " \t");
    char *be = b + strcspn(b, " \t");
    if (!*sp || !*b || *(be + strspn(be, " \t"))) {
      sg_set_err(err, errlen, "%s: merge line %zu is not two symbols", path, first + r + 1);
      goto fail;
    }
    *sp = 0;
    *be = 0;
    size_t la = strlen(a), lb = strlen(b);
    char *m = malloc(la + lb + 1);
    if (!m) goto nomem;
    memcpy(m, a, la);
    memcpy(m + la, b, lb + 1);
    int rc = add_token(t, m);
    free(m);
    if (rc) goto nomem;
  }
  if (add_token(t, SOT) || add_token(t, EOT)) goto nomem;
  /* ids by string (a later duplicate wins, as in a dict built from the vocabulary list) */
  for (int b = 0; b < 256; b++) {
    int n = utf8_put(b2u[b], sym);
    t->byte_id[b] = strmap_get(&t->ids, sym, (size_t)n);
    memcpy(sym + n, "</w>", 4);
    t->byte_end_id[b] = strmap_get(&t->ids, sym, (size_t)n + 4);
  }
  for (size_t r = 0; r < nm; r++) {
    const char *a = lines[first + r];
    a += strspn(a, " \t");
    const char *b = a + strlen(a) + 1;
    b += strspn(b, " \t");
    int32_t ia = strmap_get(&t->ids, a, strlen(a)), ib = strmap_get(&t->ids, b, strlen(b));
    t->merge_result[r] = strmap_get(&t->ids, t->vocab[512 + r], strlen(t->vocab[512 + r]));
    if (ia >= 0 && ib >= 0) pairmap_put(&t->pairs, ia, ib, (int32_t)r);
  }
  t->sot = (int32_t)(nvocab - 2);
  t->eot = (int32_t)(nvocab - 1);
  t->pad = params.pad_id < 0 ? t->eot : params.pad_id;
  t->max_length = params.max_length;
  if (t->pad >= (int32_t)nvocab) {
    sg_set_err(err, errlen, "pad id %d is outside the vocabulary (%zu)", t->pad, nvocab);
    goto fail;
  }
  free(lines);
  free(text);
  return t;
nomem:
  sg_set_err(err, errlen, "%s: out of memory", path);
fail:
  free(lines);
  free(text);
  sg_tokenizer_free(t);
  return NULL;
}

void sg_tokenizer_free(sg_tokenizer *t) {
  if (!t) return;
  if (t->vocab)
    for (int32_t i = 0; i < t->n_vocab; i++) free(t->vocab[i]);
  if (t->ids.keys)
    for (size_t i = 0; i < t->ids.cap; i++) free(t->ids.keys[i]);
  free(t->vocab);
  free(t->ids.keys);
  free(t->ids.vals);
  free(t->pairs.keys);
  free(t->pairs.rank);
  free(t->merge_result);
  free(t);
}

int32_t sg_tokenizer_vocab_size(const sg_tokenizer *t) { return t->n_vocab; }
int32_t sg_tokenizer_sot_id(const sg_tokenizer *t) { return t->sot; }
int32_t sg_tokenizer_eot_id(const sg_tokenizer *t) { return t->eot; }
int32_t sg_tokenizer_pad_id(const sg_tokenizer *t) { return t->pad; }
int32_t sg_tokenizer_max_length(const sg_tokenizer *t) { return t->max_length; }

/* ---- encoding ---- */

typedef struct {
  int32_t *ids;
  size_t cap, n;
} idsink;

static void sink_put(idsink *s, int32_t id) {
  if (s->n < s->cap) s->ids[s->n] = id;
  s->n++;
}

/* BPE of one pre-token (its UTF-8 bytes), ids to the sink. work needs room for n ids. */
static void bpe_word(const sg_tokenizer *t, const unsigned char *bytes, size_t n, int32_t *w, idsink *out) {
  for (size_t i = 0; i < n; i++) w[i] = i + 1 < n ? t->byte_id[bytes[i]] : t->byte_end_id[bytes[i]];
  size_t len = n;
  while (len > 1) {
    int32_t best = -1, first = 0, second = 0;
    for (size_t i = 0; i + 1 < len; i++) {
      int32_t r = pairmap_get(&t->pairs, w[i], w[i + 1]);
      if (r >= 0 && (best < 0 || r < best)) {
        best = r;
        first = w[i];
        second = w[i + 1];
      }
    }
    if (best < 0) break;
    size_t k = 0;
    for (size_t i = 0; i < len;) {
      if (i + 1 < len && w[i] == first && w[i + 1] == second) {
        w[k++] = t->merge_result[best];
        i += 2;
      } else {
        w[k++] = w[i++];
      }
    }
    len = k;
  }
  for (size_t i = 0; i < len; i++) sink_put(out, w[i]);
}

static int starts_with_ascii(const uint32_t *s, size_t n, const char *lit) {
  size_t m = strlen(lit);
  if (m > n) return 0;
  for (size_t i = 0; i < m; i++)
    if (s[i] != (unsigned char)lit[i]) return 0;
  return 1;
}

int64_t sg_tokenizer_encode(const sg_tokenizer *t, const char *text, size_t len, int32_t *ids, size_t cap) {
  static const char *const contractions[] = {"'s", "'t", "'re", "'ve", "'m", "'ll", "'d"};
  if (!t || (!text && len) || (!ids && cap)) return SG_TOKENIZER_EINVAL;
  if (len > (SIZE_MAX / 16) / sizeof(uint32_t)) return SG_TOKENIZER_ENOMEM;
  size_t room = 4 * len + 16; /* two unescapes (at most doubling each) and lower-casing (up to 3 per cp) */
  uint32_t *a = malloc(room * 3 * sizeof *a), *b = malloc(room * 3 * sizeof *b);
  unsigned char *bytes = malloc(room * 3 * 4 + 4);
  int32_t *work = malloc((room * 3 * 4 + 4) * sizeof *work);
  if (!a || !b || !bytes || !work) {
    free(a), free(b), free(bytes), free(work);
    return SG_TOKENIZER_ENOMEM;
  }
  size_t n = utf8_decode((const unsigned char *)text, len, a);
  n = html_unescape(a, n, b);
  n = html_unescape(b, n, a);
  /* collapse white space runs to one space and strip (into b), then lower-case (into a) as str.lower(): full
     mappings, and the capital sigma by its context in the collapsed text */
  size_t k = 0;
  int pending = 0;
  for (size_t i = 0; i < n; i++) {
    if (uc_class(a[i]) == 3) {
      pending = k > 0;
      continue;
    }
    if (pending) b[k++] = ' ';
    pending = 0;
    b[k++] = a[i];
  }
  n = k;
  k = 0;
  for (size_t i = 0; i < n; i++) {
    const sg_uc_lower *lw;
    if (b[i] == 0x3A3) {
      a[k++] = final_sigma(b, n, i) ? 0x3C2 : 0x3C3;
    } else if ((lw = uc_lower(b[i]))) {
      for (int j = 0; j < 3 && lw->lower[j]; j++) a[k++] = lw->lower[j];
    } else {
      a[k++] = b[i];
    }
  }
  n = k;
  const uint32_t *cps = a;
  idsink out = {ids, cap, 0};
  for (size_t i = 0; i < n;) {
    size_t start = i, end = i;
    const char *special = NULL;
    if (starts_with_ascii(cps + i, n - i, SOT)) special = SOT;
    else if (starts_with_ascii(cps + i, n - i, EOT)) special = EOT;
    if (special) {
      sink_put(&out, special == SOT ? t->sot : t->eot);
      i += strlen(special);
      continue;
    }
    for (size_t c = 0; c < sizeof contractions / sizeof *contractions && end == start; c++)
      if (starts_with_ascii(cps + i, n - i, contractions[c])) end = i + strlen(contractions[c]);
    if (end == start) {
      int cls = uc_class(cps[i]);
      if (cls == 3) {
        i++;
        continue;
      }
      end = i + 1;
      if (cls == 1)
        while (end < n && uc_class(cps[end]) == 1) end++;
      else if (cls == 0)
        while (end < n && uc_class(cps[end]) == 0) end++;
    }
    size_t nb = 0;
    for (size_t j = start; j < end; j++) nb += (size_t)utf8_put(cps[j], (char *)bytes + nb);
    bpe_word(t, bytes, nb, work, &out);
    i = end;
  }
  free(a), free(b), free(bytes), free(work);
  return (int64_t)out.n;
}

int sg_tokenizer_input_ids(const sg_tokenizer *t, const char *text, size_t len, int32_t *out, size_t out_len,
                           int32_t *n_tokens) {
  if (!t || !out || out_len < (size_t)t->max_length) return SG_TOKENIZER_EINVAL;
  size_t body = (size_t)t->max_length - 2;
  int64_t n = sg_tokenizer_encode(t, text, len, out + 1, body);
  if (n < 0) return (int)n;
  size_t used = (size_t)n < body ? (size_t)n : body;
  out[0] = t->sot;
  out[1 + used] = t->eot;
  for (size_t i = used + 2; i < (size_t)t->max_length; i++) out[i] = t->pad;
  if (n_tokens) *n_tokens = n > INT32_MAX ? INT32_MAX : (int32_t)n;
  return 0;
}
