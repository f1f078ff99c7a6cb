/* Tests of the shim's LGP construction and resumable training state: shapes, seeding, errors, and training that
 * resumes from a saved state exactly as if never interrupted. With --write or --randint it is also the C side of
 * tests/shim/check_lgp_create.py, which compares its modules and random numbers with Python's. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "torchshim.h"

#include "check.h"

#define B 3
#define LS 6
static const int64_t hidden[2] = {16, 8};

/* Two taps of 5 and 7 channels at 6x6 and 3x3, and timesteps, drawn from g. */
typedef struct {
  ts_tensor *taps[2], *t, *target;
} batch;

static int batch_new(batch *b, ts_rng *g) {
  int64_t s0[4] = {B, 5, LS, LS}, s1[4] = {B, 7, LS / 2, LS / 2}, st[4] = {B, 4, LS, LS}, ts[B], one = B;
  float x0[B * 5 * LS * LS], x1[B * 7 * LS * LS / 4], tg[B * 4 * LS * LS];
  if (ts_rng_randn(g, x0, s0, 4) || ts_rng_randn(g, x1, s1, 4) || ts_rng_randn(g, tg, st, 4) ||
      ts_rng_randint(g, 0, 1000, ts, B))
    return -1;
  b->taps[0] = ts_tensor_from_host(x0, TS_FLOAT32, s0, 4, "cpu");
  b->taps[1] = ts_tensor_from_host(x1, TS_FLOAT32, s1, 4, "cpu");
  b->target = ts_tensor_from_host(tg, TS_FLOAT32, st, 4, "cpu");
  b->t = ts_tensor_from_host(ts, TS_INT64, &one, 1, "cpu");
  return b->taps[0] && b->taps[1] && b->target && b->t ? 0 : -1;
}

static void batch_free(batch *b) {
  ts_tensors_free(b->taps, 2);
  ts_tensor_free(b->t), ts_tensor_free(b->target);
}

/* The module's eval-mode prediction on a fixed batch (seed 99), into out (B*4*LS*LS floats). */
static int probe(ts_module *m, float *out) {
  ts_rng *g = ts_rng_new(99);
  batch b;
  int rc = batch_new(&b, g);
  ts_tensor *p = NULL;
  if (!rc) rc = ts_module_set_train(m, 0);
  if (!rc) p = ts_lgp_forward(m, b.taps, 2, b.t);
  if (!p || ts_tensor_to_host(p, out, B * 4 * LS * LS * sizeof(float))) rc = -1;
  ts_tensor_free(p);
  batch_free(&b);
  ts_rng_free(g);
  return rc;
}

static ts_module *create(uint64_t seed) { return ts_lgp_create(12, LS, 8, hidden, 2, 4, seed, "cpu"); }

static void test_create(void) {
  ts_module *a = create(3), *b = create(3), *c = create(4);
  CHECK(a && b && c, "create: %s", ts_last_error());
  if (!a || !b || !c) return;
  static float pa[B * 4 * LS * LS], pb[B * 4 * LS * LS], pc[B * 4 * LS * LS];
  CHECK(probe(a, pa) == 0 && probe(b, pb) == 0 && probe(c, pc) == 0, "forward: %s", ts_last_error());
  CHECK(memcmp(pa, pb, sizeof pa) == 0, "the same seed gives another LGP");
  CHECK(memcmp(pa, pc, sizeof pa) != 0, "another seed gives the same LGP");
  /* shape, and a 0-dim t broadcast to the batch */
  ts_rng *g = ts_rng_new(5);
  batch bt;
  CHECK(batch_new(&bt, g) == 0, "batch");
  int64_t t0 = 500;
  ts_tensor *ts = ts_tensor_from_host(&t0, TS_INT64, NULL, 0, "cpu");
  ts_tensor *p = ts_lgp_forward(a, bt.taps, 2, ts);
  CHECK(p && ts_tensor_ndim(p) == 4 && ts_tensor_dim(p, 0) == B && ts_tensor_dim(p, 1) == 4 &&
            ts_tensor_dim(p, 2) == LS && ts_tensor_dim(p, 3) == LS,
        "prediction shape (%s)", ts_last_error());
  double l1 = 0, l2 = 0;
  CHECK(ts_lgp_loss(a, bt.taps, 2, bt.t, bt.target, &l1) == 0 && l1 > 0, "loss: %s", ts_last_error());
  CHECK(ts_lgp_loss(a, bt.taps, 2, bt.t, bt.target, &l2) == 0 && l1 == l2, "eval loss changes: %g %g", l1, l2);
  CHECK(ts_lgp_loss(a, bt.taps, 1, bt.t, bt.target, &l2) < 0 && strlen(ts_last_error()) > 0, "missing tap accepted");
  char path[] = "/tmp/sg_lgp_create_XXXXXX";
  int fd = mkstemp(path);
  CHECK(fd >= 0, "temp file");
  close(fd);
  CHECK(ts_module_save(a, path, "lgp.json", "{}") == 0, "save: %s", ts_last_error());
  ts_module *r = ts_module_load(path, "cpu", TS_FLOAT32, 0);
  static float pr[B * 4 * LS * LS];
  CHECK(r && probe(r, pr) == 0 && memcmp(pa, pr, sizeof pa) == 0, "saved and loaded LGP differs (%s)", ts_last_error());
  remove(path);
  ts_module_free(r);
  ts_tensor_free(p), ts_tensor_free(ts);
  batch_free(&bt);
  ts_rng_free(g);
  ts_module_free(a), ts_module_free(b), ts_module_free(c);
}

static void test_errors(void) {
  CHECK(ts_lgp_create(0, LS, 8, hidden, 2, 4, 0, "cpu") == NULL && strstr(ts_last_error(), "shape"),
        "0 input channels accepted");
  int64_t bad[2] = {16, 0};
  CHECK(ts_lgp_create(12, LS, 8, bad, 2, 4, 0, "cpu") == NULL, "hidden size 0 accepted");
  CHECK(ts_lgp_create(12, LS, 8, NULL, 2, 4, 0, "cpu") == NULL, "NULL hidden sizes accepted");
  CHECK(ts_lgp_create(12, LS, 8, hidden, 2, 4, 0, "tpu") == NULL && strstr(ts_last_error(), "tpu"), "bad device");
  ts_module *plain = ts_lgp_create(12, LS, 7, NULL, 0, 4, 1, "cpu");
  CHECK(plain != NULL, "no hidden layers, odd time_dim: %s", ts_last_error());
  ts_module_free(plain);
  ts_rng *g = ts_rng_new(1);
  int64_t v[4];
  CHECK(ts_rng_randint(g, 5, 5, v, 4) < 0 && ts_rng_randint(g, 0, 3, NULL, 4) < 0, "bad randint accepted");
  CHECK(ts_rng_randint(g, -2, 3, v, 4) == 0 && v[0] >= -2 && v[0] < 3 && v[3] >= -2 && v[3] < 3, "randint range");
  ts_rng_free(g);
}

/* Runs steps [from, to) of a training loop whose batches come from g; returns 0 or -1. */
static int train(ts_adam *opt, ts_rng *g, int from, int to) {
  for (int s = from; s < to; s++) {
    batch b;
    double loss;
    int rc = batch_new(&b, g);
    if (!rc) rc = ts_adam_step(opt, b.taps, 2, b.t, b.target, &loss);
    batch_free(&b);
    if (rc) return -1;
  }
  return 0;
}

/* N steps straight and N/2 + save + load into fresh objects + N/2 give the same module, bit for bit. */
static void test_resume(void) {
  enum { N = 12 };
  char path[] = "/tmp/sg_lgp_state_XXXXXX";
  int fd = mkstemp(path);
  CHECK(fd >= 0, "temp file");
  close(fd);
  static float straight[B * 4 * LS * LS], resumed[B * 4 * LS * LS], before[B * 4 * LS * LS];
  ts_module *m = create(7);
  ts_adam *opt = ts_adam_new(m, 1e-2);
  ts_rng *g = ts_rng_new(11);
  CHECK(m && opt && g, "setup: %s", ts_last_error());
  CHECK(probe(m, before) == 0 && train(opt, g, 0, N) == 0 && probe(m, straight) == 0, "train: %s", ts_last_error());
  CHECK(memcmp(before, straight, sizeof before) != 0, "training changed nothing");
  ts_adam_free(opt), ts_module_free(m), ts_rng_free(g);

  m = create(7), opt = ts_adam_new(m, 1e-2), g = ts_rng_new(11);
  CHECK(train(opt, g, 0, N / 2) == 0, "first half: %s", ts_last_error());
  CHECK(ts_train_state_save(path, m, opt, g, N / 2, "{\"batch\": 3}") == 0, "save state: %s", ts_last_error());
  char *meta = ts_train_state_meta(path);
  CHECK(meta && !strcmp(meta, "{\"batch\": 3}"), "meta: %s", meta ? meta : ts_last_error());
  free(meta);
  ts_adam_free(opt), ts_module_free(m), ts_rng_free(g);

  m = create(8), opt = ts_adam_new(m, 1e-2), g = ts_rng_new(12); /* other weights and numbers, all replaced */
  int64_t step = -1;
  CHECK(ts_train_state_load(path, m, opt, g, &step) == 0 && step == N / 2, "load state: %s", ts_last_error());
  CHECK(train(opt, g, N / 2, N) == 0 && probe(m, resumed) == 0, "second half: %s", ts_last_error());
  CHECK(memcmp(straight, resumed, sizeof straight) == 0, "resumed training differs from uninterrupted training");

  /* mismatches */
  ts_module *other = ts_lgp_create(12, LS, 8, hidden, 1, 4, 0, "cpu");
  ts_adam *oopt = ts_adam_new(other, 1e-2);
  CHECK(ts_train_state_load(path, other, oopt, NULL, NULL) < 0, "state loaded into another architecture");
  CHECK(ts_train_state_load("/nonexistent/state", m, opt, g, NULL) < 0 && strlen(ts_last_error()) > 0,
        "missing state file");
  CHECK(ts_train_state_save(path, m, oopt, g, 0, NULL) < 0, "optimiser of another module accepted");
  CHECK(ts_module_save(m, path, NULL, NULL) == 0 && ts_train_state_load(path, m, opt, g, NULL) < 0 &&
            strstr(ts_last_error(), "not a training state"),
        "a module file read as a training state: %s", ts_last_error());
  CHECK(ts_train_state_meta(path) == NULL && ts_train_state_meta("/nonexistent/state") == NULL, "meta of a non-state");
  remove(path);
  ts_adam_free(oopt), ts_module_free(other);
  ts_adam_free(opt), ts_module_free(m), ts_rng_free(g);
}

/* --write OUT.pt SEED IN LATENT TIME_DIM OUT_CH [H1,H2,...]: creates and saves an LGP (training mode).
 * --randint SEED LOW HIGH N: prints torch.randint's numbers. */
static int tool(int argc, char **argv) {
  if (!strcmp(argv[1], "--write") && argc >= 8) {
    int64_t h[16];
    int nh = 0;
    for (char *s = argc > 8 ? argv[8] : NULL, *tok; s && (tok = strsep(&s, ",")) && nh < 16;)
      if (*tok) h[nh++] = atoll(tok);
    ts_module *m = ts_lgp_create(atoll(argv[4]), atoll(argv[5]), atoll(argv[6]), h, nh, atoll(argv[7]),
                                 strtoull(argv[3], NULL, 10), "cpu");
    if (!m || ts_module_save(m, argv[2], NULL, NULL)) {
      fprintf(stderr, "%s\n", ts_last_error());
      return 1;
    }
    ts_module_free(m);
    return 0;
  }
  if (!strcmp(argv[1], "--randint") && argc == 6) {
    int64_t n = atoll(argv[5]), *v = malloc((size_t)(n > 0 ? n : 1) * sizeof *v);
    ts_rng *g = ts_rng_new(strtoull(argv[2], NULL, 10));
    if (!v || !g || ts_rng_randint(g, atoll(argv[3]), atoll(argv[4]), v, n)) {
      fprintf(stderr, "%s\n", ts_last_error());
      return 1;
    }
    for (int64_t i = 0; i < n; i++) printf("%lld\n", (long long)v[i]);
    free(v);
    ts_rng_free(g);
    return 0;
  }
  fprintf(stderr, "usage: %s [--write OUT.pt SEED IN LATENT TIME_DIM OUT [H,...] | --randint SEED LOW HIGH N]\n",
          argv[0]);
  return 2;
}

int main(int argc, char **argv) {
  ts_set_threads(1);
  if (argc > 1) return tool(argc, argv);
  test_create();
  test_errors();
  test_resume();
  printf("%d failed\n", failures);
  return failures ? 1 : 0;
}
