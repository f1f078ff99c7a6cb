/* Noise schedule and samplers (DDIM with eta, DDPM, Euler ancestral, DPM++ 2M) over host float latents.
 *
 * Basic usage (one step loop; the caller runs the U-Net):
 *   sg_schedule_params sp = sg_schedule_default_params();            // SD 1.x
 *   sg_sampler_params p = sg_sampler_default_params();               // DDIM, 50 steps, eta 0
 *   sg_sampler *s = sg_sampler_new(sp, p, n, err, sizeof err);        // n floats per image
 *   fill x with noise * sg_sampler_init_sigma(s)
 *   for (int i = 0; i < sg_sampler_steps(s); i++) {
 *     model input = x * sg_sampler_input_scale(s, i), timestep sg_sampler_timestep(s, i) -> eps
 *     if (sg_sampler_needs_noise(s, i)) draw n normal numbers into noise
 *     sg_sampler_step(s, i, x, eps, noise, x_prev);  x = x_prev
 *   }
 *   latent = x (the sampler's state is the clean latent after the last step)
 *
 * DDIM and DDPM use "leading" timesteps with offset 1 (50 steps: 981, 961, ..., 1), abar_prev = abar_0 after the
 * last step; at most num_train_timesteps - 1 steps with offset 1 (999: 999, 998, ..., 1), as in tools/sample.py,
 * whose 1000 steps would start at timestep 1000, past the schedule (it fails there); DDPM is the posterior between consecutive timesteps, without noise on the last step. Euler ancestral
 * and DPM++ 2M follow k-diffusion in sigma space: sigmas at linspace(T-1, 0, steps) by log-sigma interpolation,
 * then 0; model input x / sqrt(sigma^2 + 1). A sampler holds per-image state (DPM++ 2M's previous estimate): one
 * per image and job; not thread-safe.
 */
#ifndef SG_SAMPLER_H
#define SG_SAMPLER_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
  SG_SAMPLER_DDIM = 0,
  SG_SAMPLER_DDPM = 1,
  SG_SAMPLER_EULER_A = 2,
  SG_SAMPLER_DPMPP_2M = 3,
} sg_sampler_kind;

typedef struct {
  int32_t num_train_timesteps; /* 1000 */
  double beta_start;           /* 0.00085 */
  double beta_end;             /* 0.012 ("scaled_linear": linspace(sqrt(start), sqrt(end), n)^2) */
  int32_t steps_offset;        /* 1 */
} sg_schedule_params;

typedef struct {
  sg_sampler_kind kind; /* DDIM */
  int32_t steps;        /* 50 */
  double eta;           /* DDIM's eta, 0 */
} sg_sampler_params;

typedef struct sg_sampler sg_sampler;

enum { SG_SAMPLER_OK = 0, SG_SAMPLER_EINVAL = -1, SG_SAMPLER_ENOMEM = -2 };

sg_schedule_params sg_schedule_default_params(void);
sg_sampler_params sg_sampler_default_params(void);

/* Returns the sampler kind named name ("ddim", "ddpm", "euler_a", "dpmpp_2m"), or -1. */
int sg_sampler_kind_parse(const char *name);
/* Returns the name of a kind ("ddim", ...), or "unknown". */
const char *sg_sampler_kind_name(sg_sampler_kind kind);

/* Fills abar (n = num_train_timesteps values) with the cumulative products of 1 - beta. Returns 0 or negative. */
int sg_schedule_alphas_cumprod(sg_schedule_params sp, double *abar, size_t n);

/* Returns the most steps a sampler of this kind takes on this schedule: num_train_timesteps for the sigma-space
 * samplers; for DDIM and DDPM the most whose leading timesteps all fall inside the schedule (num_train_timesteps -
 * steps_offset for offsets 0 and 1), 0 when none do (a negative offset, or one past the schedule). */
int32_t sg_sampler_max_steps(sg_schedule_params sp, sg_sampler_kind kind);

/* Creates a sampler for images of n floats (steps from 1 to sg_sampler_max_steps). Returns NULL with a message in
 * err on bad parameters. */
sg_sampler *sg_sampler_new(sg_schedule_params sp, sg_sampler_params p, size_t n, char *err, size_t errlen);
void sg_sampler_free(sg_sampler *s);

int32_t sg_sampler_steps(const sg_sampler *s);
/* The U-Net's timestep at step i (an integer for DDIM/DDPM, fractional for the sigma-space samplers). */
double sg_sampler_timestep(const sg_sampler *s, int32_t i);
/* The factor from the sampler's state to the U-Net's input at step i. */
double sg_sampler_input_scale(const sg_sampler *s, int32_t i);
/* The initial noise's scale: 1 for DDIM/DDPM, the first sigma for the sigma-space samplers. */
double sg_sampler_init_sigma(const sg_sampler *s);
/* Returns 1 when step i adds noise (sg_sampler_step then reads n values from noise), else 0. */
int sg_sampler_needs_noise(const sg_sampler *s, int32_t i);

/* The factor of the noise in step i's output (0 when the step adds none): x_prev = the step's mean + it x noise.
 * Guidance normalises its move by the mean's move alone (docs/guidance.md). */
double sg_sampler_noise_scale(const sg_sampler *s, int32_t i);

/* How much larger the probability-flow (noise-free) step's move is than the mean's move of step i: Euler ancestral's
 * mean goes to sigma_down, below the next sigma, so guidance measures the move to x + (mean - x) x this ratio,
 * (sigma - sigma_next) / (sigma - sigma_down); 1 for the other samplers (docs/guidance.md). */
double sg_sampler_move_ratio(const sg_sampler *s, int32_t i);

/* Returns 1 for the sigma-space samplers (Euler ancestral, DPM++ 2M), whose state is x0 + sigma noise and whose
 * U-Net input is the state x sg_sampler_input_scale, 0 for DDIM and DDPM (the state is the U-Net's input). Guidance
 * measures and makes its move in the U-Net's input coordinates: step i's output is scaled by
 * sg_sampler_input_scale(s, i + 1), which is 1 after the last step (docs/guidance.md). */
int sg_sampler_sigma_space(const sg_sampler *s);

/* The noise's scale in the U-Net's input after step i: sqrt(1 - abar) at the next timestep for DDIM and DDPM,
 * sigma_next / sqrt(sigma_next^2 + 1) for the sigma-space samplers (0 after their last step). Guidance caps each
 * push at a fraction of it (docs/guidance.md). */
double sg_sampler_next_noise(const sg_sampler *s, int32_t i);

/* One step from state x with noise prediction eps (and noise, when needed) to x_prev (may alias x). Steps must
 * be taken in order 0, 1, ... for DPM++ 2M. Returns 0 or SG_SAMPLER_EINVAL. */
int sg_sampler_step(sg_sampler *s, int32_t i, const float *x, const float *eps, const float *noise, float *x_prev);

#ifdef __cplusplus
}
#endif

#endif
