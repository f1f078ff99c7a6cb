/* core/generate.c's step engine: generations stepped together in batches against the same ones run alone (every
 * sampler, guided and unguided, mixed cfg, steps and n, members joining and leaving mid-run), a failing member that
 * fails alone, and the batch step's argument checks. Both sides run on this machine (nothing stored). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "generate.h"

#include "check.h"

/* Unguided: the batch changes only the order of the U-Net's sums (issue 13 asked for 1e-4; the bundled model of 07c3097 gives up to 2e-4 at n 2: the bound is 5e-4). Guided: the
 * trajectory amplifies those differences (docs/batching.md); the pixels must stay within PIXEL_TOL levels, and within
 * MEAN_PIXEL_TOL on average. With the bundled model of 86af8df the DDIM member of seed 12 differs by 25 levels at
 * most but 0.43 on average (a few pixels of one edge: its trajectory is the most sensitive, alone or as image 1 of
 * an n 2 member); a wrong row, gradient or context in the batch moves whole images, tens of levels on average. */
#define LATENT_TOL 5e-4
#define PIXEL_TOL 32
#define MEAN_PIXEL_TOL 1.0 /* the mean of |batched - solo| over a member's pixels, in levels */

typedef struct {
  const char *prompt, *negative;
  sg_sampler_kind sampler;
  int32_t steps, n;
  double cfg, beta, eta, stop;
  int64_t seed;
  int32_t join;  /* the batch round in which it starts */
  int sketch;    /* 0: none, 1: a square, 2: a cross, 3: a square with a NaN pixel (the member fails) */
} spec;

static float *make_sketch(int kind, int32_t S) {
  float *s = calloc((size_t)S * S, sizeof *s);
  for (int32_t y = 0; y < S; y++)
    for (int32_t x = 0; x < S; x++) {
      int sq = (x == S / 4 || x == 3 * S / 4 || y == S / 4 || y == 3 * S / 4) && x >= S / 4 && x <= 3 * S / 4 &&
               y >= S / 4 && y <= 3 * S / 4;
      int cr = x == S / 2 || y == S / 2;
      s[y * S + x] = (kind == 2 ? cr : sq) ? 1.0f : 0.0f;
    }
  if (kind == 3) s[S / 4 * S + S / 4] = NAN;
  return s;
}

static sg_generate_params params_of(sg_model *m, const spec *c, float **sketch) {
  sg_generate_params p = sg_generate_default_params(m);
  p.prompt = c->prompt;
  p.negative_prompt = c->negative ? c->negative : "";
  p.sampler = c->sampler;
  p.steps = c->steps;
  p.n_images = c->n;
  p.cfg = c->cfg;
  p.beta = c->beta;
  p.eta = c->eta;
  p.stop = c->stop;
  p.seed = c->seed;
  *sketch = c->sketch ? make_sketch(c->sketch, sg_model_get_info(m)->image_size) : NULL;
  p.sketch = *sketch;
  return p;
}

/* Runs the specs as a scheduler would: in round r the members with join == r start, then every live member takes
 * one step in one batch call, and members that are done are finished and leave. res[k] gets member k's result
 * (rcs[k] its code: a member that fails leaves the batch). Returns the largest batch seen. */
static int32_t run_batched(sg_model *m, const spec *cs, int32_t n, sg_result *res, int *rcs) {
  sg_generation *g[32], *live[32];
  float *sk[32];
  int32_t live_of[32], max_live = 0;
  memset(g, 0, sizeof g);
  int32_t left = n;
  for (int32_t k = 0; k < n; k++) rcs[k] = 1, memset(&res[k], 0, sizeof res[k]), sk[k] = NULL;
  for (int32_t round = 0; left > 0 && round < 10000; round++) {
    for (int32_t k = 0; k < n; k++)
      if (cs[k].join == round) {
        char err[256];
        sg_generate_params p = params_of(m, &cs[k], &sk[k]);
        int rc = sg_generation_start(m, &p, &g[k], err, sizeof err);
        CHECK(rc == 0, "member %d: start: %s", (int)k, err);
        if (rc) rcs[k] = rc, left--;
      }
    int32_t nl = 0;
    for (int32_t k = 0; k < n; k++)
      if (g[k]) live_of[nl] = k, live[nl++] = g[k];
    if (nl > max_live) max_live = nl;
    if (!nl) continue;
    int rc[32];
    char errs[32][256];
    int failed = sg_generation_step_batch(live, nl, rc, errs[0], sizeof errs[0]);
    int counted = 0;
    for (int32_t j = 0; j < nl; j++) {
      int32_t k = live_of[j];
      if (rc[j]) {
        counted++;
        printf("member %d failed at step %d: %s\n", (int)k, (int)sg_generation_step_index(g[k]) + 1, errs[j]);
        rcs[k] = rc[j];
      } else if (sg_generation_done(g[k])) {
        char err[256];
        rcs[k] = sg_generation_finish(g[k], &res[k], err, sizeof err);
        CHECK(rcs[k] == 0, "member %d: finish: %s", (int)k, err);
      } else {
        continue;
      }
      sg_generation_free(g[k]);
      g[k] = NULL;
      left--;
    }
    CHECK(failed == counted, "step_batch returned %d failures, rc shows %d", failed, counted);
  }
  for (int32_t k = 0; k < n; k++) free(sk[k]);
  return max_live;
}

static int solo(sg_model *m, const spec *c, sg_result *r) {
  float *sk;
  sg_generate_params p = params_of(m, c, &sk);
  char err[256];
  int rc = sg_generate(m, &p, r, err, sizeof err);
  if (rc) printf("solo: %s\n", err);
  free(sk);
  return rc;
}

/* Compares every member of a batched run with its solo run. */
static void check_against_solo(sg_model *m, const char *name, const spec *cs, int32_t n, int32_t want_batch) {
  sg_result res[32];
  int rcs[32];
  int32_t most = run_batched(m, cs, n, res, rcs);
  CHECK(most >= want_batch, "%s: the largest batch held %d members, want %d", name, (int)most, (int)want_batch);
  for (int32_t k = 0; k < n; k++) {
    sg_result s;
    int src = solo(m, &cs[k], &s);
    int guided = cs[k].sketch && cs[k].beta > 0;
    if (cs[k].sketch == 3) {
      CHECK(src == SG_GENERATE_ERUNTIME && rcs[k] == SG_GENERATE_ERUNTIME,
            "%s: member %d (a NaN in its sketch) should fail alone and in the batch: rc %d / %d", name, (int)k, src,
            rcs[k]);
      continue;
    }
    CHECK(src == 0 && rcs[k] == 0, "%s: member %d: rc solo %d, batched %d", name, (int)k, src, rcs[k]);
    if (src || rcs[k]) continue;
    double dl = 0;
    int dp = 0;
    double dsum = 0;
    size_t nl = (size_t)s.n * s.latent_len, np = (size_t)s.n * s.width * s.height * 3;
    for (size_t i = 0; i < nl; i++) dl = fmax(dl, fabs((double)s.latents[i] - res[k].latents[i]));
    for (size_t i = 0; i < np; i++) {
      int d = abs((int)s.pixels[i] - (int)res[k].pixels[i]);
      if (d > dp) dp = d;
      dsum += d;
    }
    printf("%s: member %d (%s, %d steps, cfg %.1f, beta %.1f, n %d, joins in round %d): batched vs solo: latents "
           "%.2e, pixels %d levels (mean %.3f)\n",
           name, (int)k, sg_sampler_kind_name(cs[k].sampler), (int)cs[k].steps, cs[k].cfg, guided ? cs[k].beta : 0.0,
           (int)cs[k].n, (int)cs[k].join, dl, dp, dsum / (double)np);
    if (guided) {
      CHECK(dp <= PIXEL_TOL, "%s: member %d (guided): pixels differ by %d levels", name, (int)k, dp);
      CHECK(dsum / (double)np <= MEAN_PIXEL_TOL, "%s: member %d (guided): pixels differ by %.3f levels on average",
            name, (int)k, dsum / (double)np);
    }
    else
      CHECK(dl <= LATENT_TOL, "%s: member %d (unguided): latents differ by %.3g", name, (int)k, dl);
    CHECK(res[k].guided_steps == s.guided_steps, "%s: member %d: guided steps %d vs %d", name, (int)k,
          (int)res[k].guided_steps, (int)s.guided_steps);
    sg_result_free(&s);
    sg_result_free(&res[k]);
  }
}

static const char *P1 = "a red star on a plain blue background", *P2 = "a green heart on a striped yellow background",
                  *P3 = "a white cross on a checkered purple background", *P4 = "an orange triangle";

/* A batch of one stepped by hand is sg_generate, bit for bit. */
static void test_one_implementation(sg_model *m) {
  spec c = {P2, "a blue circle", SG_SAMPLER_DPMPP_2M, 6, 2, 5.0, 1.6, 0, 0.5, 9, 0, 1};
  sg_result a, b;
  int rc;
  CHECK(solo(m, &c, &a) == 0, "solo");
  CHECK(run_batched(m, &c, 1, &b, &rc) == 1 && rc == 0, "stepped");
  CHECK(a.n == b.n && !memcmp(a.latents, b.latents, (size_t)a.n * a.latent_len * sizeof(float)) &&
            !memcmp(a.pixels, b.pixels, (size_t)a.n * a.width * a.height * 3),
        "a batch of one differs from sg_generate");
  sg_result_free(&a);
  sg_result_free(&b);
}

static void test_args(sg_model *m) {
  sg_generate_params p = sg_generate_default_params(m);
  p.prompt = P4;
  p.steps = 2;
  sg_generation *g, *h;
  char err[256], errs[3][256];
  CHECK(sg_generation_start(m, &p, &g, err, sizeof err) == 0, "start: %s", err);
  p.steps = 0;
  CHECK(sg_generation_start(m, &p, &h, err, sizeof err) == SG_GENERATE_EINVAL && !h && strstr(err, "steps"),
        "start with 0 steps: %s", err);
  p.steps = 3;
  CHECK(sg_generation_start(m, &p, &h, err, sizeof err) == 0, "start: %s", err);
  int rc[3];
  CHECK(sg_generation_step_batch(NULL, 1, rc, NULL, 0) == SG_GENERATE_EINVAL, "NULL batch");
  sg_generation *twice[3] = {g, h, g};
  CHECK(sg_generation_step_batch(twice, 3, rc, errs[0], 256) == 1 && rc[0] == 0 && rc[1] == 0 &&
            rc[2] == SG_GENERATE_EINVAL && strstr(errs[2], "twice"),
        "a member twice: %d %d %d %s", rc[0], rc[1], rc[2], errs[2]);
  sg_result r;
  CHECK(sg_generation_finish(g, &r, err, sizeof err) == SG_GENERATE_EINVAL && strstr(err, "not done"),
        "finish before the end: %s", err);
  CHECK(sg_generation_step(g, err, sizeof err) == 0, "step: %s", err);
  CHECK(sg_generation_done(g) && !sg_generation_done(h) && sg_generation_rows(g) == 0 && sg_generation_rows(h) == 2,
        "done and rows");
  sg_generation *both[2] = {g, h};
  CHECK(sg_generation_step_batch(both, 2, rc, errs[0], 256) == 1 && rc[0] == SG_GENERATE_EINVAL &&
            strstr(errs[0], "done") && rc[1] == 0,
        "a done member: %d %s / %d", rc[0], errs[0], rc[1]);
  CHECK(sg_generation_finish(g, &r, err, sizeof err) == 0 && r.n == 1, "finish: %s", err);
  sg_result_free(&r);
  CHECK(sg_generation_finish(g, &r, err, sizeof err) == SG_GENERATE_EINVAL, "finished twice");
  sg_generation_free(g);
  sg_generation_free(h);
  sg_generation_free(NULL);
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s MODEL_DIR\n", argv[0]);
    return 2;
  }
  sg_model_params mp = sg_model_default_params();
  mp.threads = 1; /* one order of sums within a run; the batch changes it only through its size */
  char err[512];
  sg_model *m = sg_model_load(argv[1], mp, err, sizeof err);
  if (!m) {
    printf("cannot load %s (%s): skipped\n", argv[1], err);
    return 77;
  }
  test_args(m);
  test_one_implementation(m);
  /* unguided, every sampler, cfg 1 among them, members joining in rounds 0 to 3 and leaving after 8 to 12 steps */
  const spec unguided[] = {
      {P1, "", SG_SAMPLER_DDIM, 12, 1, 7.5, 0, 0, 0.5, 1, 0, 0},
      {P2, "", SG_SAMPLER_DDIM, 10, 2, 5.0, 0, 0.7, 0.5, 2, 2, 0},
      {P3, "", SG_SAMPLER_DDPM, 8, 1, 1.0, 0, 0, 0.5, 3, 0, 0},
      {P4, "a blue circle", SG_SAMPLER_EULER_A, 9, 1, 7.5, 0, 0, 0.5, 4, 3, 0},
      {P1, "", SG_SAMPLER_DPMPP_2M, 11, 1, 6.0, 0, 0, 0.5, 5, 1, 0},
  };
  check_against_solo(m, "unguided", unguided, 5, 5);
  /* guided and unguided members in one batch, every sampler guided, with a member whose sketch has a NaN */
  const spec mixed[] = {
      {P1, "", SG_SAMPLER_DDIM, 10, 2, 7.5, 1.6, 0, 0.5, 11, 0, 1},
      {P2, "", SG_SAMPLER_EULER_A, 8, 1, 1.0, 1.0, 0, 0.5, 12, 2, 2},
      {P3, "", SG_SAMPLER_DPMPP_2M, 10, 1, 7.5, 1.6, 0, 0.6, 13, 1, 1},
      {P4, "", SG_SAMPLER_DDPM, 9, 1, 5.0, 1.6, 0, 0.5, 14, 0, 2},
      {P1, "", SG_SAMPLER_DDIM, 12, 1, 7.5, 0, 0, 0.5, 15, 1, 0},
      {P2, "", SG_SAMPLER_EULER_A, 7, 1, 1.0, 0, 0, 0.5, 16, 3, 0},
      {P3, "", SG_SAMPLER_DDIM, 8, 1, 7.5, 1.6, 0.3, 0.5, 17, 2, 3},
  };
  check_against_solo(m, "mixed", mixed, 7, 6);
  sg_model_free(m);
  printf("%d failed\n", failures);
  return failures ? 1 : 0;
}
