/* LGP training in C, step for step as tools/train_lgp.py: data preparation, the training loop with resumable
 * checkpoints, the held-out report, and the predictor and manifest written atomically. The data sets it reads
 * are core/lgp_data.c's. */
#include "lgp_train.h"

#include "errbuf.h"
#include "mem.h"

#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MAX_TAPS 63
#define CHUNK 256   /* images per VAE / text encoder call while preparing (train_lgp.py's Prepared) */
#define EVAL_BATCH 64
#define EVAL_SEED 123
static const int32_t EVAL_T[SG_LGP_N_EVAL_T] = {50, 250, 500, 750, 950};

/* ---------------------------------------------------------------- JSON written as Python's json module does */

typedef struct {
  char *s;
  size_t len, cap;
  int oom;
} sbuf;

static void sb_put(sbuf *b, const char *s, size_t n) {
  if (b->oom) return;
  if (b->len + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 1024;
    while (cap < b->len + n + 1) cap *= 2;
    char *p = realloc(b->s, cap);
    if (!p) {
      b->oom = 1;
      return;
    }
    b->s = p, b->cap = cap;
  }
  memcpy(b->s + b->len, s, n);
  b->len += n;
  b->s[b->len] = 0;
}

static void sb_str(sbuf *b, const char *s) { sb_put(b, s, strlen(s)); }

/* A float as Python's repr: the shortest %.17g-or-shorter form that reads back exactly, with ".0" when it would
 * look like an integer. */
static void sb_real(sbuf *b, double v) {
  char buf[64];
  if (!isfinite(v)) {
    sb_str(b, isnan(v) ? "NaN" : v > 0 ? "Infinity" : "-Infinity");
    return;
  }
  for (int p = 1; p <= 17; p++) {
    snprintf(buf, sizeof buf, "%.*g", p, v);
    if (strtod(buf, NULL) == v) break;
  }
  if (!strpbrk(buf, ".en")) strcat(buf, ".0");
  sb_str(b, buf);
}

/* json.dumps(v) (indent 0: one line, ", " and ": ") or json.dump(v, indent=2) with ensure_ascii. */
static void sb_json(sbuf *b, json_t *v, int indent, int depth) {
  char buf[64];
  switch (json_typeof(v)) {
    case JSON_OBJECT:
    case JSON_ARRAY: {
      int obj = json_is_object(v);
      size_t n = obj ? json_object_size(v) : json_array_size(v), i = 0;
      sb_str(b, obj ? "{" : "[");
      if (!n) {
        sb_str(b, obj ? "}" : "]");
        return;
      }
      const char *key;
      json_t *e;
      void *it = obj ? json_object_iter(v) : NULL;
      for (i = 0; i < n; i++) {
        if (i) sb_str(b, indent ? "," : ", ");
        if (indent) {
          sb_str(b, "\n");
          for (int k = 0; k < (depth + 1) * indent; k++) sb_str(b, " ");
        }
        if (obj) {
          key = json_object_iter_key(it);
          e = json_object_iter_value(it);
          json_t *ks = json_string(key);
          char *enc = ks ? json_dumps(ks, JSON_ENCODE_ANY | JSON_ENSURE_ASCII) : NULL;
          if (enc) sb_str(b, enc);
          else b->oom = 1;
          sg_mem_json_free(enc);
          json_decref(ks);
          sb_str(b, ": ");
          it = json_object_iter_next(v, it);
        } else {
          e = json_array_get(v, i);
        }
        sb_json(b, e, indent, depth + 1);
      }
      if (indent) {
        sb_str(b, "\n");
        for (int k = 0; k < depth * indent; k++) sb_str(b, " ");
      }
      sb_str(b, obj ? "}" : "]");
      return;
    }
    case JSON_STRING: {
      char *enc = json_dumps(v, JSON_ENCODE_ANY | JSON_ENSURE_ASCII);
      if (enc) sb_str(b, enc);
      else b->oom = 1;
      sg_mem_json_free(enc);
      return;
    }
    case JSON_INTEGER:
      snprintf(buf, sizeof buf, "%lld", (long long)json_integer_value(v));
      sb_str(b, buf);
      return;
    case JSON_REAL: sb_real(b, json_real_value(v)); return;
    case JSON_TRUE: sb_str(b, "true"); return;
    case JSON_FALSE: sb_str(b, "false"); return;
    case JSON_NULL: sb_str(b, "null"); return;
  }
}

/* Writes len bytes to path atomically (path.tmp, then rename). Returns 0 or -1 with errno set. */
static int write_atomic(const char *path, const char *data, size_t len) {
  char tmp[4200];
  if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp) {
    errno = ENAMETOOLONG;
    return -1;
  }
  FILE *f = fopen(tmp, "wb");
  if (!f) return -1;
  int bad = fwrite(data, 1, len, f) != len;
  bad |= fflush(f) != 0;
  bad |= fsync(fileno(f)) != 0;
  bad |= fclose(f) != 0;
  if (bad || rename(tmp, path) != 0) {
    int e = errno;
    remove(tmp);
    errno = e;
    return -1;
  }
  return 0;
}

/* ---------------------------------------------------------------- training */

sg_lgp_train_params sg_lgp_train_default_params(void) {
  sg_lgp_train_params p;
  memset(&p, 0, sizeof p);
  p.steps = 3000;
  p.batch = 16;
  p.lr = 1e-4;
  p.seed = 0;
  p.time_dim = 32;
  static const int32_t hidden[4] = {512, 256, 128, 64};
  memcpy(p.hidden, hidden, sizeof hidden);
  p.n_hidden = 4;
  p.checkpoint_every = 500;
  p.resume = 1;
  p.update_manifest = 1;
  return p;
}

/* Encoded pairs: z0 = E(image), target = E(edges), contexts per distinct caption (train_lgp.py's Prepared). */
typedef struct {
  int32_t n, n_ctx;
  float *z0, *target; /* n x len */
  float *ctx;         /* n_ctx x ctx_len */
  int32_t *cap_idx;   /* n */
  int32_t *first;     /* n_ctx: the first pair (in sorted order) of each distinct caption */
} prepared;

typedef struct {
  sg_model *m;
  const sg_model_info *info;
  const char *device;
  size_t len, ctx_len; /* floats per latent, per context */
  int64_t lshape[4];   /* [1, C, h, w] */
  double *abar;
  char *err;
  size_t errlen;
  struct timespec t0;
  sg_lgp_train_params *p;
  int32_t enc_done, enc_total; /* inputs encoded while preparing, and in all (sg_lgp_progress) */
} trainer;

static int report(trainer *T, sg_lgp_phase phase, int32_t step, double loss, int32_t t);

/* Counts n more inputs encoded and reports it (SG_LGP_PHASE_PREPARE). Returns 0, or SG_LGP_ECANCEL when the
 * callback asks to stop. */
static int encoded(trainer *T, int32_t n) {
  T->enc_done += n;
  if (report(T, SG_LGP_PHASE_PREPARE, 0, NAN, 0)) {
    sg_set_err(T->err, T->errlen, "cancelled while encoding the data (%d of %d inputs)", (int)T->enc_done,
               (int)T->enc_total);
    return SG_LGP_ECANCEL;
  }
  return 0;
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int torch_fail(trainer *T, const char *what) {
  sg_set_err(T->err, T->errlen, "%s: %s", what, ts_last_error());
  return SG_LGP_ERUNTIME;
}

static int nomem(trainer *T) {
  sg_set_err(T->err, T->errlen, "out of memory");
  return SG_LGP_ENOMEM;
}

static void prepared_free(prepared *d) {
  free(d->z0), free(d->target), free(d->ctx), free(d->cap_idx), free(d->first);
  memset(d, 0, sizeof *d);
}

/* E(x) for rows [0, n) of d: images (edges 0) mapped to [-1, 1] as x / 127.5 - 1, or edge maps (edges 1) as
 * 1 on edges, -1 elsewhere, on three channels; out gets n x len floats (the VAE mean x scaling_factor). Images go
 * in as train_lgp.py's torch.from_numpy(images).float().permute(0, 3, 1, 2) / 127.5 - 1 does: channels-last
 * strides, which the VAE's convolutions handle with other (slightly different) kernels than contiguous input. */
static int encode_rows(trainer *T, const sg_lgp_data *d, int edges, float *out) {
  int32_t S = sg_lgp_data_image_size(d), N = sg_lgp_data_count(d);
  size_t px = (size_t)S * S;
  /* train_lgp.py encodes 256 images per call; large images go in smaller groups to bound memory */
  int64_t chunk = (int64_t)CHUNK * 64 * 64 / ((int64_t)S * S);
  chunk = chunk < 1 ? 1 : chunk > CHUNK ? CHUNK : chunk;
  float *x = malloc((size_t)chunk * 3 * px * sizeof *x);
  if (!x) return nomem(T);
  float sf = (float)T->info->scaling_factor;
  for (int32_t i0 = 0; i0 < N; i0 += (int32_t)chunk) {
    int32_t b = N - i0 < chunk ? N - i0 : (int32_t)chunk;
    for (int32_t k = 0; k < b; k++) {
      float *xk = x + (size_t)k * 3 * px;
      if (edges) {
        const uint8_t *e = sg_lgp_data_edges(d, i0 + k);
        for (size_t i = 0; i < px; i++) xk[i] = xk[px + i] = xk[2 * px + i] = e[i] > 127 ? 1.0f : -1.0f;
      } else {
        const uint8_t *im = sg_lgp_data_image(d, i0 + k); /* stays HWC */
        for (size_t i = 0; i < 3 * px; i++) xk[i] = (float)im[i] / 127.5f - 1.0f;
      }
    }
    int64_t shape[4] = {b, 3, S, S}, nhwc[4] = {b, S, S, 3}, perm[4] = {0, 3, 1, 2};
    ts_tensor *xt = NULL, *o[2] = {NULL, NULL};
    if (edges) {
      xt = ts_tensor_from_host(x, TS_FLOAT32, shape, 4, T->device);
    } else {
      ts_tensor *h = ts_tensor_from_host(x, TS_FLOAT32, nhwc, 4, T->device);
      xt = h ? ts_tensor_permute(h, perm, 4) : NULL;
      ts_tensor_free(h);
    }
    int n = xt ? ts_module_forward(sg_model_vae_encoder(T->m), &xt, 1, o, 2) : -1;
    ts_tensor_free(xt);
    int rc = 0;
    if (n < 1) {
      rc = torch_fail(T, "VAE encoder");
    } else if ((size_t)ts_tensor_numel(o[0]) != (size_t)b * T->len) {
      sg_set_err(T->err, T->errlen, "VAE encoder: the latent is not %d x %d x %d", (int)T->lshape[1],
                 (int)T->lshape[2], (int)T->lshape[3]);
      rc = SG_LGP_ERUNTIME;
    } else if (ts_tensor_to_host(o[0], out + (size_t)i0 * T->len, (size_t)b * T->len * sizeof(float))) {
      rc = torch_fail(T, "VAE encoder");
    }
    ts_tensors_free(o, n > 0 ? n : 0);
    if (rc) {
      free(x);
      return rc;
    }
    for (size_t i = (size_t)i0 * T->len; i < (size_t)(i0 + b) * T->len; i++) out[i] *= sf;
    if ((rc = encoded(T, b))) {
      free(x);
      return rc;
    }
  }
  free(x);
  return 0;
}

static int cmp_caption(const void *a, const void *b, void *data) {
  const sg_lgp_data *d = data;
  return strcmp(sg_lgp_data_caption(d, *(const int32_t *)a), sg_lgp_data_caption(d, *(const int32_t *)b));
}

/* Starts P for d: each pair's index among the distinct captions in sorted order (as Python's
 * sorted(set(captions))), their count and the first pair of each, before anything is encoded. */
static int index_captions(trainer *T, const sg_lgp_data *d, prepared *P) {
  memset(P, 0, sizeof *P);
  int32_t N = sg_lgp_data_count(d);
  P->n = N;
  int32_t *order = malloc((size_t)(N ? N : 1) * sizeof *order);
  P->cap_idx = malloc((size_t)(N ? N : 1) * sizeof *P->cap_idx);
  if (!order || !P->cap_idx) {
    free(order);
    return nomem(T);
  }
  for (int32_t i = 0; i < N; i++) order[i] = i;
  qsort_r(order, (size_t)N, sizeof *order, cmp_caption, (void *)d);
  int32_t u = 0;
  for (int32_t k = 0; k < N; k++) {
    if (k && strcmp(sg_lgp_data_caption(d, order[k]), sg_lgp_data_caption(d, order[k - 1]))) u++;
    P->cap_idx[order[k]] = u;
  }
  P->n_ctx = N ? u + 1 : 0;
  int32_t *first = P->first = malloc((size_t)(P->n_ctx ? P->n_ctx : 1) * sizeof *first);
  if (!first) {
    free(order);
    return nomem(T);
  }
  for (int32_t k = 0; k < N; k++) first[P->cap_idx[order[k]]] = order[k];
  free(order);
  return 0;
}

/* Text contexts of the distinct captions that index_captions found. */
static int encode_captions(trainer *T, const sg_lgp_data *d, prepared *P) {
  const int32_t *first = P->first;
  const sg_tokenizer *tok = sg_model_tokenizer(T->m);
  int32_t L = sg_tokenizer_max_length(tok);
  P->ctx = malloc((size_t)P->n_ctx * T->ctx_len * sizeof *P->ctx);
  int64_t *ids = malloc((size_t)CHUNK * (size_t)L * sizeof *ids);
  int32_t *ids32 = malloc((size_t)L * sizeof *ids32);
  int rc = 0;
  if (!P->ctx || !ids || !ids32) rc = nomem(T);
  for (int32_t i0 = 0; !rc && i0 < P->n_ctx; i0 += CHUNK) {
    int32_t b = P->n_ctx - i0 < CHUNK ? P->n_ctx - i0 : CHUNK;
    for (int32_t k = 0; k < b && !rc; k++) {
      const char *c = sg_lgp_data_caption(d, first[i0 + k]);
      if (sg_tokenizer_input_ids(tok, c, strlen(c), ids32, (size_t)L, NULL)) {
        sg_set_err(T->err, T->errlen, "tokenizer failed on caption \"%.80s\"", c);
        rc = SG_LGP_EDATA;
      }
      for (int32_t j = 0; j < L; j++) ids[(size_t)k * L + j] = ids32[j];
    }
    if (rc) break;
    int64_t shape[2] = {b, L};
    ts_tensor *it = ts_tensor_from_host(ids, TS_INT64, shape, 2, T->device), *ctx = NULL;
    int n = it ? ts_module_forward(sg_model_text_encoder(T->m), &it, 1, &ctx, 1) : -1;
    ts_tensor_free(it);
    if (n != 1) {
      rc = torch_fail(T, "text encoder");
    } else if ((size_t)ts_tensor_numel(ctx) != (size_t)b * T->ctx_len) {
      sg_set_err(T->err, T->errlen, "text encoder: the context is not %d x %d", (int)T->info->context_length,
                 (int)T->info->context_dim);
      rc = SG_LGP_ERUNTIME;
    } else if (ts_tensor_to_host(ctx, P->ctx + (size_t)i0 * T->ctx_len, (size_t)b * T->ctx_len * sizeof(float))) {
      rc = torch_fail(T, "text encoder");
    }
    ts_tensor_free(ctx);
    if (!rc) rc = encoded(T, b);
  }
  free(ids), free(ids32);
  return rc;
}

/* Encodes d into P, which index_captions started. */
static int prepare(trainer *T, const sg_lgp_data *d, prepared *P) {
  P->z0 = malloc((size_t)sg_lgp_data_count(d) * T->len * sizeof *P->z0);
  P->target = malloc((size_t)sg_lgp_data_count(d) * T->len * sizeof *P->target);
  if (!P->z0 || !P->target) return nomem(T);
  int rc = encode_rows(T, d, 0, P->z0);
  if (!rc) rc = encode_rows(T, d, 1, P->target);
  if (!rc) rc = encode_captions(T, d, P);
  return rc;
}

/* Host buffers of one batch and its tensors. */
typedef struct {
  int32_t cap;
  int64_t *idx, *t;
  float *noise, *zt, *ctx, *target;
} batchbuf;

static void batch_free(batchbuf *b) {
  free(b->idx), free(b->t), free(b->noise), free(b->zt), free(b->ctx), free(b->target);
  memset(b, 0, sizeof *b);
}

static int batch_alloc(trainer *T, batchbuf *b, int32_t n) {
  b->cap = n;
  b->idx = malloc((size_t)n * sizeof *b->idx);
  b->t = malloc((size_t)n * sizeof *b->t);
  b->noise = malloc((size_t)n * T->len * sizeof *b->noise);
  b->zt = malloc((size_t)n * T->len * sizeof *b->zt);
  b->target = malloc((size_t)n * T->len * sizeof *b->target);
  b->ctx = malloc((size_t)n * T->ctx_len * sizeof *b->ctx);
  return b->idx && b->t && b->noise && b->zt && b->target && b->ctx ? 0 : nomem(T);
}

/* The loss of train_lgp.py's lgp_loss for the batch in b (idx, t, noise filled): z_t, the U-Net's taps without
 * gradients, then an Adam step (opt) or, with opt NULL, the loss alone in the LGP's current mode. */
static int batch_loss(trainer *T, const prepared *P, batchbuf *b, int32_t n, ts_module *lgp, ts_adam *opt,
                      double *loss) {
  /* z_t goes to the U-Net channels-last (N, H, W, C in memory), as in train_lgp.py, where z0 inherits that
   * layout from the permuted images and the U-Net's convolutions then take their channels-last kernels */
  size_t C = (size_t)T->lshape[1], HW = (size_t)T->lshape[2] * T->lshape[3];
  for (int32_t k = 0; k < n; k++) {
    float a = (float)T->abar[b->t[k]], sa = sqrtf(a), sb = sqrtf(1.0f - a);
    const float *z0 = P->z0 + (size_t)b->idx[k] * T->len, *tg = P->target + (size_t)b->idx[k] * T->len;
    const float *nz = b->noise + (size_t)k * T->len;
    float *zt = b->zt + (size_t)k * T->len;
    for (size_t c = 0; c < C; c++)
      for (size_t i = 0; i < HW; i++) {
        float u = sa * z0[c * HW + i], v = sb * nz[c * HW + i];
        zt[i * C + c] = u + v;
      }
    memcpy(b->target + (size_t)k * T->len, tg, T->len * sizeof(float));
    memcpy(b->ctx + (size_t)k * T->ctx_len, P->ctx + (size_t)P->cap_idx[b->idx[k]] * T->ctx_len,
           T->ctx_len * sizeof(float));
  }
  int64_t zs[4] = {n, T->lshape[1], T->lshape[2], T->lshape[3]}, ts[1] = {n};
  int64_t nhwc[4] = {n, T->lshape[2], T->lshape[3], T->lshape[1]}, perm[4] = {0, 3, 1, 2};
  int64_t cs[3] = {n, T->info->context_length, T->info->context_dim};
  ts_tensor *zh = ts_tensor_from_host(b->zt, TS_FLOAT32, nhwc, 4, T->device);
  ts_tensor *z = zh ? ts_tensor_permute(zh, perm, 4) : NULL;
  ts_tensor_free(zh);
  ts_tensor *t = ts_tensor_from_host(b->t, TS_INT64, ts, 1, T->device);
  ts_tensor *c = ts_tensor_from_host(b->ctx, TS_FLOAT32, cs, 3, T->device);
  ts_tensor *tg = ts_tensor_from_host(b->target, TS_FLOAT32, zs, 4, T->device), *outs[MAX_TAPS + 1];
  int rc = 0, n_out = -1;
  if (!z || !t || !c || !tg) {
    rc = torch_fail(T, "tensors");
    goto done;
  }
  n_out = ts_module_forward(sg_model_unet(T->m), (ts_tensor *[]){z, t, c}, 3, outs, MAX_TAPS + 1);
  if (n_out < 0) {
    rc = torch_fail(T, "U-Net");
    goto done;
  }
  if (n_out != T->info->n_taps + 1) {
    sg_set_err(T->err, T->errlen, "U-Net: %d outputs, the manifest has %d taps", n_out, (int)T->info->n_taps);
    rc = SG_LGP_ERUNTIME;
    goto done;
  }
  if (opt ? ts_adam_step(opt, outs + 1, n_out - 1, t, tg, loss) : ts_lgp_loss(lgp, outs + 1, n_out - 1, t, tg, loss))
    rc = torch_fail(T, opt ? "training step" : "held-out loss");
done:
  ts_tensors_free(outs, n_out > 0 ? n_out : 0);
  ts_tensor_free(z), ts_tensor_free(t), ts_tensor_free(c), ts_tensor_free(tg);
  return rc;
}

static int report(trainer *T, sg_lgp_phase phase, int32_t step, double loss, int32_t t) {
  if (!T->p->progress) return 0;
  sg_lgp_progress pr = {phase, step, T->p->steps, loss, t, 0, T->enc_done, T->enc_total};
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  pr.seconds = (double)(ts.tv_sec - T->t0.tv_sec) + (ts.tv_nsec - T->t0.tv_nsec) * 1e-9;
  return T->p->progress(T->p->progress_user, &pr);
}

/* train_lgp.py's held_out(): eval mode, a generator seeded 123, each t in turn, batches of 64. */
static int held_out_loss(trainer *T, const prepared *H, ts_module *lgp, double *out) {
  batchbuf b;
  memset(&b, 0, sizeof b);
  int32_t bn = H->n < EVAL_BATCH ? H->n : EVAL_BATCH;
  ts_rng *g = ts_rng_new(EVAL_SEED);
  int rc = !g ? torch_fail(T, "generator") : batch_alloc(T, &b, bn);
  if (!rc && ts_module_set_train(lgp, 0)) rc = torch_fail(T, "eval mode");
  for (int k = 0; !rc && k < SG_LGP_N_EVAL_T; k++) {
    double tot = 0;
    for (int32_t i0 = 0; !rc && i0 < H->n; i0 += EVAL_BATCH) {
      int32_t n = H->n - i0 < EVAL_BATCH ? H->n - i0 : EVAL_BATCH;
      int64_t shape[4] = {n, T->lshape[1], T->lshape[2], T->lshape[3]};
      for (int32_t j = 0; j < n; j++) b.idx[j] = i0 + j, b.t[j] = EVAL_T[k];
      double l = 0;
      if (ts_rng_randn(g, b.noise, shape, 4)) rc = torch_fail(T, "noise");
      else if (!(rc = batch_loss(T, H, &b, n, lgp, NULL, &l))) tot += l * n;
    }
    if (!rc) {
      out[k] = tot / H->n;
      if (report(T, SG_LGP_PHASE_HELD_OUT, 0, out[k], EVAL_T[k])) {
        sg_set_err(T->err, T->errlen, "cancelled during the held-out report");
        rc = SG_LGP_ECANCEL;
      }
    }
  }
  if (!rc && ts_module_set_train(lgp, 1)) rc = torch_fail(T, "training mode");
  batch_free(&b);
  ts_rng_free(g);
  return rc;
}

/* The settings a checkpoint must share with the run that resumes it. */
static void settings(const trainer *T, int32_t n_train, char *buf, size_t len) {
  const sg_lgp_train_params *p = T->p;
  int o = snprintf(buf, len, "batch %d, lr %.17g, seed %lld, time_dim %d, hidden ", (int)p->batch, p->lr,
                   (long long)p->seed, (int)p->time_dim);
  for (int i = 0; i < p->n_hidden && o > 0 && (size_t)o < len; i++)
    o += snprintf(buf + o, len - (size_t)o, "%s%d", i ? "," : "", (int)p->hidden[i]);
  if (o > 0 && (size_t)o < len)
    snprintf(buf + o, len - (size_t)o, ", pairs %d, image_size %d, tap_channels %d", (int)n_train,
             (int)T->info->image_size, (int)T->info->tap_channels);
}

static int save_checkpoint(trainer *T, const char *ckpt, ts_module *lgp, ts_adam *opt, ts_rng *g, int32_t step,
                           const char *meta) {
  char tmp[4300];
  snprintf(tmp, sizeof tmp, "%s.tmp", ckpt);
  if (ts_train_state_save(tmp, lgp, opt, g, step, meta)) {
    remove(tmp);
    return torch_fail(T, ckpt);
  }
  if (rename(tmp, ckpt)) {
    sg_set_err(T->err, T->errlen, "%s: %s", ckpt, strerror(errno));
    remove(tmp);
    return SG_LGP_EIO;
  }
  report(T, SG_LGP_PHASE_CHECKPOINT, step, NAN, 0);
  return 0;
}

/* Tap names from MODEL_DIR/model.json (a new array), or NULL with a message. */
static json_t *tap_names(trainer *T, const char *model_dir) {
  char path[4096];
  snprintf(path, sizeof path, "%s/model.json", model_dir);
  json_error_t jerr;
  json_t *root = json_load_file(path, 0, &jerr), *names = json_array();
  json_t *taps = json_object_get(root, "taps"), *t;
  size_t i;
  if (!root || !names || !json_is_array(taps)) {
    sg_set_err(T->err, T->errlen, "%s: %s", path, root ? "no taps" : jerr.text);
    json_decref(root), json_decref(names);
    return NULL;
  }
  json_array_foreach(taps, i, t) json_array_append_new(names, json_string(json_string_value(json_object_get(t, "name"))));
  json_decref(root);
  return names;
}

/* lgp.describe() with the "trained" section of this run. */
static json_t *describe(trainer *T, json_t *taps, const sg_lgp_train_params *p, int32_t steps, int32_t n_train,
                        const double *held, int n_held) {
  json_t *d = json_object(), *te = json_object(), *hid = json_array(), *tr = json_object();
  json_object_set_new(d, "input", json_string("U-Net taps in manifest order, each resized to the latent size "
                                              "(bilinear, align_corners false), concatenated on channels, then the "
                                              "time encoding; one MLP evaluation per latent pixel"));
  json_object_set_new(d, "forward", json_string("forward(taps: List[Tensor], t: Tensor[B]) -> Tensor[B, out_channels, "
                                                "H, W]"));
  json_object_set_new(d, "in_channels", json_integer(T->info->tap_channels));
  json_object_set_new(d, "latent_size", json_integer(T->info->latent_size));
  json_object_set(d, "taps", taps);
  json_object_set_new(te, "type", json_string("sinusoidal"));
  json_object_set_new(te, "dim", json_integer(p->time_dim));
  json_object_set_new(te, "max_period", json_integer(10000));
  json_object_set_new(te, "order", json_string("cos,sin"));
  json_object_set_new(d, "time_encoding", te);
  for (int i = 0; i < p->n_hidden; i++) json_array_append_new(hid, json_integer(p->hidden[i]));
  json_object_set_new(d, "hidden", hid);
  json_object_set_new(d, "normalization", json_string("batchnorm (eval mode at inference)"));
  json_object_set_new(d, "out_channels", json_integer(T->info->latent_channels));
  json_object_set_new(d, "target", json_string("VAE encoder mean x scaling_factor of the edge map (edges 1 on 0, 3 "
                                               "channels, mapped to [-1, 1])"));
  char buf[64];
  json_object_set_new(tr, "by", json_string("sketchguide train-lgp"));
  json_object_set_new(tr, "steps", json_integer(steps));
  json_object_set_new(tr, "batch", json_integer(p->batch));
  json_object_set_new(tr, "lr", json_real(p->lr));
  json_object_set_new(tr, "optimizer", json_string("adam"));
  if (p->data_desc) {
    json_object_set_new(tr, "data", json_string(p->data_desc));
  } else {
    snprintf(buf, sizeof buf, "%d pairs", (int)n_train);
    json_object_set_new(tr, "data", json_string(buf));
  }
  snprintf(buf, sizeof buf, "uniform 0..%d", (int)T->info->schedule.num_train_timesteps - 1);
  json_object_set_new(tr, "t", json_string(buf));
  json_object_set_new(tr, "seed", json_integer(p->seed));
  if (n_held) {
    json_t *h = json_object();
    for (int k = 0; k < n_held; k++) {
      char key[16], v[64];
      snprintf(key, sizeof key, "%d", (int)EVAL_T[k]);
      snprintf(v, sizeof v, "%.5f", held[k]); /* round(x, 5) */
      json_object_set_new(h, key, json_real(strtod(v, NULL)));
    }
    json_object_set_new(tr, "held_out_loss", h);
  } else {
    json_object_set_new(tr, "held_out_loss", json_null());
  }
  json_object_set_new(d, "trained", tr);
  return d;
}

/* Sets model.json's "lgp" section to desc plus "file" (atomic rewrite, indent 2 as export.write_manifest). */
static int update_manifest(trainer *T, const char *model_dir, json_t *desc, const char *file) {
  char path[4096];
  snprintf(path, sizeof path, "%s/model.json", model_dir);
  json_error_t jerr;
  json_t *root = json_load_file(path, 0, &jerr);
  if (!root) {
    sg_set_err(T->err, T->errlen, "%s: %s", path, jerr.text);
    return SG_LGP_EIO;
  }
  json_t *sec = json_deep_copy(desc);
  json_object_set_new(sec, "file", json_string(file));
  json_object_set_new(root, "lgp", sec);
  sbuf b = {0};
  sb_json(&b, root, 2, 0);
  sb_str(&b, "\n");
  json_decref(root);
  int rc = 0;
  if (b.oom) {
    rc = nomem(T);
  } else if (write_atomic(path, b.s, b.len)) {
    sg_set_err(T->err, T->errlen, "%s: %s", path, strerror(errno));
    rc = SG_LGP_EIO;
  }
  free(b.s);
  return rc;
}

/* Whether out names MODEL_DIR/lgp.pt (the same directory after resolving links, and the name lgp.pt). */
static int is_model_lgp(const char *model_dir, const char *out) {
  char a[PATH_MAX], b[PATH_MAX], dir[4096];
  const char *slash = strrchr(out, '/');
  const char *base = slash ? slash + 1 : out;
  if (strcmp(base, "lgp.pt")) return 0;
  snprintf(dir, sizeof dir, "%.*s", slash ? (int)(slash - out) + (slash == out) : 1, slash ? out : ".");
  return realpath(model_dir, a) && realpath(dir, b) && !strcmp(a, b);
}

static int validate(const sg_model *m, const char *model_dir, const sg_lgp_data *train, const sg_lgp_data *held,
                    const sg_lgp_train_params *p, char *err, size_t errlen) {
  const sg_model_info *in = sg_model_get_info(m);
#define BAD(...)                           \
  do {                                     \
    sg_set_err(err, errlen, __VA_ARGS__); \
    return SG_LGP_EINVAL;                  \
  } while (0)
  if (!model_dir) BAD("no model directory");
  if (!train) BAD("no training data");
  if (p->steps < 0) BAD("steps must be 0 or more");
  if (p->batch < 1 || p->batch > 4096) BAD("batch must be between 1 and 4096");
  if (!(p->lr > 0 && p->lr < 1)) BAD("lr must be between 0 and 1");
  if (p->seed < 0 || p->seed > INT64_MAX / 7919) BAD("seed must be between 0 and 2^63 / 7919");
  if (p->time_dim < 0 || p->time_dim > 4096) BAD("time_dim must be between 0 and 4096");
  if (p->n_hidden < 0 || p->n_hidden > SG_LGP_MAX_HIDDEN) BAD("n_hidden must be between 0 and %d", SG_LGP_MAX_HIDDEN);
  for (int i = 0; i < p->n_hidden; i++)
    if (p->hidden[i] < 1 || p->hidden[i] > 65536) BAD("hidden sizes must be between 1 and 65536");
  if (p->checkpoint_every < 1) BAD("checkpoint_every must be at least 1");
  if (in->n_taps < 1 || in->n_taps > MAX_TAPS || in->tap_channels < 1) BAD("the model has no usable U-Net taps");
#undef BAD
  if (sg_lgp_data_count(train) == 0) {
    sg_set_err(err, errlen, "the training data hold no pairs");
    return SG_LGP_EDATA;
  }
  for (int k = 0; k < 2; k++) {
    const sg_lgp_data *d = k ? held : train;
    if (d && sg_lgp_data_image_size(d) != in->image_size) {
      sg_set_err(err, errlen, "the %s data are %dx%d images, the model's image size is %d", k ? "held-out" : "training",
                 (int)sg_lgp_data_image_size(d), (int)sg_lgp_data_image_size(d), (int)in->image_size);
      return SG_LGP_EDATA;
    }
  }
  return 0;
}

int sg_lgp_train(sg_model *m, const char *model_dir, const sg_lgp_data *train, const sg_lgp_data *held,
                 sg_lgp_train_params p, sg_lgp_train_result *res, char *err, size_t errlen) {
  sg_lgp_train_result r;
  memset(&r, 0, sizeof r);
  r.first_loss = r.last_loss = NAN;
  if (res) *res = r;
  if (err && errlen) *err = 0;
  if (!m) {
    sg_set_err(err, errlen, "no model");
    return SG_LGP_EINVAL;
  }
  int rc = validate(m, model_dir, train, held, &p, err, errlen);
  if (rc) return rc;
  trainer T;
  memset(&T, 0, sizeof T);
  clock_gettime(CLOCK_MONOTONIC, &T.t0);
  T.m = m;
  T.info = sg_model_get_info(m);
  T.device = T.info->device;
  T.err = err;
  T.errlen = errlen;
  T.p = &p;
  T.len = (size_t)T.info->latent_channels * T.info->latent_size * T.info->latent_size;
  T.ctx_len = (size_t)T.info->context_length * T.info->context_dim;
  int64_t ls[4] = {1, T.info->latent_channels, T.info->latent_size, T.info->latent_size};
  memcpy(T.lshape, ls, sizeof ls);
  int32_t n_train_t = T.info->schedule.num_train_timesteps;

  char ckpt[4200], meta[512], tmp_out[4200];
  if (p.out) snprintf(r.out, sizeof r.out, "%s", p.out);
  else snprintf(r.out, sizeof r.out, "%s/lgp.pt", model_dir);
  if (p.checkpoint) snprintf(ckpt, sizeof ckpt, "%s", p.checkpoint);
  else snprintf(ckpt, sizeof ckpt, "%s.ckpt", r.out);
  settings(&T, sg_lgp_data_count(train), meta, sizeof meta);

  prepared P, H;
  memset(&P, 0, sizeof P);
  memset(&H, 0, sizeof H);
  batchbuf b;
  memset(&b, 0, sizeof b);
  ts_module *lgp = NULL;
  ts_adam *opt = NULL;
  ts_rng *g = NULL;
  json_t *taps = NULL, *desc = NULL;
  double *run = NULL;
  char *old_meta = NULL;
  int64_t step = 0;

  if (!(taps = tap_names(&T, model_dir))) {
    rc = SG_LGP_EIO;
    goto done;
  }
  if ((int32_t)json_array_size(taps) != T.info->n_taps) {
    sg_set_err(err, errlen, "%s/model.json: %zu tap names for %d taps", model_dir, json_array_size(taps),
               (int)T.info->n_taps);
    rc = SG_LGP_EINVAL;
    goto done;
  }
  T.abar = malloc((size_t)n_train_t * sizeof *T.abar);
  run = malloc(100 * sizeof *run);
  if (!T.abar || !run) {
    rc = nomem(&T);
    goto done;
  }
  if (sg_schedule_alphas_cumprod(T.info->schedule, T.abar, (size_t)n_train_t)) {
    sg_set_err(err, errlen, "bad noise schedule");
    rc = SG_LGP_EINVAL;
    goto done;
  }
  if (*ckpt && p.resume && access(ckpt, F_OK) == 0) { /* check before the long preparation */
    if (!(old_meta = ts_train_state_meta(ckpt))) {
      rc = torch_fail(&T, ckpt);
      goto done;
    }
    if (strcmp(old_meta, meta)) {
      sg_set_err(err, errlen, "%s was written with other settings (%s; now %s): use the same ones, or start afresh",
                 ckpt, old_meta, meta);
      rc = SG_LGP_EINVAL;
      goto done;
    }
  }

  /* prepare: every input counted first, so that each report has a total to show progress against */
  double t_prep = now_s();
  if ((rc = index_captions(&T, train, &P)) || (held && sg_lgp_data_count(held) && (rc = index_captions(&T, held, &H)))) goto done;
  T.enc_total = 2 * P.n + P.n_ctx + 2 * H.n + H.n_ctx;
  if (report(&T, SG_LGP_PHASE_PREPARE, 0, NAN, 0)) {
    sg_set_err(err, errlen, "cancelled before training");
    rc = SG_LGP_ECANCEL;
    goto done;
  }
  if ((rc = prepare(&T, train, &P)) || (held && sg_lgp_data_count(held) && (rc = prepare(&T, held, &H)))) goto done;
  r.prepare_seconds = now_s() - t_prep;

  /* the predictor, its optimiser and the batch generator, fresh or from the checkpoint */
  int64_t hidden[SG_LGP_MAX_HIDDEN];
  for (int i = 0; i < p.n_hidden; i++) hidden[i] = p.hidden[i];
  lgp = ts_lgp_create(T.info->tap_channels, T.info->latent_size, p.time_dim, hidden, p.n_hidden,
                      T.info->latent_channels, (uint64_t)p.seed, T.device);
  opt = lgp ? ts_adam_new(lgp, p.lr) : NULL;
  g = opt ? ts_rng_new((uint64_t)p.seed * 7919) : NULL;
  if (!g) {
    rc = torch_fail(&T, "LGP");
    goto done;
  }
  if (old_meta) {
    if (ts_train_state_load(ckpt, lgp, opt, g, &step)) {
      rc = torch_fail(&T, ckpt);
      goto done;
    }
    r.resumed_at = (int32_t)step;
  }
  if ((rc = batch_alloc(&T, &b, p.batch))) goto done;

  /* train */
  double t_train = now_s(), run_sum = 0;
  int32_t done_here = 0;
  int64_t zshape[4] = {p.batch, T.lshape[1], T.lshape[2], T.lshape[3]};
  while (step < p.steps) {
    double loss = 0;
    if (ts_rng_randint(g, 0, P.n, b.idx, p.batch) || ts_rng_randint(g, 0, n_train_t, b.t, p.batch) ||
        ts_rng_randn(g, b.noise, zshape, 4)) {
      rc = torch_fail(&T, "batch");
      goto done;
    }
    if ((rc = batch_loss(&T, &P, &b, p.batch, lgp, opt, &loss))) goto done;
    step++;
    if (!done_here) r.first_loss = loss;
    run_sum += loss - (done_here >= 100 ? run[done_here % 100] : 0);
    run[done_here % 100] = loss;
    done_here++;
    r.last_loss = run_sum / (done_here < 100 ? done_here : 100);
    int stop = report(&T, SG_LGP_PHASE_STEP, (int32_t)step, loss, 0);
    if (*ckpt && (step % p.checkpoint_every == 0 || step == p.steps || stop) &&
        (rc = save_checkpoint(&T, ckpt, lgp, opt, g, (int32_t)step, meta)))
      goto done;
    if (stop) {
      sg_set_err(err, errlen, "cancelled at step %lld%s", (long long)step, *ckpt ? " (checkpoint written)" : "");
      rc = SG_LGP_ECANCEL;
      goto done;
    }
  }
  r.train_seconds = now_s() - t_train;
  r.seconds_per_step = done_here ? r.train_seconds / done_here : 0;
  r.step = (int32_t)step;

  /* held-out report, description, files */
  if (H.n) {
    if ((rc = held_out_loss(&T, &H, lgp, r.held_out_loss))) goto done;
    r.n_held_out = SG_LGP_N_EVAL_T;
    memcpy(r.held_out_t, EVAL_T, sizeof EVAL_T);
  }
  desc = describe(&T, taps, &p, (int32_t)step, sg_lgp_data_count(train), r.held_out_loss, r.n_held_out);
  sbuf js = {0};
  sb_json(&js, desc, 0, 0);
  if (js.oom || !desc) {
    free(js.s);
    rc = nomem(&T);
    goto done;
  }
  snprintf(tmp_out, sizeof tmp_out, "%s.tmp", r.out);
  if (ts_module_set_train(lgp, 0) || ts_module_save(lgp, tmp_out, "lgp.json", js.s)) {
    free(js.s);
    remove(tmp_out);
    rc = torch_fail(&T, r.out);
    goto done;
  }
  free(js.s);
  if (rename(tmp_out, r.out)) {
    sg_set_err(err, errlen, "%s: %s", r.out, strerror(errno));
    remove(tmp_out);
    rc = SG_LGP_EIO;
    goto done;
  }
  report(&T, SG_LGP_PHASE_SAVED, (int32_t)step, NAN, 0);
  if (p.update_manifest && is_model_lgp(model_dir, r.out)) {
    if ((rc = update_manifest(&T, model_dir, desc, "lgp.pt"))) goto done;
    r.manifest_updated = 1;
  }

done:
  r.step = (int32_t)step;
  if (res) *res = r;
  batch_free(&b);
  prepared_free(&P), prepared_free(&H);
  ts_rng_free(g);
  ts_adam_free(opt);
  ts_module_free(lgp);
  json_decref(taps), json_decref(desc);
  free(T.abar), free(run), free(old_meta);
  return rc;
}
