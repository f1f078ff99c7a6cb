/* core/generate.c: the cases of the parity check with the Python reference (tools/parity.py runs this program and
 * compares what it writes), the progress and trace contracts, and the argument checks. */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "generate.h"

#include "check.h"

static int count_steps(void *user, int32_t step, int32_t total) {
  int *calls = user;
  (*calls)++;
  return step == total + 1; /* never cancels */
}

static int write_file(const char *path, const void *data, size_t n) {
  FILE *f = fopen(path, "wb");
  if (!f) return 0;
  int ok = fwrite(data, 1, n, f) == n;
  return fclose(f) == 0 && ok;
}

static void test_case(sg_model *m, json_t *c, size_t idx, const char *out_dir) {
  const sg_model_info *info = sg_model_get_info(m);
  size_t px = (size_t)info->image_size * info->image_size;
  float *sketch = calloc(px, sizeof *sketch);
  size_t i;
  json_t *v;
  json_array_foreach(json_object_get(c, "sketch"), i, v) sketch[json_integer_value(v)] = 1.0f;
  sg_generate_params p = sg_generate_default_params(m);
  p.prompt = json_string_value(json_object_get(c, "prompt"));
  p.negative_prompt = json_string_value(json_object_get(c, "negative"));
  p.sketch = sketch;
  p.beta = json_number_value(json_object_get(c, "beta"));
  p.stop = json_number_value(json_object_get(c, "stop"));
  p.steps = (int32_t)json_integer_value(json_object_get(c, "steps"));
  p.cfg = json_number_value(json_object_get(c, "cfg"));
  p.seed = json_integer_value(json_object_get(c, "seed"));
  p.sampler = (sg_sampler_kind)sg_sampler_kind_parse(json_string_value(json_object_get(c, "sampler")));
  p.eta = json_number_value(json_object_get(c, "eta"));
  p.n_images = (int32_t)json_integer_value(json_object_get(c, "n"));
  int calls = 0;
  p.progress = count_steps;
  p.progress_user = &calls;
  const sg_model_info *mi = sg_model_get_info(m);
  size_t per_step = (size_t)p.n_images * mi->latent_channels * mi->latent_size * mi->latent_size;
  float *trace = malloc((size_t)p.steps * per_step * sizeof *trace);
  p.trace = trace;
  sg_result r;
  char err[512];
  int rc = sg_generate(m, &p, &r, err, sizeof err);
  CHECK(rc == 0, "case %zu: %s", idx, err);
  if (rc == 0) {
    size_t np = (size_t)r.n * px * 3;
    printf("case %zu (%s, beta %.1f, %d steps, %d guided, %d images)\n", idx, sg_sampler_kind_name(p.sampler), p.beta,
           p.steps, r.guided_steps, r.n);
    CHECK(calls == p.steps, "case %zu: %d progress calls", idx, calls);
    /* the trace's last step is the result; its first differs from it */
    CHECK(r.latent_len * r.n == per_step, "case %zu: trace size", idx);
    CHECK(!memcmp(trace + (size_t)(p.steps - 1) * per_step, r.latents, per_step * sizeof *trace),
          "case %zu: the trace's last step is not the result", idx);
    CHECK(p.steps == 1 || memcmp(trace, r.latents, per_step * sizeof *trace), "case %zu: trace not filled", idx);
    CHECK(r.guided_steps == (p.beta == 0 ? 0 : sg_generate_guided_steps(p.steps, p.stop, -1)),
          "case %zu: %d guided steps", idx, r.guided_steps);
    char path[4096];
    snprintf(path, sizeof path, "%s/case_%zu.trace.f32", out_dir, idx);
    CHECK(write_file(path, trace, (size_t)p.steps * per_step * sizeof *trace), "%s: cannot write", path);
    snprintf(path, sizeof path, "%s/case_%zu.pixels.u8", out_dir, idx);
    CHECK(write_file(path, r.pixels, np), "%s: cannot write", path);
    sg_result_free(&r);
  }
  free(sketch);
  free(trace);
}

static int cancel_at_3(void *user, int32_t step, int32_t total) { return step >= 3; }

static void test_errors(sg_model *m) {
  sg_generate_params p = sg_generate_default_params(m);
  sg_result r;
  char err[256];
  p.prompt = "x";
  p.steps = 0;
  CHECK(sg_generate(m, &p, &r, err, sizeof err) == SG_GENERATE_EINVAL && strstr(err, "steps"), "steps: %s", err);
  p.steps = 1000; /* 1000 DDIM steps would start at timestep 1000, past the schedule (sg_sampler_max_steps) */
  p.sampler = SG_SAMPLER_DDIM;
  CHECK(sg_generate(m, &p, &r, err, sizeof err) == SG_GENERATE_EINVAL && strstr(err, "steps") && strstr(err, "999"),
        "1000 ddim steps: %s", err);
  p = sg_generate_default_params(m);
  p.prompt = NULL;
  CHECK(sg_generate(m, &p, &r, err, sizeof err) == SG_GENERATE_EINVAL && strstr(err, "prompt"), "prompt: %s", err);
  p = sg_generate_default_params(m);
  p.prompt = "x";
  p.beta = -1;
  CHECK(sg_generate(m, &p, &r, err, sizeof err) == SG_GENERATE_EINVAL && strstr(err, "beta"), "beta: %s", err);
  p.beta = 1;
  p.n_images = 1000;
  CHECK(sg_generate(m, &p, &r, err, sizeof err) == SG_GENERATE_EINVAL && strstr(err, "n:"), "n: %s", err);
  p.n_images = 1;
  p.cfg = NAN;
  CHECK(sg_generate(m, &p, &r, err, sizeof err) == SG_GENERATE_EINVAL && strstr(err, "cfg"), "cfg: %s", err);
  p.cfg = 3;
  p.steps = 8;
  p.progress = cancel_at_3;
  CHECK(sg_generate(m, &p, &r, err, sizeof err) == SG_GENERATE_ECANCEL && r.pixels == NULL, "cancel: %s", err);
  volatile int flag = 1;
  p.progress = NULL;
  p.cancel = &flag;
  CHECK(sg_generate(m, &p, &r, err, sizeof err) == SG_GENERATE_ECANCEL, "cancel flag");
}

/* Beyond the push cap (PUSH_CAP x the noise in the next step's input, docs/guidance.md) beta changes nothing: at
 * beta 12 and 40 every guided push is the cap, so the latents are the same bit for bit, with each sampler; beta 0.2,
 * whose pushes are not all at the cap, gives another image. */
static void test_push_cap(sg_model *m) {
  const sg_model_info *info = sg_model_get_info(m);
  int32_t size = info->image_size;
  float *sketch = calloc((size_t)size * size, sizeof *sketch);
  for (int32_t y = size / 4; y < 3 * size / 4; y++) sketch[y * size + size / 4] = sketch[y * size + 3 * size / 4] = 1;
  for (int32_t x = size / 4; x <= 3 * size / 4; x++) sketch[size / 4 * size + x] = sketch[3 * size / 4 * size + x] = 1;
  const sg_sampler_kind kinds[] = {SG_SAMPLER_DDIM, SG_SAMPLER_DDPM, SG_SAMPLER_EULER_A};
  for (size_t k = 0; k < sizeof kinds / sizeof *kinds; k++) {
    const double betas[] = {0.2, 12, 40};
    sg_result r[3];
    char err[512];
    int ok = 1, rc[3];
    for (int j = 0; j < 3; j++) {
      sg_generate_params p = sg_generate_default_params(m);
      p.prompt = "a red square on a plain blue background";
      p.sketch = sketch;
      p.beta = betas[j];
      p.steps = 8;
      p.sampler = kinds[k];
      p.seed = 5;
      rc[j] = sg_generate(m, &p, &r[j], err, sizeof err);
      CHECK(rc[j] == 0, "%s, beta %g: %s", sg_sampler_kind_name(kinds[k]), betas[j], err);
      ok &= rc[j] == 0;
    }
    if (ok) {
      size_t bytes = r[0].latent_len * sizeof(float);
      CHECK(!memcmp(r[1].latents, r[2].latents, bytes), "%s: beta 12 and 40 differ", sg_sampler_kind_name(kinds[k]));
      CHECK(memcmp(r[0].latents, r[1].latents, bytes), "%s: beta 0.2 and 12 are the same",
            sg_sampler_kind_name(kinds[k]));
    }
    for (int j = 0; j < 3; j++)
      if (rc[j] == 0) sg_result_free(&r[j]);
  }
  free(sketch);
}

int main(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: %s MODEL_DIR CASES.json OUT_DIR (tools/parity.py runs it)\n", argv[0]);
    return 2;
  }
  sg_model_params mp = sg_model_default_params();
  /* one thread, as the reference was made: guided trajectories amplify the run-to-run differences of
     multi-threaded reductions (two 2-thread Python runs of a 25-guided-step case differ by 0.08) */
  mp.threads = 1;
  char err[512];
  sg_model *m = sg_model_load(argv[1], mp, err, sizeof err);
  if (!m) {
    printf("cannot load %s (%s): skipped\n", argv[1], err);
    return 77;
  }
  json_error_t jerr;
  json_t *ref = json_load_file(argv[2], 0, &jerr);
  CHECK(ref, "%s: %s", argv[2], jerr.text);
  size_t i;
  json_t *c;
  json_array_foreach(json_object_get(ref, "cases"), i, c) test_case(m, c, i, argv[3]);
  test_errors(m);
  test_push_cap(m);
  json_decref(ref);
  sg_model_free(m);
  printf("%d failed\n", failures);
  return failures ? 1 : 0;
}
