/* sketchguide generate: prompt + sketch -> PNG images, with the generation parameters in the PNGs' text chunks. */
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "cli.h"
#include "config.h"
#include "generate.h"
#include "image.h"
#include "model.h"

#ifndef SG_VERSION
#define SG_VERSION "unknown"
#endif

static const char HELP[] =
    "usage: sketchguide generate --prompt TEXT [--sketch FILE] [OPTIONS]\n\n"
    "Generates images whose edges follow the sketch (PNG or JPEG; dark strokes on light or light on dark).\n"
    "Without --sketch (or with --beta 0) the image is unguided.\n\n"
    "options:\n"
    "  --model DIR          model directory (default: $SKETCHGUIDE_MODEL, else the bundled model)\n"
    "  --prompt TEXT        what to draw (required)\n"
    "  --negative TEXT      negative prompt (default empty)\n"
    "  --sketch FILE        the sketch\n"
    "  --invert MODE        auto (default: invert when the sketch is mostly light), true, false\n"
    "  --filled MODE        auto (default: a filled region means its outline), true (every region), false (as drawn)\n"
    "  --beta X             edge guidance scale (model default; the paper's 1.6), 0 = unguided\n"
    "  --stop F             fraction of the steps that are guided (model default; the paper's 0.5)\n"
    "  --stop-step N        number of guided steps (instead of --stop)\n"
    "  --steps N            sampling steps (model default, 50; at most --max-steps)\n"
    "  --cfg X              classifier-free guidance scale (model default, 8)\n"
    "  --sampler NAME       ddim, ddpm, euler_a, dpmpp_2m (model default, ddim)\n"
    "  --eta X              DDIM's eta (default 0)\n"
    "  --seed N             seed of the first image (default: random; printed); image k uses N + k\n"
    "  --seeds A,B,...      one run per seed, each of --images images\n"
    "  --images N           images per run (default 1; at most --max-images)\n"
    "  --output PATH        output file (default out.png); {seed} and {i} are replaced; with several images\n"
    "                       and neither, -{i} is inserted before the extension\n"
    "  --device DEV         cpu (default), cuda, cuda:N\n"
    "  --threads N          CPU threads (default: the CPU cores this process may use that other processes are\n"
    "                       not keeping busy; more threads than free cores slow every step down)\n"
    "  --json               print one JSON line per image instead of a sentence\n"
    "  --quiet              no progress (a bar on a terminal; otherwise a line per tenth of the steps)\n";

/* The limits' part of the help, with the service's defaults. */
static void print_limits_help(void) {
  sg_config d = sg_config_default_params();
  printf("  --max-steps N        the service's limits, which apply here too unless raised: most steps (%d),\n"
         "  --max-images N       images per run (%d)\n"
         "  --max-image-pixels N and sketch pixels, width x height (%lld)\n",
         (int)d.max_steps, (int)d.max_images, (long long)d.max_image_pixels);
}

/* Core parameter names (in error messages) -> this command's options. */
static const char *const PARAM_OPTS[][2] = {
    {"prompt", "--prompt"}, {"negative_prompt", "--negative"}, {"steps", "--steps"}, {"cfg", "--cfg"},
    {"beta", "--beta"},     {"stop_step", "--stop-step"},       {"stop", "--stop"},   {"seed", "--seed"},
    {"n", "--images"},      {"sampler", "--sampler"},           {"eta", "--eta"},
};

static void report_core_error(const char *err) {
  for (size_t i = 0; i < sizeof PARAM_OPTS / sizeof *PARAM_OPTS; i++) {
    size_t n = strlen(PARAM_OPTS[i][0]);
    if (!strncmp(err, PARAM_OPTS[i][0], n) && err[n] == ':') {
      cli_error("generate", "%s%s", PARAM_OPTS[i][1], err + n);
      return;
    }
  }
  cli_error("generate", "%s", err);
}

/* Writes the output path of image i (seed seed) into buf: {seed} and {i} replaced; "-i" before the extension when
 * there are several images and no placeholder. Returns 0, or -1 when it does not fit. */
static int output_path(const char *pattern, int64_t seed, int i, int several, char *buf, size_t cap) {
  int has = strstr(pattern, "{seed}") || strstr(pattern, "{i}");
  size_t o = 0;
  const char *ext = strrchr(pattern, '.');
  if (ext && strchr(ext, '/')) ext = NULL;
  for (const char *p = pattern;; p++) {
    char tmp[32];
    const char *ins = NULL;
    size_t skip = 0;
    if (!has && several && (p == ext || (!ext && !*p))) {
      snprintf(tmp, sizeof tmp, "-%d", i);
      ins = tmp;
    }
    if (!strncmp(p, "{seed}", 6)) {
      snprintf(tmp, sizeof tmp, "%lld", (long long)seed);
      ins = tmp;
      skip = 6;
    } else if (!strncmp(p, "{i}", 3)) {
      snprintf(tmp, sizeof tmp, "%d", i);
      ins = tmp;
      skip = 3;
    }
    if (ins) {
      size_t n = strlen(ins);
      if (o + n >= cap) return -1;
      memcpy(buf + o, ins, n);
      o += n;
    }
    if (skip) {
      p += skip - 1;
      continue;
    }
    if (!*p) break;
    if (o + 1 >= cap) return -1;
    buf[o++] = *p;
  }
  buf[o] = 0;
  return 0;
}

/* Parses "1,2,3" into a malloc'ed array; returns the count, or -1 after reporting. */
static int parse_seeds(const char *s, int64_t **out) {
  int n = 1;
  for (const char *p = s; *p; p++) n += *p == ',';
  int64_t *v = calloc((size_t)n, sizeof *v);
  char *copy = strdup(s);
  if (!v || !copy) {
    free(v);
    free(copy);
    cli_error("generate", "out of memory");
    return -1;
  }
  int k = 0;
  char *save = NULL;
  for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save))
    if (cli_parse_int("generate", "--seeds", tok, 0, INT64_MAX - 64, &v[k++])) {
      free(v);
      free(copy);
      return -1;
    }
  free(copy);
  if (k == 0) {
    cli_error("generate", "--seeds: no seed given");
    free(v);
    return -1;
  }
  *out = v;
  return k;
}

typedef struct {
  cli_progress *bar;
  int64_t base;
} progress_ctx;

static int on_step(void *user, int32_t step, int32_t total) {
  progress_ctx *c = user;
  cli_progress_update(c->bar, c->base + step);
  return 0;
}

static void json_string_out(FILE *f, const char *s) {
  fputc('"', f);
  for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
    if (*p == '"' || *p == '\\') fprintf(f, "\\%c", *p);
    else if (*p < 0x20) fprintf(f, "\\u%04x", *p);
    else fputc(*p, f);
  }
  fputc('"', f);
}

int cmd_generate(int argc, char **argv) {
  cli_args a = {"generate", argc, argv, 1, 0};
  const char *model_dir = cli_default_model(), *prompt = NULL, *negative = "", *sketch_path = NULL;
  const char *filled_s = "auto", *invert_s = "auto", *output = "out.png", *device = "cpu", *seeds_s = NULL, *v = NULL;
  const char *beta_s = NULL, *stop_s = NULL, *stop_step_s = NULL, *steps_s = NULL, *cfg_s = NULL, *sampler_s = NULL;
  const char *eta_s = NULL, *seed_s = NULL, *images_s = NULL, *threads_s = NULL;
  const char *max_steps_s = NULL, *max_images_s = NULL, *max_pixels_s = NULL;
  int json = 0, quiet = 0;
  while (a.i < argc && !a.failed) {
    if (cli_flag(&a, "--help") || cli_flag(&a, "-h")) {
      fputs(HELP, stdout);
      print_limits_help();
      return CLI_OK;
    }
    if (cli_value(&a, "--model", &v)) model_dir = v;
    else if (cli_value(&a, "--prompt", &v)) prompt = v;
    else if (cli_value(&a, "--negative", &v) || cli_value(&a, "--negative-prompt", &v)) negative = v;
    else if (cli_value(&a, "--sketch", &v)) sketch_path = v;
    else if (cli_value(&a, "--invert", &v)) invert_s = v;
    else if (cli_value(&a, "--filled", &v)) filled_s = v;
    else if (cli_value(&a, "--beta", &v)) beta_s = v;
    else if (cli_value(&a, "--stop-step", &v)) stop_step_s = v;
    else if (cli_value(&a, "--stop", &v)) stop_s = v;
    else if (cli_value(&a, "--steps", &v)) steps_s = v;
    else if (cli_value(&a, "--cfg", &v)) cfg_s = v;
    else if (cli_value(&a, "--sampler", &v)) sampler_s = v;
    else if (cli_value(&a, "--eta", &v)) eta_s = v;
    else if (cli_value(&a, "--seeds", &v)) seeds_s = v;
    else if (cli_value(&a, "--seed", &v)) seed_s = v;
    else if (cli_value(&a, "--images", &v) || cli_value(&a, "-n", &v)) images_s = v;
    else if (cli_value(&a, "--output", &v) || cli_value(&a, "-o", &v)) output = v;
    else if (cli_value(&a, "--device", &v)) device = v;
    else if (cli_value(&a, "--threads", &v)) threads_s = v;
    else if (cli_value(&a, "--max-steps", &v)) max_steps_s = v;
    else if (cli_value(&a, "--max-images", &v)) max_images_s = v;
    else if (cli_value(&a, "--max-image-pixels", &v)) max_pixels_s = v;
    else if (cli_flag(&a, "--json")) json = 1;
    else if (cli_flag(&a, "--quiet") || cli_flag(&a, "-q")) quiet = 1;
    else cli_unknown(&a);
  }
  if (a.failed) return CLI_USAGE;
  if (!prompt) {
    cli_error("generate", "--prompt is required (see sketchguide generate --help)");
    return CLI_USAGE;
  }
  int inv = sg_invert_parse(invert_s);
  if (inv < 0) {
    cli_error("generate", "--invert: '%s' is not auto, true or false", invert_s);
    return CLI_USAGE;
  }
  int filled = sg_filled_parse(filled_s);
  if (filled < 0) {
    cli_error("generate", "--filled: '%s' is not auto, true or false", filled_s);
    return CLI_USAGE;
  }
  if (seed_s && seeds_s) {
    cli_error("generate", "--seed and --seeds: give one of them");
    return CLI_USAGE;
  }
  if (stop_s && stop_step_s) {
    cli_error("generate", "--stop and --stop-step: give one of them");
    return CLI_USAGE;
  }
  int64_t threads = cli_free_cpus(), seed = -1, images = 1, steps = 0, stop_step = -1;
  double beta = 0, stop = 0, cfg = 0, eta = 0;
  int sampler = -1;
  if ((threads_s && cli_parse_int("generate", "--threads", threads_s, 1, 1024, &threads)) ||
      (seed_s && cli_parse_int("generate", "--seed", seed_s, 0, INT64_MAX - 64, &seed)) ||
      (images_s && cli_parse_int("generate", "--images", images_s, 1, 64, &images)) ||
      (steps_s && cli_parse_int("generate", "--steps", steps_s, 1, 10000, &steps)) ||
      (stop_step_s && cli_parse_int("generate", "--stop-step", stop_step_s, 0, 10000, &stop_step)) ||
      (beta_s && cli_parse_double("generate", "--beta", beta_s, 0, 100, &beta)) ||
      (stop_s && cli_parse_double("generate", "--stop", stop_s, 0, 1, &stop)) ||
      (cfg_s && cli_parse_double("generate", "--cfg", cfg_s, 0, 100, &cfg)) ||
      (eta_s && cli_parse_double("generate", "--eta", eta_s, 0, 10, &eta)))
    return CLI_USAGE;
  if (sampler_s && (sampler = sg_sampler_kind_parse(sampler_s)) < 0) {
    cli_error("generate", "--sampler: '%s' is not one of ddim, ddpm, euler_a, dpmpp_2m", sampler_s);
    return CLI_USAGE;
  }
  /* the service's limits (its defaults: one definition), each raised only by its flag */
  sg_config lim = sg_config_default_params();
  char err[1024] = "";
  if ((max_steps_s && sg_config_set(&lim, "max_steps", max_steps_s, "--max-steps", err, sizeof err)) ||
      (max_images_s && sg_config_set(&lim, "max_images", max_images_s, "--max-images", err, sizeof err)) ||
      (max_pixels_s && sg_config_set(&lim, "max_image_pixels", max_pixels_s, "--max-image-pixels", err, sizeof err))) {
    cli_error("generate", "%s", err);
    return CLI_USAGE;
  }
  if (steps_s && steps > lim.max_steps) {
    cli_error("generate", "--steps: %lld is above the limit of %d steps (the service's; --max-steps raises it)",
              (long long)steps, (int)lim.max_steps);
    return CLI_USAGE;
  }
  if (images > lim.max_images) {
    cli_error("generate", "--images: %lld is above the limit of %d images per run (the service's; --max-images "
              "raises it)", (long long)images, (int)lim.max_images);
    return CLI_USAGE;
  }
  if (cli_check_model_dir("generate", "--model", model_dir)) return CLI_USAGE;
  int64_t *seeds = NULL;
  int n_runs = 1;
  if (seeds_s) {
    if ((n_runs = parse_seeds(seeds_s, &seeds)) < 0) return CLI_USAGE;
  } else {
    seeds = malloc(sizeof *seeds);
    if (!seeds) return CLI_FAIL;
    if (seed < 0) {
      uint32_t r = 0;
      if (getrandom(&r, sizeof r, 0) != sizeof r) r = (uint32_t)(cli_now() * 1e6);
      seed = r;
    }
    seeds[0] = seed;
  }

  /* every output path, checked before any work: a missing folder fails now, not after the last step */
  for (int r = 0; r < n_runs; r++)
    for (int64_t k = 0; k < images; k++) {
      char path[4096];
      if (output_path(output, seeds[r] + k, (int)(r * images + k), n_runs * images > 1, path, sizeof path)) {
        cli_error("generate", "--output: path too long");
        free(seeds);
        return CLI_USAGE;
      }
      if (cli_check_output("generate", "--output", path)) {
        free(seeds);
        return CLI_USAGE;
      }
    }

  int rc = CLI_FAIL;
  sg_image sk = {0};
  float *map = NULL;
  sg_model *m = NULL;
  sg_image_params ip = sg_image_default_params();
  ip.max_pixels = lim.max_image_pixels;
  int irc = sketch_path ? sg_image_load(sketch_path, ip, &sk, err, sizeof err) : 0;
  if (irc) {
    cli_error("generate", "--sketch %s: %s%s", sketch_path, err,
              irc == SG_IMAGE_ETOOBIG && strstr(err, "pixels, over the limit")
                  ? " (the service's limit; --max-image-pixels raises it)"
                  : "");
    rc = CLI_USAGE;
    goto done;
  }
  sg_model_params mp = sg_model_default_params();
  mp.device = device;
  mp.threads = (int32_t)threads;
  double t0 = cli_now();
  if (!(m = sg_model_load(model_dir, mp, err, sizeof err))) {
    cli_error("generate", "--model %s: %s", model_dir, err);
    goto done;
  }
  double t_load = cli_now() - t0;
  const sg_model_info *info = sg_model_get_info(m);
  int inverted = 0;
  if (sketch_path) {
    size_t px = (size_t)info->image_size * info->image_size;
    if (!(map = malloc(px * sizeof *map))) goto done;
    if (sg_sketch_map_filled(&sk, info->image_size, (sg_invert)inv, (sg_filled)filled, map, &inverted, NULL, err,
                             sizeof err)) {
      cli_error("generate", "--sketch %s: %s", sketch_path, err);
      rc = CLI_USAGE;
      goto done;
    }
  }
  sg_generate_params p = sg_generate_default_params(m);
  p.prompt = prompt;
  p.negative_prompt = negative;
  p.sketch = map;
  if (beta_s) p.beta = beta;
  if (stop_s) p.stop = stop;
  p.stop_step = (int32_t)stop_step;
  if (steps_s) p.steps = (int32_t)steps;
  else if (p.steps > lim.max_steps) p.steps = lim.max_steps; /* as the service does with the model's default */
  if (cfg_s) p.cfg = cfg;
  if (sampler >= 0) p.sampler = (sg_sampler_kind)sampler;
  if (eta_s) p.eta = eta;
  p.n_images = (int32_t)images;
  if (!quiet && !json)
    fprintf(stderr, "model %s (%s, %s, %lld thread%s) loaded in %.1f s%s\n", info->name, info->device, info->dtype,
            (long long)threads, threads == 1 ? "" : "s", t_load,
            sketch_path ? (inverted ? "; sketch inverted (dark strokes on light)" : "; sketch used as is") : "");
  cli_progress bar;
  cli_progress_init(&bar, "generate: step", (int64_t)n_runs * p.steps, quiet || json, 0);
  progress_ctx pc = {&bar, 0};
  p.progress = on_step;
  p.progress_user = &pc;
  rc = CLI_OK;
  for (int r = 0; r < n_runs && rc == CLI_OK; r++) {
    sg_result res;
    p.seed = seeds[r];
    pc.base = (int64_t)r * p.steps;
    double ts = cli_now();
    int grc = sg_generate(m, &p, &res, err, sizeof err);
    double el = cli_now() - ts;
    if (grc) {
      cli_progress_end(&bar);
      report_core_error(err);
      rc = grc == SG_GENERATE_EINVAL || grc == SG_GENERATE_ENOLGP ? CLI_USAGE : CLI_FAIL;
      break;
    }
    for (int k = 0; k < res.n; k++) {
      char path[4096], sseed[32], sbeta[32], sstop[32], ssteps[32], scfg[32], seta[32], sguided[32];
      int idx = r * res.n + k;
      if (output_path(output, res.seeds[k], idx, n_runs * res.n > 1, path, sizeof path)) {
        cli_error("generate", "--output: path too long");
        rc = CLI_USAGE;
        break;
      }
      snprintf(sseed, sizeof sseed, "%lld", (long long)res.seeds[k]);
      snprintf(sbeta, sizeof sbeta, "%g", sketch_path ? p.beta : 0.0);
      snprintf(sstop, sizeof sstop, "%g", p.stop);
      snprintf(ssteps, sizeof ssteps, "%d", p.steps);
      snprintf(scfg, sizeof scfg, "%g", p.cfg);
      snprintf(seta, sizeof seta, "%g", p.eta);
      snprintf(sguided, sizeof sguided, "%d", res.guided_steps);
      sg_png_text text[] = {
          {"prompt", prompt},         {"negative_prompt", negative}, {"seed", sseed},
          {"beta", sbeta},            {"stop", sstop},               {"guided_steps", sguided},
          {"steps", ssteps},          {"cfg", scfg},                 {"sampler", sg_sampler_kind_name(p.sampler)},
          {"eta", seta},              {"model", info->name},         {"software", "sketchguide " SG_VERSION},
      };
      const uint8_t *px = res.pixels + (size_t)k * res.width * res.height * 3;
      if (sg_png_save(path, px, res.width, res.height, 3, text, (int32_t)(sizeof text / sizeof *text), err,
                      sizeof err)) {
        cli_progress_end(&bar);
        cli_error("generate", "--output %s: %s", path, err);
        rc = CLI_FAIL;
        break;
      }
      if (json) {
        printf("{\"path\": ");
        json_string_out(stdout, path);
        printf(", \"seed\": %lld, \"width\": %d, \"height\": %d, \"guided_steps\": %d, \"seconds\": %.3f}\n",
               (long long)res.seeds[k], res.width, res.height, res.guided_steps, el / res.n);
      } else {
        if (bar.enabled) fputs("\r\033[K", stderr);
        printf("wrote %s (seed %lld, %d of %d steps guided, %.2f s per image)\n", path, (long long)res.seeds[k],
               res.guided_steps, p.steps, el / res.n);
        fflush(stdout);
      }
    }
    sg_result_free(&res);
  }
  if (rc == CLI_OK && bar.enabled) fputs("\r\033[K", stderr);
done:
  sg_model_free(m);
  sg_image_free(&sk);
  free(map);
  free(seeds);
  return rc;
}
