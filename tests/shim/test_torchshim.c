/* Tests of shim/torchshim: plain C over libtorch (this file also proves the header is valid C). Needs a model
 * directory (argument 1, the bundled model) and the random-number reference from Python (argument 2, written on this
 * machine by gen_randn.py). */
#include <float.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "torchshim.h"

#include "check.h"

static char path_buf[4096];
static const char *in_dir(const char *dir, const char *file) {
  snprintf(path_buf, sizeof path_buf, "%s/%s", dir, file);
  return path_buf;
}

/* Python's torch.randn with a seeded generator, reproduced value for value. */
static void test_randn(const char *ref_path) {
  json_error_t jerr;
  json_t *root = json_load_file(ref_path, 0, &jerr);
  CHECK(root, "%s: %s", ref_path, jerr.text);
  size_t i;
  json_t *v;
  json_array_foreach(root, i, v) {
    json_t *shape_j = json_object_get(v, "shape");
    int ndim = (int)json_array_size(shape_j);
    int64_t shape[8], n = 1;
    for (int d = 0; d < ndim; d++) n *= shape[d] = json_integer_value(json_array_get(shape_j, d));
    float *a = malloc(n * sizeof *a), *b = malloc(n * sizeof *b);
    ts_rng *g = ts_rng_new((uint64_t)json_integer_value(json_object_get(v, "seed")));
    CHECK(g && ts_rng_randn(g, a, shape, ndim) == 0 && ts_rng_randn(g, b, shape, ndim) == 0, "randn: %s",
          ts_last_error());
    double sum = 0;
    for (int64_t k = 0; k < n; k++) sum += a[k];
    CHECK(fabs(sum - json_real_value(json_object_get(v, "sum"))) < 1e-3, "randn entry %zu: sum %f", i, sum);
    for (int k = 0; k < 8 && k < n; k++) {
      CHECK(a[k] == (float)json_real_value(json_array_get(json_object_get(v, "first"), k)), "entry %zu first[%d]", i, k);
      CHECK(b[k] == (float)json_real_value(json_array_get(json_object_get(v, "second_first"), k)), "entry %zu 2nd[%d]",
            i, k);
    }
    json_t *last = json_object_get(v, "last");
    int64_t m = (int64_t)json_array_size(last);
    CHECK(m == (n < 8 ? n : 8), "entry %zu: %lld last values", i, (long long)m);
    for (int64_t k = 0; k < m; k++)
      CHECK(a[n - m + k] == (float)json_real_value(json_array_get(last, (size_t)k)), "entry %zu last[%lld]", i,
            (long long)k);
    ts_rng_free(g);
    free(a);
    free(b);
  }
  json_decref(root);
}

static void test_errors(const char *dir) {
  CHECK(ts_module_load("/nonexistent.pt", "cpu", TS_FLOAT32, 0) == NULL && strlen(ts_last_error()) > 0,
        "missing file loaded");
  CHECK(ts_module_load(in_dir(dir, "unet.pt"), "tpu", TS_FLOAT32, 0) == NULL && strstr(ts_last_error(), "tpu"),
        "bad device: %s", ts_last_error());
  CHECK(ts_device_ok("cpu") == 1 && ts_device_ok("cuda:7") == (ts_cuda_device_count() > 7), "device check");
  CHECK(ts_module_load(in_dir(dir, "model.json"), "cpu", TS_FLOAT32, 0) == NULL, "a JSON file loaded as a module");
  float x[4] = {1, 2, 3, 4};
  int64_t shape[2] = {2, 2};
  ts_tensor *t = ts_tensor_from_host(x, TS_FLOAT32, shape, 2, "cpu");
  CHECK(t && ts_tensor_numel(t) == 4 && ts_tensor_ndim(t) == 2 && ts_tensor_dim(t, 1) == 2, "tensor shape");
  float y[4];
  CHECK(ts_tensor_to_host(t, y, sizeof y) == 0 && y[3] == 4, "round trip");
  CHECK(ts_tensor_to_host(t, y, 3 * sizeof(float)) == TS_ERROR && strstr(ts_last_error(), "bytes"), "size checked");
  int64_t neg[1] = {-3};
  CHECK(ts_tensor_from_host(x, TS_FLOAT32, neg, 1, "cpu") == NULL, "negative shape accepted");
  ts_module *te = ts_module_load(in_dir(dir, "text_encoder.pt"), "cpu", TS_FLOAT32, 0);
  ts_tensor *out[4];
  CHECK(te && ts_module_forward(te, &t, 1, out, 4) == TS_ERROR && strlen(ts_last_error()) > 0,
        "float ids accepted by the text encoder");
  CHECK(ts_module_forward(te, NULL, 0, out, 4) < 0, "missing inputs accepted");
  CHECK(ts_adam_new(te, 1e-3) == NULL, "Adam on a frozen module");
  ts_module_free(te);
  ts_tensor_free(t);
  CHECK(ts_set_threads(0) < 0 && ts_set_threads(2) == 0, "thread count");
}

/* The U-Net's outputs, the LGP and the guidance gradient checked by finite differences. */
static void test_model(const char *dir) {
  json_error_t jerr;
  json_t *man = json_load_file(in_dir(dir, "model.json"), 0, &jerr);
  CHECK(man, "model.json: %s", jerr.text);
  if (!man) return;
  int64_t ls = json_integer_value(json_object_get(man, "latent_size"));
  int64_t cd = json_integer_value(json_object_get(man, "context_dim"));
  size_t ntaps = json_array_size(json_object_get(man, "taps"));
  ts_module *te = ts_module_load(in_dir(dir, "text_encoder.pt"), "cpu", TS_FLOAT32, 0);
  ts_module *unet = ts_module_load(in_dir(dir, "unet.pt"), "cpu", TS_FLOAT32, 0);
  ts_module *lgp = ts_module_load(in_dir(dir, "lgp.pt"), "cpu", TS_FLOAT32, 0);
  CHECK(te && unet && lgp, "load: %s", ts_last_error());
  char *desc = ts_archive_extra(in_dir(dir, "lgp.pt"), "lgp.json");
  CHECK(desc && strstr(desc, "time_encoding"), "lgp.json inside the LGP archive");
  free(desc);
  int64_t ids[77] = {0};
  int64_t ishape[2] = {1, 77};
  ts_tensor *idt = ts_tensor_from_host(ids, TS_INT64, ishape, 2, "cpu"), *ctx;
  CHECK(ts_module_forward(te, &idt, 1, &ctx, 1) == 1 && ts_tensor_dim(ctx, 2) == cd, "context");
  int64_t zshape[4] = {1, 4, ls, ls}, one = 1;
  size_t nz = (size_t)(4 * ls * ls);
  float *z = malloc(nz * sizeof *z), *v = malloc(nz * sizeof *v), *gr = malloc(nz * sizeof *gr);
  ts_rng *rng = ts_rng_new(7);
  ts_rng_randn(rng, z, zshape, 4);
  ts_rng_randn(rng, v, zshape, 4);
  int64_t tval = 501;
  ts_tensor *zt = ts_tensor_from_host(z, TS_FLOAT32, zshape, 4, "cpu");
  ts_tensor *tt = ts_tensor_from_host(&tval, TS_INT64, &one, 1, "cpu");
  ts_tensor *outs[32];
  int n = ts_module_forward(unet, (ts_tensor *[]){zt, tt, ctx}, 3, outs, 32);
  CHECK(n == (int)ntaps + 1, "U-Net outputs %d, want %zu (%s)", n, ntaps + 1, ts_last_error());
  CHECK(ts_module_forward(unet, (ts_tensor *[]){zt, tt, ctx}, 3, outs + n, 2) == TS_ETOOMANY, "too many outputs");
  /* target: the LGP's own prediction at another latent, so the loss is not trivially zero */
  ts_tensor *pred = ts_lgp_forward(lgp, outs + 1, n - 1, tt);
  CHECK(pred && ts_tensor_dim(pred, 1) == 4 && ts_tensor_dim(pred, 2) == ls, "LGP prediction");
  float *target = calloc(nz, sizeof *target);
  ts_tensor *tg = ts_tensor_from_host(target, TS_FLOAT32, zshape, 4, "cpu"), *eps, *grad;
  double loss = 0, lp = 0, lm = 0;
  CHECK(ts_guidance_grad(unet, lgp, zt, tt, ctx, tg, &eps, &grad, &loss) == 0 && loss > 0, "grad: %s", ts_last_error());
  /* eps equals the no-grad forward's */
  float *e1 = malloc(nz * sizeof *e1), *e2 = malloc(nz * sizeof *e2);
  ts_tensor_to_host(eps, e1, nz * sizeof *e1);
  ts_tensor_to_host(outs[0], e2, nz * sizeof *e2);
  double de = 0;
  for (size_t i = 0; i < nz; i++) de = fmax(de, fabs(e1[i] - e2[i]));
  CHECK(de < 1e-5, "eps with and without gradients differ by %g", de);
  ts_tensor_to_host(grad, gr, nz * sizeof *gr);
  /* directional derivative against a central difference */
  double h = 1e-2, dot = 0, vn = 0;
  for (size_t i = 0; i < nz; i++) vn += (double)v[i] * v[i];
  vn = sqrt(vn);
  float *zp = malloc(nz * sizeof *zp);
  for (int s = -1; s <= 1; s += 2) {
    for (size_t i = 0; i < nz; i++) zp[i] = z[i] + (float)(s * h * v[i] / vn);
    ts_tensor *zpt = ts_tensor_from_host(zp, TS_FLOAT32, zshape, 4, "cpu"), *e, *g;
    ts_guidance_grad(unet, lgp, zpt, tt, ctx, tg, &e, &g, s < 0 ? &lm : &lp);
    ts_tensor_free(zpt), ts_tensor_free(e), ts_tensor_free(g);
  }
  for (size_t i = 0; i < nz; i++) dot += (double)gr[i] * v[i] / vn;
  double fd = (lp - lm) / (2 * h);
  CHECK(fabs(fd - dot) <= 0.05 * fabs(dot) + 1e-3 * loss, "gradient %g, finite difference %g", dot, fd);
  printf("guidance gradient: directional %.6g, finite difference %.6g, loss %.6g\n", dot, fd, loss);

  /* Adam on a trainable copy of the LGP lowers the loss on a fixed batch, and the module saves */
  ts_module *tl = ts_module_load(in_dir(dir, "lgp.pt"), "cpu", TS_FLOAT32, 1);
  ts_adam *opt = ts_adam_new(tl, 1e-3);
  double first = 0, last = 0;
  for (int s = 0; s < 20; s++) CHECK(ts_adam_step(opt, outs + 1, n - 1, tt, tg, s ? &last : &first) == 0, "step");
  CHECK(last < first, "Adam: loss %g -> %g", first, last);
  const char *saved = "/tmp/sg_test_lgp.pt";
  CHECK(ts_module_set_train(tl, 0) == 0 && ts_module_save(tl, saved, "lgp.json", "{\"x\": 1}") == 0, "save");
  desc = ts_archive_extra(saved, "lgp.json");
  CHECK(desc && strcmp(desc, "{\"x\": 1}") == 0, "saved extra file");
  free(desc);
  remove(saved);
  ts_adam_free(opt);
  ts_module_free(tl);

  ts_tensors_free(outs, n);
  ts_tensor_free(pred), ts_tensor_free(eps), ts_tensor_free(grad), ts_tensor_free(tg), ts_tensor_free(zt);
  ts_tensor_free(tt), ts_tensor_free(idt), ts_tensor_free(ctx);
  ts_rng_free(rng);
  free(z), free(v), free(gr), free(zp), free(target), free(e1), free(e2);
  ts_module_free(te), ts_module_free(unet), ts_module_free(lgp);
  json_decref(man);
}

/* The guidance move: per image, z_prev -= min(beta ||z - z_prev||, cap) / ||g|| g; a zero gradient moves nothing.
 * Image 1's cap binds: its push's norm is the cap. */
static void test_guidance_move(void) {
  enum { N = 3, L = 37 };
  float z[N * L], zp[N * L], z0[N * L], g[N * L], want[N * L], beta[N] = {1.6f, 0.5f, 2.0f};
  float cap[N] = {FLT_MAX, 0.005f, FLT_MAX};
  for (int i = 0; i < N * L; i++) {
    z[i] = sinf(0.37f * i);
    zp[i] = z0[i] = z[i] + 0.01f * cosf(1.3f * i);
    g[i] = i / L == 2 ? 0.0f : cosf(0.11f * i * i);
  }
  for (int k = 0; k < N; k++) {
    double move = 0, gn = 0;
    for (int j = 0; j < L; j++) {
      double d = (double)z[k * L + j] - zp[k * L + j];
      move += d * d;
      gn += (double)g[k * L + j] * g[k * L + j];
    }
    double alpha = gn > 0 ? fmin(beta[k] * sqrt(move), cap[k]) / sqrt(gn) : 0;
    if (k == 1) CHECK(beta[k] * sqrt(move) > 2 * cap[k], "the cap of image 1 does not bind");
    for (int j = 0; j < L; j++) want[k * L + j] = (float)(zp[k * L + j] - alpha * g[k * L + j]);
  }
  CHECK(ts_guidance_move(zp, z, g, beta, cap, N, L) == 0, "guidance move: %s", ts_last_error());
  double worst = 0, push = 0;
  for (int i = 0; i < N * L; i++) worst = fmax(worst, fabs(zp[i] - want[i]));
  for (int j = 0; j < L; j++) push += ((double)zp[L + j] - z0[L + j]) * ((double)zp[L + j] - z0[L + j]);
  CHECK(worst < 1e-6, "guidance move differs by %g", worst);
  CHECK(fabs(sqrt(push) - cap[1]) < 1e-6, "capped push's norm %g, cap %g", sqrt(push), cap[1]);
  CHECK(ts_guidance_move(NULL, z, g, beta, cap, N, L) == TS_ERROR, "guidance move without output");
  CHECK(ts_guidance_move(zp, z, g, beta, NULL, N, L) == TS_ERROR, "guidance move without caps");
}

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: %s MODEL_DIR RANDN.json\n", argv[0]);
    return 2;
  }
  CHECK(ts_set_threads(2) == 0, "threads");
  test_randn(argv[2]);
  test_guidance_move();
  FILE *f = fopen(in_dir(argv[1], "lgp.pt"), "rb");
  if (!f) {
    printf("%s has no LGP: model tests skipped\n", argv[1]);
    return failures ? 1 : 77;
  }
  fclose(f);
  test_errors(argv[1]);
  test_model(argv[1]);
  printf("%d failed\n", failures);
  return failures ? 1 : 0;
}
