/* Noise schedule and samplers: DDIM (eta), DDPM, Euler ancestral and DPM++ 2M steps on float arrays. */
#include "sampler.h"

#include "errbuf.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct sg_sampler {
  sg_sampler_params p;
  size_t n;
  double *abar;     /* num_train_timesteps values */
  int32_t n_train;
  double *t;        /* per step: the model's timestep */
  double *a_t;      /* DDIM/DDPM: abar at t and at the previous timestep */
  double *a_prev;
  double *sigma;    /* sigma-space samplers: steps + 1 sigmas, the last 0 */
  float *old_denoised; /* DPM++ 2M */
  int have_old;
};

static const char *const NAMES[] = {"ddim", "ddpm", "euler_a", "dpmpp_2m"};

sg_schedule_params sg_schedule_default_params(void) {
  sg_schedule_params p = {1000, 0.00085, 0.012, 1};
  return p;
}

sg_sampler_params sg_sampler_default_params(void) {
  sg_sampler_params p = {SG_SAMPLER_DDIM, 50, 0.0};
  return p;
}

int sg_sampler_kind_parse(const char *name) {
  for (int i = 0; name && i < 4; i++)
    if (strcmp(name, NAMES[i]) == 0) return i;
  return -1;
}

const char *sg_sampler_kind_name(sg_sampler_kind kind) {
  return (unsigned)kind < 4 ? NAMES[kind] : "unknown";
}

int sg_schedule_alphas_cumprod(sg_schedule_params sp, double *abar, size_t n) {
  if (!abar || sp.num_train_timesteps < 2 || n != (size_t)sp.num_train_timesteps || !(sp.beta_start > 0) ||
      !(sp.beta_end < 1) || sp.beta_end < sp.beta_start)
    return SG_SAMPLER_EINVAL;
  double a = sqrt(sp.beta_start), b = sqrt(sp.beta_end), prod = 1.0;
  for (size_t i = 0; i < n; i++) {
    double s = a + (b - a) * (double)i / (double)(n - 1);
    prod *= 1.0 - s * s;
    abar[i] = prod;
  }
  return SG_SAMPLER_OK;
}

/* k-diffusion's t_to_sigma: log-sigma interpolated at fractional t. */
static double t_to_sigma(const double *abar, int32_t n, double t) {
  int32_t lo = (int32_t)floor(t), hi = lo + 1 < n ? lo + 1 : lo;
  double w = t - lo;
  double ls_lo = log(sqrt((1 - abar[lo]) / abar[lo])), ls_hi = log(sqrt((1 - abar[hi]) / abar[hi]));
  return exp((1 - w) * ls_lo + w * ls_hi);
}

void sg_sampler_free(sg_sampler *s) {
  if (!s) return;
  free(s->abar);
  free(s->t);
  free(s->a_t);
  free(s->a_prev);
  free(s->sigma);
  free(s->old_denoised);
  free(s);
}

static int sigma_kind(sg_sampler_kind kind) { return kind == SG_SAMPLER_EULER_A || kind == SG_SAMPLER_DPMPP_2M; }

int32_t sg_sampler_max_steps(sg_schedule_params sp, sg_sampler_kind kind) {
  int32_t T = sp.num_train_timesteps;
  if ((unsigned)kind >= 4 || T < 1) return 0;
  if (sigma_kind(kind)) return T;
  if (sp.steps_offset < 0) return 0;
  /* the first of s leading timesteps is (s - 1) * (T / s) + offset; s = T with offset 1 would start at T. That is
   * not monotone in s for offsets of 2 or more (offset 2: 998 steps fit, 500 do not), so the limit is the last s
   * before the first that does not fit: every step count up to it fits */
  for (int32_t s = 1; s <= T; s++)
    if ((int64_t)(s - 1) * (T / s) + sp.steps_offset >= T) return s - 1;
  return T;
}

sg_sampler *sg_sampler_new(sg_schedule_params sp, sg_sampler_params p, size_t n, char *err, size_t errlen) {
  if ((unsigned)p.kind >= 4) {
    sg_set_err(err, errlen, "unknown sampler %d", (int)p.kind);
    return NULL;
  }
  int32_t max_steps = sg_sampler_max_steps(sp, p.kind);
  if (max_steps < 1) {
    sg_set_err(err, errlen, "steps_offset %d does not fit %d training timesteps", sp.steps_offset,
               sp.num_train_timesteps);
    return NULL;
  }
  if (p.steps < 1 || p.steps > max_steps) {
    if (p.steps > max_steps && p.steps <= sp.num_train_timesteps)
      sg_set_err(err, errlen, "steps must be between 1 and %d for %s (%d steps would start at timestep %d, past the "
                 "last, %d)", max_steps, NAMES[p.kind], p.steps,
                 (int)((int64_t)(p.steps - 1) * (sp.num_train_timesteps / p.steps) + sp.steps_offset),
                 sp.num_train_timesteps - 1);
    else
      sg_set_err(err, errlen, "steps must be between 1 and %d", max_steps);
    return NULL;
  }
  if (!(p.eta >= 0 && p.eta <= 10)) {
    sg_set_err(err, errlen, "eta must be between 0 and 10");
    return NULL;
  }
  if (n == 0) {
    sg_set_err(err, errlen, "empty latent");
    return NULL;
  }
  sg_sampler *s = calloc(1, sizeof *s);
  if (!s) goto nomem;
  s->p = p;
  s->n = n;
  s->n_train = sp.num_train_timesteps;
  s->abar = malloc((size_t)sp.num_train_timesteps * sizeof *s->abar);
  s->t = malloc((size_t)p.steps * sizeof *s->t);
  s->a_t = malloc((size_t)p.steps * sizeof *s->a_t);
  s->a_prev = malloc((size_t)p.steps * sizeof *s->a_prev);
  s->sigma = malloc(((size_t)p.steps + 1) * sizeof *s->sigma);
  if (!s->abar || !s->t || !s->a_t || !s->a_prev || !s->sigma) goto nomem;
  if (sg_schedule_alphas_cumprod(sp, s->abar, (size_t)sp.num_train_timesteps)) {
    sg_set_err(err, errlen, "bad schedule (%d timesteps, betas %g to %g)", sp.num_train_timesteps, sp.beta_start,
            sp.beta_end);
    sg_sampler_free(s);
    return NULL;
  }
  if (p.kind == SG_SAMPLER_DDIM || p.kind == SG_SAMPLER_DDPM) {
    int32_t k = sp.num_train_timesteps / p.steps;
    for (int32_t i = 0; i < p.steps; i++) {
      int32_t t = (p.steps - 1 - i) * k + sp.steps_offset; /* below num_train_timesteps: see max_steps */
      if (t < 0 || t >= sp.num_train_timesteps) { /* never, by max_steps; refused rather than read out of bounds */
        sg_set_err(err, errlen, "timestep %d is outside the schedule", (int)t);
        sg_sampler_free(s);
        return NULL;
      }
      s->t[i] = t;
      s->a_t[i] = s->abar[t];
      s->a_prev[i] = t - k >= 0 ? s->abar[t - k] : s->abar[0];
    }
  } else {
    for (int32_t i = 0; i < p.steps; i++) {
      double t = p.steps == 1 ? sp.num_train_timesteps - 1
                              : (double)(sp.num_train_timesteps - 1) * (1.0 - (double)i / (p.steps - 1));
      s->t[i] = t;
      s->sigma[i] = t_to_sigma(s->abar, sp.num_train_timesteps, t);
    }
    s->sigma[p.steps] = 0.0;
    if (p.kind == SG_SAMPLER_DPMPP_2M && !(s->old_denoised = malloc(n * sizeof *s->old_denoised))) goto nomem;
  }
  return s;
nomem:
  sg_set_err(err, errlen, "out of memory");
  sg_sampler_free(s);
  return NULL;
}

int32_t sg_sampler_steps(const sg_sampler *s) { return s->p.steps; }

double sg_sampler_timestep(const sg_sampler *s, int32_t i) { return (i >= 0 && i < s->p.steps) ? s->t[i] : -1; }

static int sigma_space(const sg_sampler *s) { return sigma_kind(s->p.kind); }

double sg_sampler_input_scale(const sg_sampler *s, int32_t i) {
  if (!sigma_space(s) || i < 0 || i >= s->p.steps) return 1.0;
  return 1.0 / sqrt(s->sigma[i] * s->sigma[i] + 1.0);
}

double sg_sampler_init_sigma(const sg_sampler *s) { return sigma_space(s) ? s->sigma[0] : 1.0; }

/* DDIM's sigma_t for step i. */
static double ddim_sigma(const sg_sampler *s, int32_t i) {
  double a_t = s->a_t[i], a_p = s->a_prev[i];
  return s->p.eta * sqrt((1 - a_p) / (1 - a_t)) * sqrt(1 - a_t / a_p);
}

int sg_sampler_needs_noise(const sg_sampler *s, int32_t i) {
  if (i < 0 || i >= s->p.steps) return 0;
  switch (s->p.kind) {
    case SG_SAMPLER_DDIM: return ddim_sigma(s, i) > 0;
    case SG_SAMPLER_DDPM: return i < s->p.steps - 1;
    case SG_SAMPLER_EULER_A: return s->sigma[i + 1] > 0;
    default: return 0;
  }
}

/* Euler ancestral's sigma_up and sigma_down for step i (k-diffusion's get_ancestral_step, eta 1). */
static void ancestral_sigmas(const sg_sampler *s, int32_t i, double *up, double *down) {
  double sg = s->sigma[i], sn = s->sigma[i + 1];
  *up = sn > 0 ? fmin(sn, sqrt(sn * sn * (sg * sg - sn * sn) / (sg * sg))) : 0.0;
  *down = sqrt(fmax(sn * sn - *up * *up, 0.0));
}

double sg_sampler_noise_scale(const sg_sampler *s, int32_t i) {
  if (!sg_sampler_needs_noise(s, i)) return 0.0;
  if (s->p.kind == SG_SAMPLER_DDIM) return ddim_sigma(s, i);
  if (s->p.kind == SG_SAMPLER_DDPM) {
    double a_t = s->a_t[i], a_p = s->a_prev[i];
    return sqrt((1 - a_p) / (1 - a_t) * (1 - a_t / a_p));
  }
  double up, down;
  ancestral_sigmas(s, i, &up, &down);
  return up;
}

int sg_sampler_sigma_space(const sg_sampler *s) { return s && sigma_space(s); }

double sg_sampler_next_noise(const sg_sampler *s, int32_t i) {
  if (!s || i < 0 || i >= s->p.steps) return 0.0;
  if (!sigma_space(s)) return sqrt(1 - s->a_prev[i]);
  double sn = s->sigma[i + 1];
  return sn / sqrt(sn * sn + 1.0);
}

double sg_sampler_move_ratio(const sg_sampler *s, int32_t i) {
  if (!s || i < 0 || i >= s->p.steps || s->p.kind != SG_SAMPLER_EULER_A) return 1.0;
  double up, down, sg = s->sigma[i], sn = s->sigma[i + 1];
  ancestral_sigmas(s, i, &up, &down);
  return sg > down ? (sg - sn) / (sg - down) : 1.0;
}

int sg_sampler_step(sg_sampler *s, int32_t i, const float *x, const float *eps, const float *noise, float *x_prev) {
  if (!s || i < 0 || i >= s->p.steps || !x || !eps || !x_prev) return SG_SAMPLER_EINVAL;
  int noisy = sg_sampler_needs_noise(s, i);
  if (noisy && !noise) return SG_SAMPLER_EINVAL;
  size_t n = s->n;
  if (s->p.kind == SG_SAMPLER_DDIM || s->p.kind == SG_SAMPLER_DDPM) {
    double a_t = s->a_t[i], a_p = s->a_prev[i];
    float sq_1mat = (float)sqrt(1 - a_t), sq_at = (float)sqrt(a_t), sq_ap = (float)sqrt(a_p);
    if (s->p.kind == SG_SAMPLER_DDIM) {
      double sig = ddim_sigma(s, i);
      float c_eps = (float)sqrt(fmax(1 - a_p - sig * sig, 0.0)), c_noise = (float)sig;
      for (size_t k = 0; k < n; k++) {
        float x0 = (x[k] - sq_1mat * eps[k]) / sq_at;
        float v = sq_ap * x0 + c_eps * eps[k];
        x_prev[k] = noisy ? v + c_noise * noise[k] : v;
      }
    } else {
      double b = 1 - a_t / a_p;
      float c0 = (float)(sqrt(a_p) * b / (1 - a_t)), cx = (float)(sqrt(1 - b) * (1 - a_p) / (1 - a_t));
      float c_noise = (float)sg_sampler_noise_scale(s, i);
      for (size_t k = 0; k < n; k++) {
        float x0 = (x[k] - sq_1mat * eps[k]) / sq_at;
        float v = c0 * x0 + cx * x[k];
        x_prev[k] = noisy ? v + c_noise * noise[k] : v;
      }
    }
    return SG_SAMPLER_OK;
  }
  double sg = s->sigma[i], sn = s->sigma[i + 1];
  if (s->p.kind == SG_SAMPLER_EULER_A) {
    /* denoised = x - sigma eps, so the derivative (x - denoised) / sigma is eps */
    double up, down;
    ancestral_sigmas(s, i, &up, &down);
    float dt = (float)(down - sg), cu = (float)up;
    for (size_t k = 0; k < n; k++) {
      float v = x[k] + eps[k] * dt;
      x_prev[k] = noisy ? v + noise[k] * cu : v;
    }
    return SG_SAMPLER_OK;
  }
  /* DPM++ 2M */
  float *old = s->old_denoised;
  if (sn == 0) {
    for (size_t k = 0; k < n; k++) {
      float d = x[k] - (float)sg * eps[k];
      x_prev[k] = d;
    }
    s->have_old = 0;
    return SG_SAMPLER_OK;
  }
  double t = -log(sg), tn = -log(sn), h = tn - t;
  float ratio = (float)(sn / sg), c = (float)(-expm1(-h));
  int second = s->have_old && i > 0;
  double r = second ? (t - (-log(s->sigma[i - 1]))) / h : 0;
  float w_new = second ? (float)(1 + 1 / (2 * r)) : 1.0f, w_old = second ? (float)(1 / (2 * r)) : 0.0f;
  for (size_t k = 0; k < n; k++) {
    float d = x[k] - (float)sg * eps[k];
    float dd = second ? w_new * d - w_old * old[k] : d;
    old[k] = d;
    x_prev[k] = ratio * x[k] + c * dd;
  }
  s->have_old = 1;
  return SG_SAMPLER_OK;
}
