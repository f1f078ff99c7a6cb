/* Sketch-guided sampling over the model's modules: CFG, sampler step, LGP gradient move (METHOD.md, section 3.2),
 * as a step-level engine whose batch step advances several generations in one U-Net pass. */
#include "generate.h"

#include "errbuf.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_IMAGES 64
/* The largest guided push, as a fraction of the noise in the next step's U-Net input (tools/sample.py's PUSH_CAP;
 * docs/guidance.md): a larger one is more than the remaining steps remove, and stays as texture over plain
 * backgrounds (DDIM and DDPM at beta 3, 25 steps). At DDIM 50 steps, beta 1.6, pushes are at most 0.14 of it. */
#define PUSH_CAP 0.2

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

/* One generation in progress; everything is freed in sg_generation_free. */
struct sg_generation {
  sg_model *m;
  const sg_model_info *info;
  int32_t n;
  size_t len; /* floats per image */
  int64_t shape[4];
  int32_t steps, guided, step; /* asked, guided, done */
  double cfg, beta;
  int use_u, fractional, profile, failed;
  float *trace;
  ts_rng *rng[MAX_IMAGES];
  int64_t seeds[MAX_IMAGES];
  ts_tensor *ctx_c, *ctx_u, *target; /* n rows each */
  float *z, *zin, *eps, *eps_u, *noise, *grad, *tmp;
  sg_sampler *sampler;
  sg_timings tm;
  double t0;
  char *err;
  size_t errlen;
};

void sg_generation_free(sg_generation *g) {
  if (!g) return;
  for (int i = 0; i < MAX_IMAGES; i++) ts_rng_free(g->rng[i]);
  ts_tensor_free(g->ctx_c);
  ts_tensor_free(g->ctx_u);
  ts_tensor_free(g->target);
  free(g->z), free(g->zin), free(g->eps), free(g->eps_u), free(g->noise), free(g->grad), free(g->tmp);
  sg_sampler_free(g->sampler);
  free(g);
}

static int torch_fail(char *err, size_t errlen, const char *what) {
  sg_set_err(err, errlen, "%s: %s", what, ts_last_error());
  return SG_GENERATE_ERUNTIME;
}

/* The text context of one prompt, repeated for the generation's n images. Returns NULL with a message. */
static ts_tensor *encode_text(sg_generation *g, const char *prompt) {
  const sg_tokenizer *tok = sg_model_tokenizer(g->m);
  int32_t L = sg_tokenizer_max_length(tok), ids32[4096];
  int64_t ids[4096];
  if (L > 4096) {
    sg_set_err(g->err, g->errlen, "tokenizer: context longer than 4096");
    return NULL;
  }
  if (sg_tokenizer_input_ids(tok, prompt, strlen(prompt), ids32, (size_t)L, NULL)) {
    sg_set_err(g->err, g->errlen, "tokenizer failed");
    return NULL;
  }
  for (int32_t k = 0; k < L; k++) ids[k] = ids32[k];
  int64_t shape[2] = {1, L};
  ts_tensor *t = ts_tensor_from_host(ids, TS_INT64, shape, 2, g->info->device), *ctx = NULL, *rep = NULL;
  if (!t || ts_module_forward(sg_model_text_encoder(g->m), &t, 1, &ctx, 1) != 1) {
    torch_fail(g->err, g->errlen, "text encoder");
    ctx = NULL;
  }
  ts_tensor_free(t);
  if (ctx) {
    const ts_tensor *parts[MAX_IMAGES];
    for (int32_t k = 0; k < g->n; k++) parts[k] = ctx;
    if (!(rep = ts_tensor_cat(parts, g->n))) torch_fail(g->err, g->errlen, "text context");
  }
  ts_tensor_free(ctx);
  return rep;
}

/* E(sketch): the scaled VAE mean of the sketch map, repeated for every image. Returns 0 or a negative code. */
static int encode_target(sg_generation *g, const float *sketch) {
  int32_t S = g->info->image_size;
  size_t px = (size_t)S * S;
  float *x = malloc(3 * px * sizeof *x);
  if (!x) {
    sg_set_err(g->err, g->errlen, "out of memory");
    return SG_GENERATE_ENOMEM;
  }
  for (size_t i = 0; i < px; i++) x[i] = x[px + i] = x[2 * px + i] = sketch[i] * 2.0f - 1.0f;
  int64_t shape[4] = {1, 3, S, S};
  ts_tensor *xt = ts_tensor_from_host(x, TS_FLOAT32, shape, 4, g->info->device), *out[2] = {NULL, NULL};
  free(x);
  int n = xt ? ts_module_forward(sg_model_vae_encoder(g->m), &xt, 1, out, 2) : -1;
  ts_tensor_free(xt);
  int rc = 0;
  if (n < 1) {
    rc = torch_fail(g->err, g->errlen, "VAE encoder");
  } else if ((size_t)ts_tensor_numel(out[0]) != g->len) {
    rc = SG_GENERATE_ERUNTIME;
    sg_set_err(g->err, g->errlen, "VAE encoder: unexpected latent size");
  } else if (ts_tensor_to_host(out[0], g->tmp, g->len * sizeof(float))) {
    rc = torch_fail(g->err, g->errlen, "VAE encoder");
  } else {
    for (int32_t k = 0; k < g->n; k++)
      for (size_t i = 0; i < g->len; i++) g->zin[k * g->len + i] = g->tmp[i] * (float)g->info->scaling_factor;
    g->target = ts_tensor_from_host(g->zin, TS_FLOAT32, g->shape, 4, g->info->device);
    if (!g->target) rc = torch_fail(g->err, g->errlen, "target");
  }
  ts_tensors_free(out, n > 0 ? n : 0);
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

int sg_generation_start(sg_model *m, const sg_generate_params *p, sg_generation **out, char *err, size_t errlen) {
  if (out) *out = NULL;
  if (err && errlen) *err = 0;
  if (!m || !p || !out) {
    sg_set_err(err, errlen, "missing argument");
    return SG_GENERATE_EINVAL;
  }
  int rc = validate(m, p, err, errlen);
  if (rc) return rc;
  const sg_model_info *info = sg_model_get_info(m);
  int32_t guided = p->sketch && p->beta > 0 ? sg_generate_guided_steps(p->steps, p->stop, p->stop_step) : 0;
  if (guided && !sg_model_lgp(m)) {
    sg_set_err(err, errlen, "beta: this model has no LGP, so it cannot follow a sketch");
    return SG_GENERATE_ENOLGP;
  }
  sg_generation *g = calloc(1, sizeof *g);
  if (!g) {
    sg_set_err(err, errlen, "out of memory");
    return SG_GENERATE_ENOMEM;
  }
  g->t0 = now_s();
  g->m = m;
  g->info = info;
  g->err = err;
  g->errlen = errlen;
  g->n = p->n_images;
  int32_t C = info->latent_channels, h = info->latent_size;
  g->len = (size_t)C * h * h;
  int64_t shape[4] = {g->n, C, h, h};
  memcpy(g->shape, shape, sizeof shape);
  g->steps = p->steps;
  g->guided = guided;
  g->cfg = p->cfg;
  g->beta = p->beta;
  g->use_u = p->cfg != 1.0;
  g->fractional = p->sampler == SG_SAMPLER_EULER_A || p->sampler == SG_SAMPLER_DPMPP_2M;
  g->profile = p->profile;
  g->trace = p->trace;
  size_t tot = (size_t)g->n * g->len;
  sg_sampler_params sp = {p->sampler, p->steps, p->eta};
  g->sampler = sg_sampler_new(info->schedule, sp, tot, err, errlen);
  if (!g->sampler) {
    sg_generation_free(g);
    return SG_GENERATE_EINVAL;
  }
  g->z = malloc(tot * sizeof *g->z);
  g->zin = malloc(tot * sizeof *g->zin);
  g->eps = malloc(2 * tot * sizeof *g->eps);
  g->eps_u = malloc(tot * sizeof *g->eps_u);
  g->noise = malloc(tot * sizeof *g->noise);
  g->grad = malloc(tot * sizeof *g->grad);
  g->tmp = malloc(tot * sizeof *g->tmp);
  if (!g->z || !g->zin || !g->eps || !g->eps_u || !g->noise || !g->grad || !g->tmp) {
    rc = SG_GENERATE_ENOMEM;
    sg_set_err(err, errlen, "out of memory");
    goto fail;
  }
  ts_profile_enable(p->profile);
  ts_profile_take(NULL, NULL, NULL);
  double c1;
  if (!(g->ctx_c = encode_text(g, p->prompt)) ||
      (g->use_u && !(g->ctx_u = encode_text(g, p->negative_prompt ? p->negative_prompt : "")))) {
    rc = SG_GENERATE_ERUNTIME;
    goto fail;
  }
  c1 = now_s();
  g->tm.text = c1 - g->t0;
  if (guided && (rc = encode_target(g, p->sketch))) goto fail;
  g->tm.vae_encode = now_s() - c1;
  double s0 = sg_sampler_init_sigma(g->sampler);
  for (int32_t k = 0; k < g->n; k++) {
    g->seeds[k] = p->seed + k;
    if (!(g->rng[k] = ts_rng_new((uint64_t)(p->seed + k))) || ts_rng_randn(g->rng[k], g->z + k * g->len, g->shape + 1, 3)) {
      rc = torch_fail(err, errlen, "initial noise");
      goto fail;
    }
    if (s0 != 1.0)
      for (size_t i = 0; i < g->len; i++) g->z[k * g->len + i] *= (float)s0;
  }
  ts_profile_enable(0);
  g->err = NULL;
  g->errlen = 0;
  *out = g;
  return 0;
fail:
  ts_profile_enable(0);
  sg_generation_free(g);
  return rc;
}

int32_t sg_generation_step_index(const sg_generation *g) { return g ? g->step : 0; }
int32_t sg_generation_steps(const sg_generation *g) { return g ? g->steps : 0; }
int32_t sg_generation_guided_steps(const sg_generation *g) { return g ? g->guided : 0; }
int sg_generation_done(const sg_generation *g) { return !g || g->step >= g->steps; }

int32_t sg_generation_rows(const sg_generation *g) {
  if (!g || g->step >= g->steps) return 0;
  return g->n * (g->use_u ? 2 : 1);
}

/* The shared U-Net passes of one step for members gs[0..n): eps (unconditional first, then conditional) and, on
 * guided steps, grad, into each member's buffers, with the pass times shared out by rows. Changes no member's
 * sampling state, so that a failure can be retried member by member. Returns 0 or a negative code with the
 * message in err. */
static int batch_passes(sg_generation *const *gs, int32_t n, char *err, size_t errlen) {
  sg_model *m = gs[0]->m;
  const sg_model_info *info = gs[0]->info;
  size_t len = gs[0]->len;
  int32_t ng_rows = 0, g_rows = 0, fractional = 0, profile = 0;
  for (int32_t k = 0; k < n; k++) {
    sg_generation *g = gs[k];
    int guided = g->step < g->guided;
    ng_rows += g->n * (g->use_u + !guided);
    g_rows += guided ? g->n : 0;
    fractional |= g->fractional;
    profile |= g->profile;
    float sc = (float)sg_sampler_input_scale(g->sampler, g->step);
    size_t tot = (size_t)g->n * len;
    for (size_t i = 0; i < tot; i++) g->zin[i] = g->z[i] * sc;
  }
  int32_t rows = ng_rows > g_rows ? ng_rows : g_rows;
  float *zin = malloc((size_t)rows * len * sizeof *zin), *eps = malloc((size_t)rows * len * sizeof *eps);
  float *grad = g_rows ? malloc((size_t)g_rows * len * sizeof *grad) : NULL;
  double *tf = malloc((size_t)rows * sizeof *tf);
  float *tv32 = malloc((size_t)rows * sizeof *tv32);
  int64_t *tv64 = malloc((size_t)rows * sizeof *tv64);
  const ts_tensor **ctx = malloc((size_t)2 * n * sizeof *ctx), **tgt = malloc((size_t)n * sizeof *tgt);
  int rc = 0;
  if (!zin || !eps || (g_rows && !grad) || !tf || !tv32 || !tv64 || !ctx || !tgt) {
    sg_set_err(err, errlen, "out of memory");
    rc = SG_GENERATE_ENOMEM;
    goto done;
  }
  ts_profile_enable(profile);
  ts_profile_take(NULL, NULL, NULL);
  for (int pass = 0; pass < 2 && rc == 0; pass++) {
    /* pass 0: without gradients, every unconditional branch and the conditional branch of unguided steps;
       pass 1: with gradients, the conditional branch of guided steps */
    int32_t r = 0, nc = 0, nt = 0;
    for (int32_t k = 0; k < n; k++) {
      sg_generation *g = gs[k];
      int guided = g->step < g->guided;
      double t = sg_sampler_timestep(g->sampler, g->step);
      size_t tot = (size_t)g->n * len;
      for (int b = 0; b < 2; b++) {
        int cond = b == 1;
        if (pass == 0 ? (cond ? guided : !g->use_u) : (!cond || !guided)) continue;
        memcpy(zin + (size_t)r * len, g->zin, tot * sizeof *zin);
        for (int32_t i = 0; i < g->n; i++) tf[r + i] = t;
        r += g->n;
        ctx[nc++] = cond ? g->ctx_c : g->ctx_u;
        if (pass == 1) tgt[nt++] = g->target;
      }
    }
    if (r == 0) continue;
    for (int32_t i = 0; i < r; i++) tv32[i] = (float)tf[i], tv64[i] = (int64_t)llround(tf[i]);
    int64_t shape[4] = {r, gs[0]->shape[1], gs[0]->shape[2], gs[0]->shape[3]}, tshape[1] = {r};
    double s0 = now_s();
    ts_tensor *zt = ts_tensor_from_host(zin, TS_FLOAT32, shape, 4, info->device);
    ts_tensor *tt = fractional ? ts_tensor_from_host(tv32, TS_FLOAT32, tshape, 1, info->device)
                               : ts_tensor_from_host(tv64, TS_INT64, tshape, 1, info->device);
    ts_tensor *ct = ts_tensor_cat(ctx, nc), *target = pass == 1 ? ts_tensor_cat(tgt, nt) : NULL;
    double uf = 0, lg = 0, bw = 0;
    if (!zt || !tt || !ct || (pass == 1 && !target)) {
      rc = torch_fail(err, errlen, "U-Net inputs");
    } else if (pass == 0) {
      ts_tensor *outs[64];
      int no = ts_module_forward(sg_model_unet(m), (ts_tensor *[]){zt, tt, ct}, 3, outs, 64);
      if (no < 1 || ts_tensor_to_host(outs[0], eps, (size_t)r * len * sizeof *eps)) rc = torch_fail(err, errlen, "U-Net");
      ts_tensors_free(outs, no > 0 ? no : 0);
    } else {
      ts_tensor *et = NULL, *gt = NULL;
      if (ts_guidance_grad(sg_model_unet(m), sg_model_lgp(m), zt, tt, ct, target, &et, &gt, NULL) ||
          ts_tensor_to_host(et, eps, (size_t)r * len * sizeof *eps) ||
          ts_tensor_to_host(gt, grad, (size_t)r * len * sizeof *grad))
        rc = torch_fail(err, errlen, "guidance");
      ts_tensor_free(et), ts_tensor_free(gt);
      ts_profile_take(&uf, &lg, &bw);
    }
    ts_tensor_free(zt), ts_tensor_free(tt), ts_tensor_free(ct), ts_tensor_free(target);
    if (rc) break;
    double el = now_s() - s0;
    /* scatter the rows back, sharing the pass's time out by rows */
    r = 0;
    for (int32_t k = 0; k < n; k++) {
      sg_generation *g = gs[k];
      int guided = g->step < g->guided;
      size_t tot = (size_t)g->n * len;
      int32_t mine = 0;
      for (int b = 0; b < 2; b++) {
        int cond = b == 1;
        if (pass == 0 ? (cond ? guided : !g->use_u) : (!cond || !guided)) continue;
        float *dst = g->eps + (cond && g->use_u ? tot : 0);
        memcpy(dst, eps + (size_t)r * len, tot * sizeof *eps);
        if (pass == 1) memcpy(g->grad, grad + (size_t)r * len, tot * sizeof *grad);
        r += g->n;
        mine += g->n;
      }
      if (!mine) continue;
      double f = (double)mine / (pass == 0 ? ng_rows : g_rows);
      if (pass == 0) {
        g->tm.unet += f * el;
      } else {
        g->tm.guided_forward += f * uf;
        g->tm.lgp += f * lg;
        g->tm.backward += f * bw;
        g->tm.sampler += f * (el - (uf + lg + bw)); /* copies in and out */
      }
    }
  }
done:
  ts_profile_enable(0);
  free(zin), free(eps), free(grad), free(tf), free(tv32), free(tv64), free(ctx), free(tgt);
  return rc;
}

/* The member's own part of a step once its U-Net outputs are in: cfg, noise, sampler step, guidance move. */
static int member_step(sg_generation *g, char *err, size_t errlen) {
  double s1 = now_s();
  size_t tot = (size_t)g->n * g->len;
  int32_t i = g->step;
  float w = (float)g->cfg, *eps_c = g->eps + (g->use_u ? tot : 0);
  if (g->use_u)
    for (size_t k = 0; k < tot; k++) g->eps_u[k] = g->eps[k] + w * (eps_c[k] - g->eps[k]);
  else
    memcpy(g->eps_u, g->eps, tot * sizeof(float));
  if (sg_sampler_needs_noise(g->sampler, i))
    for (int32_t k = 0; k < g->n; k++)
      if (ts_rng_randn(g->rng[k], g->noise + k * g->len, g->shape + 1, 3)) return torch_fail(err, errlen, "noise");
  if (sg_sampler_step(g->sampler, i, g->z, g->eps_u, g->noise, g->tmp)) {
    sg_set_err(err, errlen, "sampler step failed");
    return SG_GENERATE_EINVAL;
  }
  if (i < g->guided) {
    /* alpha = beta ||z_t - z_prev|| / ||g||, per image, with z_prev the step's mean: the fresh noise of an ancestral
     * step is taken out while the move is normalised and put back after it (counted in, it made the move several
     * times larger with ddpm and euler_a; docs/guidance.md) */
    float betas[MAX_IMAGES], caps[MAX_IMAGES], cn = (float)sg_sampler_noise_scale(g->sampler, i);
    /* each push at most PUSH_CAP x the noise in the next step's U-Net input, root mean square per value */
    float cap = (float)(PUSH_CAP * sg_sampler_next_noise(g->sampler, i) * sqrt((double)g->len));
    for (int32_t k = 0; k < g->n; k++) {
      betas[k] = (float)g->beta;
      caps[k] = cap;
    }
    for (size_t k = 0; cn != 0.0f && k < tot; k++) g->tmp[k] -= cn * g->noise[k];
    if (sg_sampler_sigma_space(g->sampler)) {
      /* in the U-Net's variance-preserving input, as DDIM: from z_t x s_i to the noise-free step's end (Euler
       * ancestral's mean goes past it, to sigma_down) x s_next; the push made there is scaled back by 1 / s_next.
       * In sigma-space the move also counts the noise's shrinking scale and was 1.6 to 4 times larger (euler_a at
       * 25 steps, beta 3: coloured backgrounds). eps's two buffers are free once eps_u is formed. */
      float ratio = (float)sg_sampler_move_ratio(g->sampler, i), sc = (float)sg_sampler_input_scale(g->sampler, i);
      double s_next = sg_sampler_input_scale(g->sampler, i + 1);
      float sn = (float)s_next, inv = (float)(1.0 / s_next), *ode = g->eps, *pushed = g->eps + tot;
      for (size_t k = 0; k < tot; k++) {
        g->zin[k] = g->z[k] * sc;
        ode[k] = (g->z[k] + (g->tmp[k] - g->z[k]) * ratio) * sn;
        pushed[k] = ode[k];
      }
      if (ts_guidance_move(pushed, g->zin, g->grad, betas, caps, g->n, (int64_t)g->len))
        return torch_fail(err, errlen, "guidance");
      for (size_t k = 0; k < tot; k++) g->tmp[k] += (pushed[k] - ode[k]) * inv;
    } else if (ts_guidance_move(g->tmp, g->z, g->grad, betas, caps, g->n, (int64_t)g->len)) {
      return torch_fail(err, errlen, "guidance");
    }
    for (size_t k = 0; cn != 0.0f && k < tot; k++) g->tmp[k] += cn * g->noise[k];
  }
  for (size_t k = 0; k < tot; k++)
    if (!isfinite(g->tmp[k])) {
      sg_set_err(err, errlen, "the latents are no longer finite at step %d (a NaN or infinite input?)", (int)i + 1);
      return SG_GENERATE_ERUNTIME;
    }
  memcpy(g->z, g->tmp, tot * sizeof(float));
  if (g->trace) memcpy(g->trace + (size_t)i * tot, g->z, tot * sizeof(float));
  g->step++;
  g->tm.sampler += now_s() - s1;
  return 0;
}

int sg_generation_step_batch(sg_generation *const *gs, int32_t n, int *rc, char *errs, size_t errlen) {
  if (!gs || !rc || n < 1) return SG_GENERATE_EINVAL;
  char scratch[256];
#define ERR_OF(k) (errs && errlen ? errs + (size_t)(k) * errlen : scratch)
#define ERRLEN (errs && errlen ? errlen : sizeof scratch)
  sg_generation *stack[16], **live = n <= 16 ? stack : malloc((size_t)n * sizeof *live);
  int32_t *idx = malloc((size_t)n * sizeof *idx);
  if (!live || !idx) {
    if (live != stack) free(live);
    free(idx);
    for (int32_t k = 0; k < n; k++) rc[k] = SG_GENERATE_ENOMEM, sg_set_err(ERR_OF(k), ERRLEN, "out of memory");
    return n;
  }
  int32_t nl = 0, failed = 0;
  const sg_model *model = NULL;
  for (int32_t k = 0; k < n && !model; k++)
    if (gs[k]) model = gs[k]->m;
  for (int32_t k = 0; k < n; k++) {
    rc[k] = 0;
    if (errs && errlen) errs[(size_t)k * errlen] = 0;
    sg_generation *g = gs[k];
    const char *bad = !g                      ? "no generation"
                      : g->failed             ? "this generation failed or was finished"
                      : g->step >= g->steps   ? "already done"
                      : g->m != model         ? "another model than the batch's"
                                              : NULL;
    for (int32_t j = 0; !bad && j < k; j++)
      if (gs[j] == g) bad = "twice in the batch";
    if (bad) {
      rc[k] = SG_GENERATE_EINVAL;
      sg_set_err(ERR_OF(k), ERRLEN, "%s", bad);
      failed++;
      continue;
    }
    idx[nl] = k;
    live[nl++] = g;
  }
  if (nl > 0) {
    char perr[256];
    int prc = batch_passes(live, nl, perr, sizeof perr);
    if (prc && nl > 1) {
      /* retry alone, so that the member whose pass fails fails alone */
      for (int32_t j = 0; j < nl; j++) {
        int32_t k = idx[j];
        if ((rc[k] = batch_passes(&live[j], 1, ERR_OF(k), ERRLEN))) live[j]->failed = 1, failed++;
      }
    } else if (prc) {
      rc[idx[0]] = prc;
      sg_set_err(ERR_OF(idx[0]), ERRLEN, "%s", perr);
      live[0]->failed = 1;
      failed++;
    }
    for (int32_t j = 0; j < nl; j++) {
      int32_t k = idx[j];
      if (rc[k]) continue;
      if ((rc[k] = member_step(live[j], ERR_OF(k), ERRLEN))) live[j]->failed = 1, failed++;
    }
  }
  if (live != stack) free(live);
  free(idx);
#undef ERR_OF
#undef ERRLEN
  return failed;
}

int sg_generation_step(sg_generation *g, char *err, size_t errlen) {
  int rc = 0;
  char e[256] = "";
  sg_generation_step_batch(&g, 1, &rc, e, sizeof e);
  if (rc) sg_set_err(err, errlen, "%s", e);
  return rc;
}

int sg_generation_finish(sg_generation *g, sg_result *out, char *err, size_t errlen) {
  if (out) memset(out, 0, sizeof *out);
  if (!g || !out) {
    sg_set_err(err, errlen, "missing argument");
    return SG_GENERATE_EINVAL;
  }
  if (g->failed || g->step < g->steps) {
    sg_set_err(err, errlen, g->failed ? "this generation failed" : "not done: %d of %d steps", (int)g->step, (int)g->steps);
    return SG_GENERATE_EINVAL;
  }
  double d0 = now_s();
  /* decode: latent / scaling_factor -> VAE decoder -> [-1, 1] -> 8-bit RGB */
  int32_t S = g->info->image_size;
  size_t px = (size_t)S * S, tot = (size_t)g->n * g->len;
  for (size_t k = 0; k < tot; k++) g->zin[k] = g->z[k] / (float)g->info->scaling_factor;
  ts_tensor *zt = ts_tensor_from_host(g->zin, TS_FLOAT32, g->shape, 4, g->info->device), *img = NULL;
  float *rgb = malloc((size_t)g->n * 3 * px * sizeof *rgb);
  out->pixels = malloc((size_t)g->n * 3 * px);
  out->seeds = malloc((size_t)g->n * sizeof *out->seeds);
  int nimg = zt ? ts_module_forward(sg_model_vae_decoder(g->m), &zt, 1, &img, 1) : -1;
  int oom = !rgb || !out->pixels || !out->seeds;
  int bad = oom || nimg != 1 || ts_tensor_to_host(img, rgb, (size_t)g->n * 3 * px * sizeof *rgb);
  ts_tensor_free(zt);
  ts_tensor_free(img);
  if (bad) {
    free(rgb);
    sg_result_free(out);
    if (oom) {
      sg_set_err(err, errlen, "out of memory");
      return SG_GENERATE_ENOMEM;
    }
    return torch_fail(err, errlen, "VAE decoder");
  }
  for (int32_t k = 0; k < g->n; k++)
    for (size_t i = 0; i < px; i++)
      for (int c = 0; c < 3; c++) {
        float v = (rgb[((size_t)k * 3 + c) * px + i] + 1.0f) / 2.0f;
        v = v < 0 ? 0 : v > 1 ? 1 : v;
        out->pixels[((size_t)k * px + i) * 3 + c] = (uint8_t)nearbyintf(v * 255.0f);
      }
  free(rgb);
  memcpy(out->seeds, g->seeds, (size_t)g->n * sizeof *out->seeds);
  out->n = g->n;
  out->width = out->height = S;
  out->latent_len = g->len;
  out->latents = g->z;
  g->z = NULL;
  g->failed = 1; /* its latents went to out */
  out->guided_steps = g->guided;
  out->timings = g->tm;
  out->timings.vae_decode = now_s() - d0;
  out->timings.total = now_s() - g->t0;
  return 0;
}

int sg_generate(sg_model *m, const sg_generate_params *p, sg_result *out, char *err, size_t errlen) {
  if (!m || !p || !out) {
    sg_set_err(err, errlen, "missing argument");
    return SG_GENERATE_EINVAL;
  }
  memset(out, 0, sizeof *out);
  sg_generation *g;
  int rc = sg_generation_start(m, p, &g, err, errlen);
  if (rc) return rc;
  while (!sg_generation_done(g)) {
    if (p->cancel && *p->cancel) {
      rc = SG_GENERATE_ECANCEL;
      sg_set_err(err, errlen, "cancelled");
      break;
    }
    if ((rc = sg_generation_step(g, err, errlen))) break;
    if (p->progress && p->progress(p->progress_user, g->step, g->steps)) {
      rc = SG_GENERATE_ECANCEL;
      sg_set_err(err, errlen, "cancelled");
      break;
    }
  }
  if (!rc) rc = sg_generation_finish(g, out, err, errlen);
  sg_generation_free(g);
  return rc;
}
