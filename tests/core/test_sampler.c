/* Tests of core/sampler.c: SD 1.x schedule numbers, timesteps, and each sampler on an exact denoiser. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sampler.h"

#include "check.h"

static void test_schedule(void) {
  double abar[1000];
  CHECK(sg_schedule_alphas_cumprod(sg_schedule_default_params(), abar, 1000) == 0, "schedule");
  CHECK(fabs(abar[0] - 0.99915) < 1e-6, "abar_0 %.7f", abar[0]);
  CHECK(fabs(abar[999] - 0.0046601) < 1e-7, "abar_999 %.8f", abar[999]);
  CHECK(fabs(sqrt((1 - abar[0]) / abar[0]) - 0.029167) < 1e-6, "sigma min");
  CHECK(fabs(sqrt((1 - abar[999]) / abar[999]) - 14.614641) < 1e-5, "sigma max");
  CHECK(sg_schedule_alphas_cumprod(sg_schedule_default_params(), abar, 10) < 0, "wrong length accepted");
}

static void test_timesteps(void) {
  char err[128];
  sg_sampler_params p = sg_sampler_default_params();
  sg_sampler *s = sg_sampler_new(sg_schedule_default_params(), p, 4, err, sizeof err);
  CHECK(s && sg_sampler_steps(s) == 50, "ddim 50");
  CHECK(sg_sampler_timestep(s, 0) == 981 && sg_sampler_timestep(s, 1) == 961 && sg_sampler_timestep(s, 49) == 1,
        "ddim timesteps %g %g %g", sg_sampler_timestep(s, 0), sg_sampler_timestep(s, 1), sg_sampler_timestep(s, 49));
  CHECK(!sg_sampler_needs_noise(s, 3) && sg_sampler_init_sigma(s) == 1 && sg_sampler_input_scale(s, 0) == 1, "ddim");
  /* the noise in the next step's input: sqrt(1 - abar) at timestep 961 after step 0, at timestep 0 after the last */
  double abar[1000];
  CHECK(sg_schedule_alphas_cumprod(sg_schedule_default_params(), abar, 1000) == 0, "schedule");
  CHECK(fabs(sg_sampler_next_noise(s, 0) - sqrt(1 - abar[961])) < 1e-12 &&
            fabs(sg_sampler_next_noise(s, 49) - sqrt(1 - abar[0])) < 1e-12,
        "ddim next noise %g %g", sg_sampler_next_noise(s, 0), sg_sampler_next_noise(s, 49));
  CHECK(sg_sampler_next_noise(s, 50) == 0 && sg_sampler_next_noise(s, -1) == 0 && sg_sampler_next_noise(NULL, 0) == 0,
        "next noise out of range");
  sg_sampler_free(s);
  p.steps = 4;
  s = sg_sampler_new(sg_schedule_default_params(), p, 4, err, sizeof err);
  CHECK(sg_sampler_timestep(s, 0) == 751 && sg_sampler_timestep(s, 3) == 1, "ddim 4 steps");
  sg_sampler_free(s);
  p.kind = SG_SAMPLER_EULER_A;
  p.steps = 10;
  s = sg_sampler_new(sg_schedule_default_params(), p, 4, err, sizeof err);
  CHECK(fabs(sg_sampler_init_sigma(s) - 14.614641) < 1e-5 && sg_sampler_timestep(s, 0) == 999 &&
            sg_sampler_timestep(s, 9) == 0 && fabs(sg_sampler_timestep(s, 1) - 888) < 1e-9,
        "euler sigmas");
  CHECK(fabs(sg_sampler_input_scale(s, 0) - 1 / sqrt(14.614641 * 14.614641 + 1)) < 1e-6, "input scale");
  CHECK(sg_sampler_needs_noise(s, 0) && !sg_sampler_needs_noise(s, 9), "euler a noise");
  /* sigma_next / sqrt(sigma_next^2 + 1): the noise's share of the next input, sqrt(1 - input_scale^2); 0 at the end */
  for (int32_t i = 0; i + 1 < 10; i++) {
    double sc = sg_sampler_input_scale(s, i + 1);
    CHECK(fabs(sg_sampler_next_noise(s, i) - sqrt(1 - sc * sc)) < 1e-9, "euler next noise %d: %g", i,
          sg_sampler_next_noise(s, i));
  }
  CHECK(sg_sampler_next_noise(s, 9) == 0, "euler next noise after the last step");
  sg_sampler_free(s);
  p.steps = 0;
  CHECK(!sg_sampler_new(sg_schedule_default_params(), p, 4, err, sizeof err), "0 steps accepted");
  p.steps = 10;
  p.kind = 9;
  CHECK(!sg_sampler_new(sg_schedule_default_params(), p, 4, err, sizeof err), "bad kind accepted");
  CHECK(sg_sampler_kind_parse("dpmpp_2m") == SG_SAMPLER_DPMPP_2M && sg_sampler_kind_parse("plms") == -1, "names");
}

/* Every step count a sampler accepts visits distinct timesteps, in decreasing order, inside the schedule; as
 * tools/sample.py (whose 1000 DDIM/DDPM steps would start at timestep 1000 and fail), DDIM and DDPM refuse
 * num_train_timesteps steps with offset 1 instead of visiting timestep 999 twice. */
static void test_timesteps_distinct(void) {
  char err[256] = "";
  sg_schedule_params sp = sg_schedule_default_params();
  for (int kind = 0; kind < 4; kind++) {
    int accepted = 0;
    for (int32_t steps = 1; steps <= sp.num_train_timesteps; steps++) {
      sg_sampler_params p = {(sg_sampler_kind)kind, steps, 0.0};
      sg_sampler *s = sg_sampler_new(sp, p, 1, err, sizeof err);
      int sigma = kind == SG_SAMPLER_EULER_A || kind == SG_SAMPLER_DPMPP_2M;
      int want = sigma || steps < sp.num_train_timesteps;
      CHECK(!!s == want, "%s, %d steps: %s (%s)", sg_sampler_kind_name(kind), steps, s ? "accepted" : "refused",
            s ? "" : err);
      if (!s) continue;
      accepted++;
      int ok = sg_sampler_timestep(s, 0) <= sp.num_train_timesteps - 1 && sg_sampler_timestep(s, steps - 1) >= 0;
      for (int32_t i = 1; i < steps; i++) ok &= sg_sampler_timestep(s, i) < sg_sampler_timestep(s, i - 1);
      CHECK(ok, "%s, %d steps: timesteps not distinct and decreasing inside the schedule (%g, %g, ..., %g)",
            sg_sampler_kind_name(kind), steps, sg_sampler_timestep(s, 0), steps > 1 ? sg_sampler_timestep(s, 1) : -1,
            sg_sampler_timestep(s, steps - 1));
      sg_sampler_free(s);
    }
    CHECK(accepted == sg_sampler_max_steps(sp, kind), "%s: %d step counts accepted, max_steps %d",
          sg_sampler_kind_name(kind), accepted, sg_sampler_max_steps(sp, kind));
  }
  /* 999 DDIM steps: 999, 998, ..., 1; 1000 are refused with a message naming the limit */
  sg_sampler_params p = {SG_SAMPLER_DDIM, 999, 0.0};
  sg_sampler *s = sg_sampler_new(sp, p, 1, err, sizeof err);
  CHECK(s && sg_sampler_timestep(s, 0) == 999 && sg_sampler_timestep(s, 998) == 1, "ddim 999 steps");
  sg_sampler_free(s);
  p.steps = 1000;
  p.kind = SG_SAMPLER_DDPM;
  err[0] = 0;
  CHECK(!sg_sampler_new(sp, p, 1, err, sizeof err) && strstr(err, "between 1 and 999 for ddpm"), "ddpm 1000: %s",
        err);
  /* other offsets: 0 allows every step count; an offset past the schedule, or negative, allows none */
  CHECK(sg_sampler_max_steps(sp, SG_SAMPLER_EULER_A) == 1000 && sg_sampler_max_steps(sp, SG_SAMPLER_DDIM) == 999,
        "max steps");
  sp.steps_offset = 0;
  CHECK(sg_sampler_max_steps(sp, SG_SAMPLER_DDIM) == 1000, "offset 0: %d", sg_sampler_max_steps(sp, SG_SAMPLER_DDIM));
  s = sg_sampler_new(sp, p, 1, err, sizeof err);
  CHECK(s && sg_sampler_timestep(s, 0) == 999 && sg_sampler_timestep(s, 999) == 0, "offset 0, 1000 steps");
  sg_sampler_free(s);
  sp.steps_offset = 1000;
  p.steps = 1;
  err[0] = 0;
  CHECK(sg_sampler_max_steps(sp, SG_SAMPLER_DDIM) == 0 && !sg_sampler_new(sp, p, 1, err, sizeof err) &&
            strstr(err, "steps_offset"), "offset 1000: %s", err);
  sp.steps_offset = -1;
  CHECK(sg_sampler_max_steps(sp, SG_SAMPLER_DDPM) == 0 && !sg_sampler_new(sp, p, 1, err, sizeof err), "offset -1");
  /* offset 20: 50 steps would start at 49 x 20 + 20 = 1000, so 49 is the limit, although 980 would fit */
  sp.steps_offset = 20;
  CHECK(sg_sampler_max_steps(sp, SG_SAMPLER_DDIM) == 49 && sg_sampler_max_steps(sp, SG_SAMPLER_DPMPP_2M) == 1000,
        "offset 20: %d", sg_sampler_max_steps(sp, SG_SAMPLER_DDIM));
  /* for any offset, every step count up to the limit stays inside the schedule (offset 2: 998 steps fit but 500
   * would start at 1000), and the next one is refused */
  for (int32_t off = 0; off <= 40; off++) {
    sp.steps_offset = off;
    int32_t max = sg_sampler_max_steps(sp, SG_SAMPLER_DDPM);
    int bad = 0;
    for (int32_t steps = 1; steps <= max + 1 && steps <= sp.num_train_timesteps; steps++) {
      sg_sampler_params q = {SG_SAMPLER_DDPM, steps, 0.0};
      sg_sampler *t = sg_sampler_new(sp, q, 1, err, sizeof err);
      if (steps <= max)
        bad += !t || sg_sampler_timestep(t, 0) > sp.num_train_timesteps - 1 || sg_sampler_timestep(t, steps - 1) < 0;
      else
        bad += t != NULL;
      sg_sampler_free(t);
    }
    CHECK(!bad, "offset %d (limit %d): %d step counts wrong", off, max, bad);
  }
}

/* With an exact denoiser for data equal to c everywhere, the deterministic samplers land where theory says:
 * DDIM (eta 0) keeps its first noise estimate e and ends at sqrt(abar_0) c + sqrt(1 - abar_0) e; the sigma-space
 * samplers end exactly at c. */
static void run_exact(sg_sampler_kind kind, double eta, int steps, double *err_out) {
  enum { N = 64 };
  char err[128];
  sg_sampler_params p = {kind, steps, eta};
  sg_sampler *s = sg_sampler_new(sg_schedule_default_params(), p, N, err, sizeof err);
  double abar[1000];
  sg_schedule_alphas_cumprod(sg_schedule_default_params(), abar, 1000);
  float x[N], n0[N], eps[N], noise[N];
  const float c = 0.7f;
  unsigned r = 12345;
  for (int k = 0; k < N; k++) {
    r = r * 1103515245u + 12345u;
    n0[k] = ((float)(r >> 8) / (float)(1 << 24) - 0.5f) * 3.0f;
    x[k] = n0[k] * (float)sg_sampler_init_sigma(s);
  }
  for (int i = 0; i < steps; i++) {
    double t = sg_sampler_timestep(s, i), sc = sg_sampler_input_scale(s, i);
    for (int k = 0; k < N; k++) {
      if (kind == SG_SAMPLER_DDIM || kind == SG_SAMPLER_DDPM) {
        double a = abar[(int)t];
        eps[k] = (float)((x[k] - sqrt(a) * c) / sqrt(1 - a));
      } else {
        double sigma = 1 / sc > 1 ? sqrt(1 / (sc * sc) - 1) : 0;
        eps[k] = (float)((x[k] - c) / sigma);
      }
      noise[k] = 0.1f * (float)((k % 7) - 3);
    }
    sg_sampler_step(s, i, x, eps, noise, x);
  }
  double e = 0;
  for (int k = 0; k < N; k++) {
    double e0 = (n0[k] - sqrt(abar[981]) * c) / sqrt(1 - abar[981]);
    double want = kind == SG_SAMPLER_DDIM && eta == 0 ? sqrt(abar[0]) * c + sqrt(1 - abar[0]) * e0 : c;
    e = fmax(e, fabs(x[k] - want));
  }
  *err_out = e;
  sg_sampler_free(s);
}

static void test_exact_denoiser(void) {
  double e;
  run_exact(SG_SAMPLER_DDIM, 0.0, 50, &e);
  CHECK(e < 1e-4, "ddim error %g", e);
  run_exact(SG_SAMPLER_EULER_A, 1.0, 20, &e);
  CHECK(e < 1e-4, "euler a error %g", e);
  run_exact(SG_SAMPLER_DPMPP_2M, 0.0, 20, &e);
  CHECK(e < 1e-4, "dpm++ 2m error %g", e);
  /* DDPM and DDIM with eta end near c (their last step is at abar_0, noise scale about 0.03) */
  run_exact(SG_SAMPLER_DDPM, 0.0, 50, &e);
  CHECK(e < 0.15, "ddpm error %g", e);
  run_exact(SG_SAMPLER_DDIM, 1.0, 50, &e);
  CHECK(e < 0.15, "ddim eta 1 error %g", e);
}

static void test_ddim_step_formula(void) {
  char err[128];
  sg_sampler_params p = {SG_SAMPLER_DDIM, 50, 0.5};
  sg_sampler *s = sg_sampler_new(sg_schedule_default_params(), p, 1, err, sizeof err);
  double abar[1000];
  sg_schedule_alphas_cumprod(sg_schedule_default_params(), abar, 1000);
  float x = 0.3f, eps = -1.2f, noise = 0.8f, out;
  CHECK(sg_sampler_needs_noise(s, 10), "eta > 0 needs noise");
  CHECK(sg_sampler_step(s, 10, &x, &eps, NULL, &out) == SG_SAMPLER_EINVAL, "missing noise accepted");
  sg_sampler_step(s, 10, &x, &eps, &noise, &out);
  double at = abar[781], ap = abar[761];
  double x0 = (x - sqrt(1 - at) * eps) / sqrt(at);
  double sig = 0.5 * sqrt((1 - ap) / (1 - at)) * sqrt(1 - at / ap);
  double want = sqrt(ap) * x0 + sqrt(1 - ap - sig * sig) * eps + sig * noise;
  CHECK(fabs(out - want) < 1e-5, "ddim step %g, want %g", out, want);
  sg_sampler_free(s);
}

int main(void) {
  test_schedule();
  test_timesteps();
  test_timesteps_distinct();
  test_exact_denoiser();
  test_ddim_step_formula();
  printf("%d failed\n", failures);
  return failures ? 1 : 0;
}
