/* A loaded model directory (model.json, TorchScript modules, tokenizer, LGP): weights loaded once, shared by jobs.
 *
 * Basic usage:
 *   sg_model_params p = sg_model_default_params();
 *   char err[512];
 *   sg_model *m = sg_model_load("models/shapes", p, err, sizeof err);
 *   if (!m) fprintf(stderr, "%s\n", err);
 *   const sg_model_info *info = sg_model_get_info(m);
 *   ... sg_generate(m, ...) ...
 *   sg_model_free(m);
 *
 * A loaded model is read-only: any number of threads may generate with it at once (see generate.h).
 */
#ifndef SG_MODEL_H
#define SG_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "sampler.h"
#include "tokenizer.h"
#include "torchshim.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct sg_model sg_model;

typedef struct {
  const char *device; /* "cpu" (default), "cuda", "cuda:N" */
  int32_t threads;    /* torch intra-op threads; 0 leaves the current setting */
} sg_model_params;

/* Generation defaults from the manifest ("defaults"). */
typedef struct {
  int32_t steps;
  double cfg, beta, stop, eta;
  sg_sampler_kind sampler;
} sg_model_defaults;

typedef struct {
  char name[128];
  int32_t image_size, latent_size, latent_channels, downscale;
  double scaling_factor;
  int32_t context_dim, context_length;
  int32_t n_taps, tap_channels;
  int has_lgp;
  sg_schedule_params schedule;
  sg_model_defaults defaults;
  char dtype[16];
  char device[32];
} sg_model_info;

enum { SG_MODEL_OK = 0, SG_MODEL_ERROR = -1 };

sg_model_params sg_model_default_params(void);

/* Loads the model directory dir. Returns NULL with a message in err (errlen bytes) on failure. */
sg_model *sg_model_load(const char *dir, sg_model_params params, char *err, size_t errlen);

/* Loads only the tokenizer of the model directory dir (no modules). Returns NULL with a message in err on failure;
 * the caller frees the result with sg_tokenizer_free. */
sg_tokenizer *sg_model_load_tokenizer(const char *dir, char *err, size_t errlen);

/* Frees the model; NULL is ignored. */
void sg_model_free(sg_model *m);

/* Returns the model's description (owned by the model). */
const sg_model_info *sg_model_get_info(const sg_model *m);

/* The model's tokenizer and modules (owned by the model); lgp is NULL when the model has none. */
const sg_tokenizer *sg_model_tokenizer(const sg_model *m);
ts_module *sg_model_text_encoder(const sg_model *m);
ts_module *sg_model_unet(const sg_model *m);
ts_module *sg_model_vae_encoder(const sg_model *m);
ts_module *sg_model_vae_decoder(const sg_model *m);
ts_module *sg_model_lgp(const sg_model *m);

#ifdef __cplusplus
}
#endif

#endif
