/* Loads a model directory: validates model.json, then the tokenizer and the TorchScript modules through the shim. */
#include "model.h"

#include "errbuf.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct sg_model {
  sg_model_info info;
  sg_tokenizer *tok;
  ts_module *text, *unet, *venc, *vdec, *lgp;
};

sg_model_params sg_model_default_params(void) {
  sg_model_params p = {"cpu", 0};
  return p;
}

/* Reads an integer field in [lo, hi]; returns 0 or -1 with a message. */
static int get_int(json_t *obj, const char *key, int64_t lo, int64_t hi, int32_t *out, char *err, size_t errlen) {
  json_t *v = json_object_get(obj, key);
  if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi) {
    sg_set_err(err, errlen, "model.json: %s must be an integer in [%lld, %lld]", key, (long long)lo, (long long)hi);
    return -1;
  }
  *out = (int32_t)json_integer_value(v);
  return 0;
}

static int get_num(json_t *obj, const char *key, double lo, double hi, double *out, char *err, size_t errlen) {
  json_t *v = json_object_get(obj, key);
  if (!json_is_number(v) || !(json_number_value(v) >= lo && json_number_value(v) <= hi)) {
    sg_set_err(err, errlen, "model.json: %s must be a number in [%g, %g]", key, lo, hi);
    return -1;
  }
  *out = json_number_value(v);
  return 0;
}

static const char *get_str(json_t *obj, const char *key, char *err, size_t errlen) {
  const char *s = json_string_value(json_object_get(obj, key));
  if (!s || !*s || strchr(s, '/') || strstr(s, "..")) {
    sg_set_err(err, errlen, "model.json: %s must name a file in the model directory", key);
    return NULL;
  }
  return s;
}

static ts_module *load_module(const char *dir, const char *file, const char *device, ts_dtype dt, char *err,
                              size_t errlen) {
  char path[4096];
  snprintf(path, sizeof path, "%s/%s", dir, file);
  ts_module *m = ts_module_load(path, device, dt, 0);
  if (!m) sg_set_err(err, errlen, "%s: %s", path, ts_last_error());
  return m;
}

static int parse_defaults(json_t *d, sg_model_defaults *out, char *err, size_t errlen) {
  sg_model_defaults def = {50, 8.0, 1.6, 0.5, 0.0, SG_SAMPLER_DDIM};
  *out = def;
  if (!d) return 0;
  if (!json_is_object(d)) {
    sg_set_err(err, errlen, "model.json: defaults must be an object");
    return -1;
  }
  if (json_object_get(d, "steps") && get_int(d, "steps", 1, 1000, &out->steps, err, errlen)) return -1;
  if (json_object_get(d, "cfg") && get_num(d, "cfg", 0, 100, &out->cfg, err, errlen)) return -1;
  if (json_object_get(d, "beta") && get_num(d, "beta", 0, 100, &out->beta, err, errlen)) return -1;
  if (json_object_get(d, "stop") && get_num(d, "stop", 0, 1, &out->stop, err, errlen)) return -1;
  if (json_object_get(d, "eta") && get_num(d, "eta", 0, 10, &out->eta, err, errlen)) return -1;
  const char *s = json_string_value(json_object_get(d, "sampler"));
  if (s) {
    int k = sg_sampler_kind_parse(s);
    if (k < 0) {
      sg_set_err(err, errlen, "model.json: unknown default sampler %s", s);
      return -1;
    }
    out->sampler = (sg_sampler_kind)k;
  }
  return 0;
}

/* The tokenizer that the manifest's "tokenizer" section describes; NULL with a message on failure. */
static sg_tokenizer *load_tokenizer(const char *dir, json_t *tk, int32_t context_length, char *err, size_t errlen) {
  char path[4096];
  const char *merges = get_str(tk, "merges", err, errlen);
  if (!merges) return NULL;
  sg_tokenizer_params tp = sg_tokenizer_default_params();
  if (get_int(tk, "merges_count", 0, 1 << 24, &tp.merges_count, err, errlen) ||
      get_int(tk, "pad_id", 0, 1 << 24, &tp.pad_id, err, errlen) ||
      get_int(tk, "max_length", 2, 4096, &tp.max_length, err, errlen))
    return NULL;
  if (context_length > 0 && tp.max_length != context_length) {
    sg_set_err(err, errlen, "model.json: tokenizer max_length differs from context_length");
    return NULL;
  }
  snprintf(path, sizeof path, "%s/%s", dir, merges);
  sg_tokenizer *tok = sg_tokenizer_load(path, tp, err, errlen);
  if (!tok) return NULL;
  int32_t vs = 0;
  if (get_int(tk, "vocab_size", 1, 1 << 24, &vs, err, errlen)) {
    sg_tokenizer_free(tok);
    return NULL;
  }
  if (vs != sg_tokenizer_vocab_size(tok)) {
    sg_set_err(err, errlen, "%s: %d tokens, model.json says %d", path, sg_tokenizer_vocab_size(tok), vs);
    sg_tokenizer_free(tok);
    return NULL;
  }
  return tok;
}

/* Parses dir/model.json (its path into path, cap bytes). Returns the JSON root, or NULL with a message. */
static json_t *load_manifest(const char *dir, char *path, size_t cap, char *err, size_t errlen) {
  if (!dir) {
    sg_set_err(err, errlen, "no model directory");
    return NULL;
  }
  snprintf(path, cap, "%s/model.json", dir);
  json_error_t jerr;
  json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
  if (!root) sg_set_err(err, errlen, "%s: %s (line %d)", path, jerr.text, jerr.line);
  return root;
}

sg_tokenizer *sg_model_load_tokenizer(const char *dir, char *err, size_t errlen) {
  char path[4096];
  json_t *root = load_manifest(dir, path, sizeof path, err, errlen);
  if (!root) return NULL;
  json_t *tk = json_object_get(root, "tokenizer");
  sg_tokenizer *tok = NULL;
  if (!json_is_object(tk)) sg_set_err(err, errlen, "%s: no tokenizer section", path);
  else tok = load_tokenizer(dir, tk, 0, err, errlen);
  json_decref(root);
  return tok;
}

sg_model *sg_model_load(const char *dir, sg_model_params params, char *err, size_t errlen) {
  char path[4096];
  json_t *root = load_manifest(dir, path, sizeof path, err, errlen);
  if (!root) return NULL;
  sg_model *m = calloc(1, sizeof *m);
  if (!m) {
    sg_set_err(err, errlen, "out of memory");
    json_decref(root);
    return NULL;
  }
  sg_model_info *in = &m->info;
  const char *fmt = json_string_value(json_object_get(root, "format"));
  json_t *sched = json_object_get(root, "schedule"), *mods = json_object_get(root, "modules");
  json_t *tk = json_object_get(root, "tokenizer"), *taps = json_object_get(root, "taps");
  json_t *lgp = json_object_get(root, "lgp");
  int32_t fv = 0;
  if (!fmt || strcmp(fmt, "sketchguide-model") != 0) {
    sg_set_err(err, errlen, "%s: not a sketchguide model manifest", path);
    goto fail;
  }
  if (get_int(root, "format_version", 1, 1, &fv, err, errlen) ||
      get_int(root, "image_size", 8, 4096, &in->image_size, err, errlen) ||
      get_int(root, "latent_size", 1, 1024, &in->latent_size, err, errlen) ||
      get_int(root, "latent_channels", 1, 64, &in->latent_channels, err, errlen) ||
      get_int(root, "downscale", 1, 64, &in->downscale, err, errlen) ||
      get_num(root, "scaling_factor", 1e-6, 1e6, &in->scaling_factor, err, errlen) ||
      get_int(root, "context_dim", 1, 65536, &in->context_dim, err, errlen) ||
      get_int(root, "context_length", 2, 4096, &in->context_length, err, errlen) ||
      get_int(root, "tap_channels", 0, 1 << 20, &in->tap_channels, err, errlen))
    goto fail;
  if (in->latent_size * in->downscale != in->image_size) {
    sg_set_err(err, errlen, "model.json: latent_size x downscale differs from image_size");
    goto fail;
  }
  if (!json_is_object(sched) || !json_is_object(mods) || !json_is_object(tk) || !json_is_array(taps)) {
    sg_set_err(err, errlen, "model.json: schedule, modules, tokenizer and taps are required");
    goto fail;
  }
  const char *bs = json_string_value(json_object_get(sched, "beta_schedule"));
  const char *pt = json_string_value(json_object_get(root, "prediction_type"));
  const char *sp = json_string_value(json_object_get(sched, "timestep_spacing"));
  if (!bs || strcmp(bs, "scaled_linear") || !pt || strcmp(pt, "epsilon") || (sp && strcmp(sp, "leading"))) {
    sg_set_err(err, errlen, "model.json: only the scaled_linear schedule, leading spacing and epsilon prediction are "
                         "supported");
    goto fail;
  }
  if (get_int(sched, "num_train_timesteps", 2, 100000, &in->schedule.num_train_timesteps, err, errlen) ||
      get_num(sched, "beta_start", 1e-9, 0.5, &in->schedule.beta_start, err, errlen) ||
      get_num(sched, "beta_end", 1e-9, 0.999, &in->schedule.beta_end, err, errlen))
    goto fail;
  in->schedule.steps_offset = 1;
  if (json_object_get(sched, "steps_offset") &&
      get_int(sched, "steps_offset", 0, 1000, &in->schedule.steps_offset, err, errlen))
    goto fail;
  if (parse_defaults(json_object_get(root, "defaults"), &in->defaults, err, errlen)) goto fail;
  in->n_taps = (int32_t)json_array_size(taps);
  const char *name = json_string_value(json_object_get(root, "name"));
  snprintf(in->name, sizeof in->name, "%s", name ? name : "model");
  const char *dts = json_string_value(json_object_get(root, "dtype"));
  if (!dts) dts = "float32";
  ts_dtype dt = TS_FLOAT32;
  if (strcmp(dts, "float16") == 0) dt = TS_FLOAT16;
  else if (strcmp(dts, "bfloat16") == 0) dt = TS_BFLOAT16;
  else if (strcmp(dts, "float32") != 0) {
    sg_set_err(err, errlen, "model.json: unknown dtype %s", dts);
    goto fail;
  }
  snprintf(in->dtype, sizeof in->dtype, "%s", dts);
  const char *device = params.device && *params.device ? params.device : "cpu";
  snprintf(in->device, sizeof in->device, "%s", device);
  if (!ts_device_ok(device)) {
    sg_set_err(err, errlen, "%s", ts_last_error());
    goto fail;
  }
  if (params.threads > 0 && ts_set_threads(params.threads)) {
    sg_set_err(err, errlen, "%s", ts_last_error());
    goto fail;
  }

  if (!(m->tok = load_tokenizer(dir, tk, in->context_length, err, errlen))) goto fail;

  const char *files[4];
  const char *keys[4] = {"text_encoder", "unet", "vae_encoder", "vae_decoder"};
  for (int i = 0; i < 4; i++)
    if (!(files[i] = get_str(mods, keys[i], err, errlen))) goto fail;
  if (!(m->text = load_module(dir, files[0], device, dt, err, errlen)) ||
      !(m->unet = load_module(dir, files[1], device, dt, err, errlen)) ||
      !(m->venc = load_module(dir, files[2], device, dt, err, errlen)) ||
      !(m->vdec = load_module(dir, files[3], device, dt, err, errlen)))
    goto fail;
  if (json_is_object(lgp)) {
    const char *lf = get_str(lgp, "file", err, errlen);
    int32_t lc = 0;
    if (!lf || get_int(lgp, "in_channels", 1, 1 << 20, &lc, err, errlen)) goto fail;
    if (lc != in->tap_channels) {
      sg_set_err(err, errlen, "model.json: the LGP reads %d channels, the taps give %d", lc, in->tap_channels);
      goto fail;
    }
    /* the LGP's BatchNorm statistics and MLP stay in float32 */
    if (!(m->lgp = load_module(dir, lf, device, TS_FLOAT32, err, errlen))) goto fail;
    in->has_lgp = 1;
  }
  json_decref(root);
  return m;
fail:
  json_decref(root);
  sg_model_free(m);
  return NULL;
}

void sg_model_free(sg_model *m) {
  if (!m) return;
  sg_tokenizer_free(m->tok);
  ts_module_free(m->text);
  ts_module_free(m->unet);
  ts_module_free(m->venc);
  ts_module_free(m->vdec);
  ts_module_free(m->lgp);
  free(m);
}

const sg_model_info *sg_model_get_info(const sg_model *m) { return &m->info; }
const sg_tokenizer *sg_model_tokenizer(const sg_model *m) { return m->tok; }
ts_module *sg_model_text_encoder(const sg_model *m) { return m->text; }
ts_module *sg_model_unet(const sg_model *m) { return m->unet; }
ts_module *sg_model_vae_encoder(const sg_model *m) { return m->venc; }
ts_module *sg_model_vae_decoder(const sg_model *m) { return m->vdec; }
ts_module *sg_model_lgp(const sg_model *m) { return m->lgp; }
