/* Benchmark of the C engine (run by hand through bench/bench_engine.py): per-image time and its breakdown, unguided and guided. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "generate.h"
#include "image.h"
#include "model.h"

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

/* Runs `runs` generations (after one warm-up) and returns a JSON object: best and median per-image seconds, and
 * the breakdown of the best run. */
static json_t *measure(sg_model *m, sg_generate_params p, int runs, char *err, size_t errlen) {
  sg_result r;
  if (sg_generate(m, &p, &r, err, errlen)) return NULL;
  sg_result_free(&r);
  double *t = calloc((size_t)runs, sizeof *t), best = 1e30;
  sg_timings bt = {0};
  for (int i = 0; i < runs; i++) {
    if (sg_generate(m, &p, &r, err, errlen)) {
      free(t);
      return NULL;
    }
    t[i] = r.timings.total / r.n;
    if (t[i] < best) best = t[i], bt = r.timings;
    sg_result_free(&r);
  }
  qsort(t, (size_t)runs, sizeof *t, cmp_double);
  double n = p.n_images;
  json_t *o = json_pack("{s:f, s:f, s:i, s:{s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:f}}", "best_s", best, "median_s",
                        t[runs / 2], "guided_steps", sg_generate_guided_steps(p.steps, p.stop, p.stop_step) * (p.beta > 0 && p.sketch),
                        "breakdown_s", "text", bt.text / n, "vae_encode", bt.vae_encode / n, "unet", bt.unet / n,
                        "guided_forward", bt.guided_forward / n, "lgp", bt.lgp / n, "backward", bt.backward / n,
                        "sampler_other", bt.sampler / n, "vae_decode", bt.vae_decode / n);
  free(t);
  return o;
}

int main(int argc, char **argv) {
  if (argc < 4) {
    fprintf(stderr, "usage: bench_engine MODEL_DIR SKETCH.png PROMPT [steps 50] [runs 5] [threads 2] [device cpu] "
                    "[images 1]\n");
    return 2;
  }
  int steps = argc > 4 ? atoi(argv[4]) : 50, runs = argc > 5 ? atoi(argv[5]) : 5;
  int threads = argc > 6 ? atoi(argv[6]) : 2, images = argc > 8 ? atoi(argv[8]) : 1;
  const char *device = argc > 7 ? argv[7] : "cpu";
  char err[1024];
  sg_model_params mp = sg_model_default_params();
  mp.device = device;
  mp.threads = threads;
  sg_model *m = sg_model_load(argv[1], mp, err, sizeof err);
  if (!m) {
    fprintf(stderr, "bench_engine: %s\n", err);
    return 1;
  }
  const sg_model_info *info = sg_model_get_info(m);
  sg_image im = {0};
  float *map = malloc((size_t)info->image_size * info->image_size * sizeof *map);
  if (!map || sg_image_load(argv[2], sg_image_default_params(), &im, err, sizeof err) ||
      sg_sketch_map(&im, info->image_size, SG_INVERT_AUTO, map, NULL, err, sizeof err)) {
    fprintf(stderr, "bench_engine: %s: %s\n", argv[2], err);
    return 1;
  }
  sg_generate_params p = sg_generate_default_params(m);
  p.prompt = argv[3];
  p.steps = steps;
  p.seed = 0;
  p.n_images = images;
  p.profile = 1;
  p.sketch = map;
  p.beta = 0;
  json_t *u = measure(m, p, runs, err, sizeof err);
  p.beta = info->defaults.beta > 0 ? info->defaults.beta : 1.6;
  json_t *g = u ? measure(m, p, runs, err, sizeof err) : NULL;
  if (!u || !g) {
    fprintf(stderr, "bench_engine: %s\n", err);
    return 1;
  }
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  json_t *o = json_pack("{s:s, s:s, s:i, s:i, s:i, s:f, s:f, s:f, s:o, s:o, s:I}", "engine", "c", "device", device,
                        "steps", steps, "threads", threads, "images", images, "cfg", p.cfg, "beta", p.beta, "stop",
                        p.stop, "unguided", u, "guided", g, "peak_rss_kb", (json_int_t)ru.ru_maxrss);
  char *s = json_dumps(o, JSON_COMPACT);
  puts(s);
  free(s);
  json_decref(o);
  sg_image_free(&im);
  free(map);
  sg_model_free(m);
  return 0;
}
