/* Sketch-guided generation (METHOD.md): prompt + sketch -> images, steered by the LGP's gradient.
 *
 * Basic usage:
 *   sg_generate_params p = sg_generate_default_params(model);
 *   p.prompt = "a red star on a plain blue background";
 *   p.sketch = map;            // image_size x image_size floats, 1 = stroke (see image.h); NULL: unguided
 *   p.seed = 42;
 *   sg_result r;
 *   char err[256];
 *   if (sg_generate(model, &p, &r, err, sizeof err) == 0) { r.pixels: r.n images of H x W x 3 bytes }
 *   sg_result_free(&r);
 *
 * Image k uses its own generator seeded with seed + k (initial noise, then the sampler's noise), so an image can
 * be reproduced alone; the gradient comes from the conditional branch only; guidance norms are per image.
 * Thread-safe: several threads may call sg_generate on one model at once (each call owns its state).
 */
#ifndef SG_GENERATE_H
#define SG_GENERATE_H

#include <stddef.h>
#include <stdint.h>

#include "model.h"
#include "sampler.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Called after every step with (step done, total steps); returning non-zero cancels like the cancel flag. */
typedef int (*sg_progress_fn)(void *user, int32_t step, int32_t total);

typedef struct {
  const char *prompt;          /* required */
  const char *negative_prompt; /* "" */
  const float *sketch;         /* image_size^2 binary map (1 = stroke), or NULL */
  double beta;                 /* edge guidance scale (model default, paper 1.6); 0 = unguided */
  double stop;                 /* fraction of the steps that are guided (default 0.5) */
  int32_t stop_step;           /* number of guided steps; -1 = use stop */
  int32_t steps;               /* default from the model */
  double cfg;                  /* classifier-free guidance scale; 1 skips the unconditional branch */
  int64_t seed;                /* >= 0 */
  sg_sampler_kind sampler;
  double eta;                  /* DDIM only */
  int32_t n_images;            /* 1 */
  sg_progress_fn progress;
  void *progress_user;
  const volatile int *cancel;  /* checked between steps when not NULL */
  int profile;                 /* 1: wait for the device at each boundary so that the timings are exact on a GPU */
  float *trace;                /* NULL, or steps x n_images x latent floats that get the latents after each step */
} sg_generate_params;

/* Where a call's wall-clock time went, in seconds. */
typedef struct {
  double text;                /* text encoder */
  double vae_encode;          /* encoding the sketch */
  double unet;                /* U-Net forward passes without gradients (both branches of unguided steps) */
  double guided_forward;      /* the conditional U-Net forward with gradients, on guided steps */
  double lgp;                 /* the LGP and its loss */
  double backward;            /* the backward pass to the latent */
  double sampler;             /* everything else in the loop: cfg, noise, sampler step, the guidance move */
  double vae_decode;          /* decoding the latents */
  double total;
} sg_timings;

typedef struct {
  int32_t n, width, height;
  uint8_t *pixels;   /* n x height x width x 3 (RGB), caller frees with sg_result_free */
  float *latents;    /* n x channels x h x w, the final scaled latents */
  size_t latent_len; /* floats per image */
  int64_t *seeds;    /* n seeds */
  int32_t guided_steps;
  sg_timings timings;
} sg_result;

enum {
  SG_GENERATE_OK = 0,
  SG_GENERATE_EINVAL = -1,   /* a parameter out of range (the message names it) */
  SG_GENERATE_ENOLGP = -2,   /* guidance asked of a model without an LGP */
  SG_GENERATE_ECANCEL = -3,  /* cancelled */
  SG_GENERATE_ERUNTIME = -4, /* the model failed (libtorch error) */
  SG_GENERATE_ENOMEM = -5,
};

/* Returns the model's defaults (steps, cfg, beta, stop, sampler, eta), one image, seed 0, no sketch. */
sg_generate_params sg_generate_default_params(const sg_model *m);

/* Returns how many of the first steps are guided: stop_step when >= 0, else ceil(stop x steps). */
int32_t sg_generate_guided_steps(int32_t steps, double stop, int32_t stop_step);

/* Generates p->n_images images. Returns 0 and fills *out (freed with sg_result_free), or a negative
 * SG_GENERATE_E* code with a message in err. */
int sg_generate(sg_model *m, const sg_generate_params *p, sg_result *out, char *err, size_t errlen);

void sg_result_free(sg_result *r);

#ifdef __cplusplus
}
#endif

#endif
