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
 *
 * Step-level engine (sg_generate is a loop over it; a scheduler uses it to batch several requests):
 *   sg_generation *a, *b;
 *   sg_generation_start(model, &pa, &a, err, sizeof err);        // text, sketch, initial noise
 *   sg_generation_start(model, &pb, &b, err, sizeof err);
 *   sg_generation *batch[2] = {a, b};
 *   int rc[2];
 *   char errs[2][256];
 *   while (!sg_generation_done(a) && !sg_generation_done(b))
 *     sg_generation_step_batch(batch, 2, rc, errs[0], 256);      // one U-Net pass for both (check rc[k])
 *   ... step the one left alone, or with others that join; then
 *   sg_generation_finish(a, &ra, err, sizeof err);               // VAE decode
 *   sg_generation_free(a);
 * Members of a batch may differ in everything but the model: prompt, sketch, sampler, steps, step reached, cfg
 * (cfg 1: no unconditional branch), beta, stop and n. A batched generation matches the same one run alone to
 * rounding: the U-Net's kernels sum in another order at another batch size (unguided latents agree within 1e-4;
 * guided trajectories amplify such differences, see docs/batching.md); alone (a batch of one) it is bit-exact
 * with sg_generate. A generation is used by one thread at a time; different generations on one model may be
 * stepped by different threads at once.
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

typedef struct sg_generation sg_generation; /* one generation in progress */

/* Starts a generation of p (checked as sg_generate checks it): encodes the prompts and the sketch and draws the
 * initial noise. p's strings and sketch are read here only; p->trace, when set, is written at every step and must
 * outlive the generation; p->progress and p->cancel are not used (the caller's loop decides). Returns 0 and *out
 * (freed with sg_generation_free), or a negative SG_GENERATE_E* code with a message in err (*out NULL). */
int sg_generation_start(sg_model *m, const sg_generate_params *p, sg_generation **out, char *err, size_t errlen);

/* Advances each of the n generations gs[0..n) (distinct, not done, on one model) by one step, each at its own
 * step: one U-Net pass without gradients for every unconditional branch and for the conditional branch of members
 * on an unguided step, one pass with gradients (one backward for all) for the conditional branch of members on a
 * guided step, then each member's cfg, sampler step, noise and guidance move (norms per image). When a shared
 * pass fails, each member is retried alone, so that a failure fails its own member only. rc[k] gets 0 or a
 * negative SG_GENERATE_E* code for gs[k], with its message at errs + k * errlen (errs may be NULL); a member that
 * failed cannot be stepped or finished again (free it). Returns the number of members that failed, or
 * SG_GENERATE_EINVAL when gs or rc is NULL or n < 1 (nothing changed). */
int sg_generation_step_batch(sg_generation *const *gs, int32_t n, int *rc, char *errs, size_t errlen);

/* sg_generation_step_batch of one generation. Returns 0 or a negative SG_GENERATE_E* code with a message. */
int sg_generation_step(sg_generation *g, char *err, size_t errlen);

/* Steps done, steps asked, guided steps, whether every step is done, and the U-Net rows (images times branches)
 * its next step adds to a batch (0 when done). */
int32_t sg_generation_step_index(const sg_generation *g);
int32_t sg_generation_steps(const sg_generation *g);
int32_t sg_generation_guided_steps(const sg_generation *g);
int sg_generation_done(const sg_generation *g);
int32_t sg_generation_rows(const sg_generation *g);

/* Decodes a generation whose steps are all done into *out (freed with sg_result_free; timings.total from its
 * start). Afterwards the generation can only be freed. Returns 0 or a negative SG_GENERATE_E* code (EINVAL when
 * not done or failed). */
int sg_generation_finish(sg_generation *g, sg_result *out, char *err, size_t errlen);

/* Frees a generation (NULL is ignored). */
void sg_generation_free(sg_generation *g);

#ifdef __cplusplus
}
#endif

#endif
