/* Sketch-guided sampling over the model's modules: CFG, sampler step, LGP gradient move (METHOD.md, section 3.2). */
#include "generate.h"

#include "errbuf.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_IMAGES 64

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

sg_generate_params sg_generate_default_params(const sg_model *m) {
  const sg_model_defaults *d = &sg_model_get_info(m)->defaults;
  sg_generate_params p;
  memset(&p, 0, sizeof p);
  p.prompt = "";
  p.negative_prompt = "";
  p.beta = d->beta;
  p.stop = d->stop;
  p.stop_step = -1;
  p.steps = d->steps;
  p.cfg = d->cfg;
  p.sampler = d->sampler;
  p.eta = d->eta;
  p.n_images = 1;
  return p;
}

int32_t sg_generate_guided_steps(int32_t steps, double stop, int32_t stop_step) {
  if (stop_step >= 0) return stop_step < steps ? stop_step : steps;
  double g = ceil(stop * steps - 1e-9);
  return g < 0 ? 0 : g > steps ? steps : (int32_t)g;
}

void sg_result_free(sg_result *r) {
  if (!r) return;
  free(r->pixels);
  free(r->latents);
  free(r->seeds);
  memset(r, 0, sizeof *r);
}

/* Per-call state; everything is freed in gen_free. */
typedef struct {
  sg_model *m;
  const sg_model_info *info;
  int32_t n;
  size_t len; /* floats per image */
  int64_t shape[4], shape2[4];
  ts_rng *rng[MAX_IMAGES];
  ts_tensor *ctx_c, *ctx_u, *ctx_both, *target;
  float *z, *zin, *eps, *eps_u, *noise, *grad, *tmp;
  sg_sampler *sampler;
  char *err;
  size_t errlen;
} gen;

static void gen_free(gen *g) {
  for (int i = 0; i < MAX_IMAGES; i++) ts_rng_free(g->rng[i]);
  ts_tensor_free(g->ctx_c);
  ts_tensor_free(g->ctx_u);
  ts_tensor_free(g->ctx_both);
  ts_tensor_free(g->target);
  free(g->z), free(g->zin), free(g->eps), free(g->eps_u), free(g->noise), free(g->grad), free(g->tmp);
  sg_sampler_free(g->sampler);
}

static int torch_fail(gen *g, const char *what) {
  sg_set_err(g->err, g->errlen, "%s: %s", what, ts_last_error());
  return SG_GENERATE_ERUNTIME;
}

/* Text contexts for `copies` repetitions of each prompt, stacked: [prompts[0] x copies[0], prompts[1] x ...]. */
static ts_tensor *encode_text(gen *g, const char *const *prompts, const int32_t *copies, int np) {
  const sg_tokenizer *tok = sg_model_tokenizer(g->m);
  int32_t L = sg_tokenizer_max_length(tok), total = 0, ids32[4096];
  for (int i = 0; i < np; i++) total += copies[i];
  int64_t *ids = malloc((size_t)total * (size_t)L * sizeof *ids);
  if (!ids || L > 4096) {
    free(ids);
    sg_set_err(g->err, g->errlen, "out of memory");
    return NULL;
  }
  int64_t row = 0;
  for (int i = 0; i < np; i++) {
    if (sg_tokenizer_input_ids(tok, prompts[i], strlen(prompts[i]), ids32, (size_t)L, NULL)) {
      free(ids);
      sg_set_err(g->err, g->errlen, "tokenizer failed");
      return NULL;
    }
    for (int32_t c = 0; c < copies[i]; c++, row++)
      for (int32_t k = 0; k < L; k++) ids[row * L + k] = ids32[k];
  }
  int64_t shape[2] = {total, L};
  ts_tensor *t = ts_tensor_from_host(ids, TS_INT64, shape, 2, g->info->device), *ctx = NULL;
  free(ids);
  if (!t || ts_module_forward(sg_model_text_encoder(g->m), &t, 1, &ctx, 1) != 1) {
    torch_fail(g, "text encoder");
    ctx = NULL;
  }
  ts_tensor_free(t);
  return ctx;
}

/* E(sketch): the scaled VAE mean of the sketch map, repeated for every image. */
static int encode_target(gen *g, const float *sketch) {
  int32_t S = g->info->image_size;
  size_t px = (size_t)S * S;
  float *x = malloc(3 * px * sizeof *x);
  if (!x) return SG_GENERATE_ENOMEM;
  for (size_t i = 0; i < px; i++) x[i] = x[px + i] = x[2 * px + i] = sketch[i] * 2.0f - 1.0f;
  int64_t shape[4] = {1, 3, S, S};
  ts_tensor *xt = ts_tensor_from_host(x, TS_FLOAT32, shape, 4, g->info->device), *out[2] = {NULL, NULL};
  free(x);
  int n = xt ? ts_module_forward(sg_model_vae_encoder(g->m), &xt, 1, out, 2) : -1;
  ts_tensor_free(xt);
  int rc = 0;
  if (n < 1 || (size_t)ts_tensor_numel(out[0]) != g->len) {
    rc = n < 1 ? torch_fail(g, "VAE encoder") : SG_GENERATE_ERUNTIME;
    if (n >= 1) sg_set_err(g->err, g->errlen, "VAE encoder: unexpected latent size");
  } else if (ts_tensor_to_host(out[0], g->tmp, g->len * sizeof(float))) {
    rc = torch_fail(g, "VAE encoder");
  } else {
    for (int32_t k = 0; k < g->n; k++)
      for (size_t i = 0; i < g->len; i++) g->z[k * g->len + i] = g->tmp[i] * (float)g->info->scaling_factor;
    g->target = ts_tensor_from_host(g->z, TS_FLOAT32, g->shape, 4, g->info->device);
    if (!g->target) rc = torch_fail(g, "target");
  }
  ts_tensors_free(out, n > 0 ? n : 0);
  return rc;
}

static ts_tensor *timestep_tensor(gen *g, double t, int32_t count, int fractional) {
  int64_t shape[1] = {count};
  if (fractional) {
    float v[2 * MAX_IMAGES];
    for (int32_t i = 0; i < count; i++) v[i] = (float)t;
    return ts_tensor_from_host(v, TS_FLOAT32, shape, 1, g->info->device);
  }
  int64_t v[2 * MAX_IMAGES];
  for (int32_t i = 0; i < count; i++) v[i] = (int64_t)llround(t);
  return ts_tensor_from_host(v, TS_INT64, shape, 1, g->info->device);
}

/* Runs the U-Net on a host input of `count` images and copies the noise prediction into eps. */
static int unet_eps(gen *g, const float *zin, int32_t count, ts_tensor *t, ts_tensor *ctx, float *eps) {
  ts_tensor *zt = ts_tensor_from_host(zin, TS_FLOAT32, count == g->n ? g->shape : g->shape2, 4, g->info->device);
  ts_tensor *outs[64];
  int n = zt ? ts_module_forward(sg_model_unet(g->m), (ts_tensor *[]){zt, t, ctx}, 3, outs, 64) : -1;
  ts_tensor_free(zt);
  int rc = 0;
  if (n < 1 || ts_tensor_to_host(outs[0], eps, (size_t)count * g->len * sizeof(float))) rc = torch_fail(g, "U-Net");
  ts_tensors_free(outs, n > 0 ? n : 0);
  return rc;
}

static int validate(const sg_model *m, const sg_generate_params *p, char *err, size_t errlen) {
#define BAD(param, ...)                       \
  do {                                        \
    sg_set_err(err, errlen, param ": " __VA_ARGS__); \
    return SG_GENERATE_EINVAL;                \
  } while (0)
  if (!p->prompt) BAD("prompt", "required");
  if (sg_sampler_kind_parse(sg_sampler_kind_name(p->sampler)) < 0) BAD("sampler", "unknown");
  int32_t max_steps = sg_sampler_max_steps(sg_model_get_info(m)->schedule, p->sampler);
  if (p->steps < 1 || p->steps > max_steps)
    BAD("steps", "must be between 1 and %d for %s", (int)max_steps, sg_sampler_kind_name(p->sampler));
  if (!(p->cfg >= 0 && p->cfg <= 100)) BAD("cfg", "must be between 0 and 100");
  if (!(p->beta >= 0 && p->beta <= 100)) BAD("beta", "must be between 0 and 100");
  if (!(p->stop >= 0 && p->stop <= 1)) BAD("stop", "must be between 0 and 1");
  if (p->stop_step < -1 || p->stop_step > p->steps) BAD("stop_step", "must be between 0 and steps");
  if (p->seed < 0 || p->seed > INT64_MAX - MAX_IMAGES) BAD("seed", "must be between 0 and 2^63 - 65");
  if (p->n_images < 1 || p->n_images > MAX_IMAGES) BAD("n", "must be between 1 and %d", MAX_IMAGES);
  if (!(p->eta >= 0 && p->eta <= 10)) BAD("eta", "must be between 0 and 10");
#undef BAD
  return 0;
}

int sg_generate(sg_model *m, const sg_generate_params *p, sg_result *out, char *err, size_t errlen) {
  if (!m || !p || !out) {
    sg_set_err(err, errlen, "missing argument");
    return SG_GENERATE_EINVAL;
  }
  memset(out, 0, sizeof *out);
  if (err && errlen) *err = 0;
  int rc = validate(m, p, err, errlen);
  if (rc) return rc;
  gen g;
  memset(&g, 0, sizeof g);
  g.m = m;
  g.info = sg_model_get_info(m);
  g.err = err;
  g.errlen = errlen;
  g.n = p->n_images;
  int32_t C = g.info->latent_channels, h = g.info->latent_size;
  g.len = (size_t)C * h * h;
  int64_t shape[4] = {g.n, C, h, h}, shape2[4] = {2 * g.n, C, h, h};
  memcpy(g.shape, shape, sizeof shape);
  memcpy(g.shape2, shape2, sizeof shape2);
  int32_t guided = p->sketch && p->beta > 0 ? sg_generate_guided_steps(p->steps, p->stop, p->stop_step) : 0;
  if (guided && !sg_model_lgp(m)) {
    sg_set_err(err, errlen, "beta: this model has no LGP, so it cannot follow a sketch");
    return SG_GENERATE_ENOLGP;
  }
  size_t tot = (size_t)g.n * g.len;
  sg_sampler_params sp = {p->sampler, p->steps, p->eta};
  g.sampler = sg_sampler_new(g.info->schedule, sp, tot, err, errlen);
  g.z = malloc(tot * sizeof *g.z);
  g.zin = malloc(2 * tot * sizeof *g.zin);
  g.eps = malloc(2 * tot * sizeof *g.eps);
  g.eps_u = malloc(tot * sizeof *g.eps_u);
  g.noise = malloc(tot * sizeof *g.noise);
  g.grad = malloc(tot * sizeof *g.grad);
  g.tmp = malloc(tot * sizeof *g.tmp);
  out->seeds = malloc((size_t)g.n * sizeof *out->seeds);
  if (!g.sampler) {
    gen_free(&g);
    sg_result_free(out);
    return SG_GENERATE_EINVAL;
  }
  if (!g.z || !g.zin || !g.eps || !g.eps_u || !g.noise || !g.grad || !g.tmp || !out->seeds) {
    rc = SG_GENERATE_ENOMEM;
    sg_set_err(err, errlen, "out of memory");
    goto done;
  }
  int fractional = p->sampler == SG_SAMPLER_EULER_A || p->sampler == SG_SAMPLER_DPMPP_2M;
  int use_u = p->cfg != 1.0;
  sg_timings *tm = &out->timings;
  double c0 = now_s(), c1;
  ts_profile_enable(p->profile);
  ts_profile_take(NULL, NULL, NULL);
  {
    const char *prompts[2] = {p->negative_prompt ? p->negative_prompt : "", p->prompt};
    int32_t cu[2] = {0, g.n}, cuc[2] = {g.n, 0}, both[2] = {g.n, g.n};
    if (!(g.ctx_c = encode_text(&g, prompts, cu, 2))) goto runtime;
    if (use_u && (!(g.ctx_u = encode_text(&g, prompts, cuc, 2)) || !(g.ctx_both = encode_text(&g, prompts, both, 2))))
      goto runtime;
  }
  c1 = now_s();
  tm->text = c1 - c0;
  if (guided && (rc = encode_target(&g, p->sketch))) goto done;
  tm->vae_encode = now_s() - c1;
  double s0 = sg_sampler_init_sigma(g.sampler);
  for (int32_t k = 0; k < g.n; k++) {
    out->seeds[k] = p->seed + k;
    if (!(g.rng[k] = ts_rng_new((uint64_t)(p->seed + k))) ||
        ts_rng_randn(g.rng[k], g.z + k * g.len, g.shape + 1, 3))
      goto runtime;
    if (s0 != 1.0)
      for (size_t i = 0; i < g.len; i++) g.z[k * g.len + i] *= (float)s0;
  }
  out->guided_steps = guided;
  for (int32_t i = 0; i < p->steps; i++) {
    if (p->cancel && *p->cancel) {
      rc = SG_GENERATE_ECANCEL;
      sg_set_err(err, errlen, "cancelled");
      goto done;
    }
    double t = sg_sampler_timestep(g.sampler, i);
    float sc = (float)sg_sampler_input_scale(g.sampler, i);
    for (size_t k = 0; k < tot; k++) g.zin[k] = g.z[k] * sc;
    float *eps_c = g.eps + (use_u ? tot : 0);
    ts_tensor *tn = timestep_tensor(&g, t, g.n, fractional), *t2 = NULL;
    if (!tn) goto runtime;
    double s0 = now_s(), s1 = s0;
    if (i < guided) {
      if (use_u && unet_eps(&g, g.zin, g.n, tn, g.ctx_u, g.eps)) {
        ts_tensor_free(tn);
        rc = SG_GENERATE_ERUNTIME;
        goto done;
      }
      s1 = now_s();
      tm->unet += s1 - s0;
      ts_tensor *zt = ts_tensor_from_host(g.zin, TS_FLOAT32, g.shape, 4, g.info->device), *et = NULL, *gt = NULL;
      int bad = !zt ||
                ts_guidance_grad(sg_model_unet(m), sg_model_lgp(m), zt, tn, g.ctx_c, g.target, &et, &gt, NULL) ||
                ts_tensor_to_host(et, eps_c, tot * sizeof(float)) || ts_tensor_to_host(gt, g.grad, tot * sizeof(float));
      ts_tensor_free(zt), ts_tensor_free(et), ts_tensor_free(gt), ts_tensor_free(tn);
      if (bad) {
        rc = torch_fail(&g, "guidance");
        goto done;
      }
      tn = NULL;
      double uf, lg, bw, s2 = now_s();
      ts_profile_take(&uf, &lg, &bw);
      tm->guided_forward += uf;
      tm->lgp += lg;
      tm->backward += bw;
      tm->sampler += (s2 - s1) - (uf + lg + bw); /* copies in and out */
      s1 = s2;
    } else if (use_u) {
      memcpy(g.zin + tot, g.zin, tot * sizeof(float));
      t2 = timestep_tensor(&g, t, 2 * g.n, fractional);
      if (!t2 || unet_eps(&g, g.zin, 2 * g.n, t2, g.ctx_both, g.eps)) {
        ts_tensor_free(tn), ts_tensor_free(t2);
        rc = SG_GENERATE_ERUNTIME;
        goto done;
      }
    } else if (unet_eps(&g, g.zin, g.n, tn, g.ctx_c, g.eps)) {
      ts_tensor_free(tn);
      rc = SG_GENERATE_ERUNTIME;
      goto done;
    }
    ts_tensor_free(tn), ts_tensor_free(t2);
    if (i >= guided) s1 = now_s(), tm->unet += s1 - s0;
    float w = (float)p->cfg;
    if (use_u)
      for (size_t k = 0; k < tot; k++) g.eps_u[k] = g.eps[k] + w * (eps_c[k] - g.eps[k]);
    else
      memcpy(g.eps_u, g.eps, tot * sizeof(float));
    if (sg_sampler_needs_noise(g.sampler, i))
      for (int32_t k = 0; k < g.n; k++)
        if (ts_rng_randn(g.rng[k], g.noise + k * g.len, g.shape + 1, 3)) goto runtime;
    if (sg_sampler_step(g.sampler, i, g.z, g.eps_u, g.noise, g.tmp)) {
      rc = SG_GENERATE_EINVAL;
      sg_set_err(err, errlen, "sampler step failed");
      goto done;
    }
    if (i < guided) {
      /* alpha = beta ||z_t - z_prev|| / ||g||, per image (one beta per call here), with z_prev the step's mean: the
       * fresh noise of an ancestral step is taken out while the move is normalised and put back after it (counted
       * in, it made the move several times larger with ddpm and euler_a; docs/guidance.md) */
      float betas[MAX_IMAGES], cn = (float)sg_sampler_noise_scale(g.sampler, i);
      for (int32_t k = 0; k < g.n; k++) betas[k] = (float)(p->beta * sg_sampler_move_ratio(g.sampler, i));
      for (size_t k = 0; cn != 0.0f && k < tot; k++) g.tmp[k] -= cn * g.noise[k];
      if (ts_guidance_move(g.tmp, g.z, g.grad, betas, g.n, (int64_t)g.len)) goto runtime;
      for (size_t k = 0; cn != 0.0f && k < tot; k++) g.tmp[k] += cn * g.noise[k];
    }
    memcpy(g.z, g.tmp, tot * sizeof(float));
    if (p->trace) memcpy(p->trace + (size_t)i * tot, g.z, tot * sizeof(float));
    tm->sampler += now_s() - s1;
    if (p->progress && p->progress(p->progress_user, i + 1, p->steps)) {
      rc = SG_GENERATE_ECANCEL;
      sg_set_err(err, errlen, "cancelled");
      goto done;
    }
  }
  double d0 = now_s();
  {
    /* decode: latent / scaling_factor -> VAE decoder -> [-1, 1] -> 8-bit RGB */
    int32_t S = g.info->image_size;
    size_t px = (size_t)S * S;
    for (size_t k = 0; k < tot; k++) g.zin[k] = g.z[k] / (float)g.info->scaling_factor;
    ts_tensor *zt = ts_tensor_from_host(g.zin, TS_FLOAT32, g.shape, 4, g.info->device), *img = NULL;
    float *rgb = malloc((size_t)g.n * 3 * px * sizeof *rgb);
    out->pixels = malloc((size_t)g.n * 3 * px);
    int n = zt ? ts_module_forward(sg_model_vae_decoder(m), &zt, 1, &img, 1) : -1;
    int bad = !rgb || !out->pixels || n != 1 || ts_tensor_to_host(img, rgb, (size_t)g.n * 3 * px * sizeof *rgb);
    ts_tensor_free(zt);
    ts_tensor_free(img);
    if (bad) {
      free(rgb);
      if (n != 1 || (rgb && out->pixels)) torch_fail(&g, "VAE decoder");
      else sg_set_err(err, errlen, "out of memory");
      rc = n != 1 || (rgb && out->pixels) ? SG_GENERATE_ERUNTIME : SG_GENERATE_ENOMEM;
      goto done;
    }
    for (int32_t k = 0; k < g.n; k++)
      for (size_t i = 0; i < px; i++)
        for (int c = 0; c < 3; c++) {
          float v = (rgb[((size_t)k * 3 + c) * px + i] + 1.0f) / 2.0f;
          v = v < 0 ? 0 : v > 1 ? 1 : v;
          out->pixels[((size_t)k * px + i) * 3 + c] = (uint8_t)nearbyintf(v * 255.0f);
        }
    free(rgb);
    out->n = g.n;
    out->width = out->height = S;
    out->latent_len = g.len;
    out->latents = g.z;
    g.z = NULL;
  }
  tm->vae_decode = now_s() - d0;
  tm->total = now_s() - c0;
  ts_profile_enable(0);
  gen_free(&g);
  return SG_GENERATE_OK;
runtime:
  if (err && errlen && !*err) sg_set_err(err, errlen, "libtorch: %s", ts_last_error());
  rc = SG_GENERATE_ERUNTIME;
done:
  ts_profile_enable(0);
  gen_free(&g);
  sg_result_free(out);
  return rc;
}
