/* sketchguide info: what a model directory holds (manifest, modules and their sizes, LGP and its training). */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"
#include "mem.h"
#include "model.h"

static const char HELP[] =
    "usage: sketchguide info [--model DIR] [--json] [--check]\n\n"
    "Describes a model directory from its model.json and files.\n\n"
    "options:\n"
    "  --model DIR   model directory (default: $SKETCHGUIDE_MODEL, else the bundled model); also positional\n"
    "  --json        print JSON (the manifest without its training configuration, plus file sizes)\n"
    "  --check       also load every module (CPU) to prove the directory is usable\n"
    "  --device DEV  device for --check (default cpu)\n";

static long long file_size(const char *dir, const char *name) {
  char path[4096];
  struct stat st;
  snprintf(path, sizeof path, "%s/%s", dir, name);
  return stat(path, &st) == 0 ? (long long)st.st_size : -1;
}

static const char *str(json_t *o, const char *k) {
  const char *s = json_string_value(json_object_get(o, k));
  return s ? s : "?";
}

static long long num(json_t *o, const char *k) { return (long long)json_integer_value(json_object_get(o, k)); }

/* The module and tokenizer files the manifest names, with their sizes, as a JSON object. */
static json_t *files_of(const char *dir, json_t *root) {
  json_t *files = json_object(), *mods = json_object_get(root, "modules"), *tk = json_object_get(root, "tokenizer");
  json_t *lgp = json_object_get(root, "lgp"), *v;
  const char *k;
  json_object_foreach(mods, k, v) if (json_is_string(v))
      json_object_set_new(files, json_string_value(v), json_integer(file_size(dir, json_string_value(v))));
  const char *names[] = {"merges", "vocab"};
  for (int i = 0; i < 2; i++)
    if (json_is_string(json_object_get(tk, names[i])))
      json_object_set_new(files, str(tk, names[i]), json_integer(file_size(dir, str(tk, names[i]))));
  if (json_is_string(json_object_get(lgp, "file")))
    json_object_set_new(files, str(lgp, "file"), json_integer(file_size(dir, str(lgp, "file"))));
  return files;
}

static void print_text(const char *dir, json_t *root, json_t *files) {
  json_t *tk = json_object_get(root, "tokenizer"), *lgp = json_object_get(root, "lgp");
  json_t *d = json_object_get(root, "defaults"), *taps = json_object_get(root, "taps"), *v;
  printf("model %s (%s)\n", str(root, "name"), dir);
  printf("  image %lldx%lld from a latent %lldx%lldx%lld (VAE factor %lld, scaling %g); weights %s, exported by "
         "torch %s\n",
         num(root, "image_size"), num(root, "image_size"), num(root, "latent_channels"), num(root, "latent_size"),
         num(root, "latent_size"), num(root, "downscale"), json_number_value(json_object_get(root, "scaling_factor")),
         str(root, "dtype"), str(root, "torch_version"));
  printf("  text: %lld x %lld context; CLIP BPE tokenizer, %lld tokens (%s)\n", num(root, "context_length"),
         num(root, "context_dim"), num(tk, "vocab_size"), str(tk, "merges"));
  printf("  U-Net taps (%zu, %lld channels):", json_array_size(taps), num(root, "tap_channels"));
  size_t i;
  json_array_foreach(taps, i, v) printf("%s %s (%lld @ %lld)", i ? "," : "", str(v, "name"), num(v, "channels"),
                                        num(v, "resolution"));
  printf("\n");
  if (json_is_object(lgp)) {
    json_t *tr = json_object_get(lgp, "trained"), *hid = json_object_get(lgp, "hidden"), *te;
    te = json_object_get(lgp, "time_encoding");
    printf("  LGP: %s, %lld channels + %lld time encoding -> hidden", str(lgp, "file"), num(lgp, "in_channels"),
           num(te, "dim"));
    json_array_foreach(hid, i, v) printf("%s%lld", i ? "-" : " ", (long long)json_integer_value(v));
    printf(" -> %lld\n", num(lgp, "out_channels"));
    if (json_is_object(tr)) {
      printf("       trained by %s: %lld steps, batch %lld, lr %g, data %s\n", str(tr, "by"), num(tr, "steps"),
             num(tr, "batch"), json_number_value(json_object_get(tr, "lr")), str(tr, "data"));
      json_t *ho = json_object_get(tr, "held_out_loss");
      const char *k;
      if (json_is_object(ho)) {
        printf("       held-out loss by t:");
        json_object_foreach(ho, k, v) printf(" %s: %.4f", k, json_number_value(v));
        printf("\n");
      }
    }
  } else {
    printf("  LGP: none (the model cannot follow sketches until one is trained: sketchguide train-lgp)\n");
  }
  printf("  defaults: %lld %s steps, cfg %g, beta %g, stop %g, eta %g\n", num(d, "steps"), str(d, "sampler"),
         json_number_value(json_object_get(d, "cfg")), json_number_value(json_object_get(d, "beta")),
         json_number_value(json_object_get(d, "stop")), json_number_value(json_object_get(d, "eta")));
  long long total = 0;
  const char *k;
  printf("  files:");
  json_object_foreach(files, k, v) {
    long long s = json_integer_value(v);
    if (s < 0) printf(" %s (MISSING)", k);
    else printf(" %s %.1f MB", k, s / 1e6), total += s;
  }
  printf("; %.1f MiB in all\n", total / 1048576.0);
}

int cmd_info(int argc, char **argv) {
  cli_args a = {"info", argc, argv, 1, 0};
  const char *dir = cli_default_model(), *device = "cpu", *v;
  int json = 0, check = 0;
  while (a.i < argc && !a.failed) {
    if (cli_flag(&a, "--help") || cli_flag(&a, "-h")) {
      fputs(HELP, stdout);
      return CLI_OK;
    }
    if (cli_value(&a, "--model", &v)) dir = v;
    else if (cli_value(&a, "--device", &v)) device = v;
    else if (cli_flag(&a, "--json")) json = 1;
    else if (cli_flag(&a, "--check")) check = 1;
    else if (argv[a.i][0] != '-') dir = argv[a.i++];
    else cli_unknown(&a);
  }
  if (a.failed) return CLI_USAGE;
  if (cli_check_model_dir("info", "--model", dir)) return CLI_USAGE;
  char path[4096], err[1024];
  snprintf(path, sizeof path, "%s/model.json", dir);
  json_error_t jerr;
  json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
  if (!root) {
    cli_error("info", "--model %s: %s", dir, jerr.text);
    return CLI_USAGE;
  }
  if (!json_is_object(root) || strcmp(str(root, "format"), "sketchguide-model") != 0) {
    cli_error("info", "--model %s: model.json is not a sketchguide model manifest", dir);
    json_decref(root);
    return CLI_USAGE;
  }
  json_t *files = files_of(dir, root);
  int rc = CLI_OK;
  if (json) {
    json_t *out = json_deep_copy(root);
    json_object_del(out, "config");
    json_object_set_new(out, "dir", json_string(dir));
    json_object_set(out, "files", files);
    char *s = json_dumps(out, JSON_INDENT(2));
    if (s) puts(s);
    sg_mem_json_free(s);
    json_decref(out);
  } else {
    print_text(dir, root, files);
  }
  const char *k;
  json_t *fv;
  json_object_foreach(files, k, fv) if (json_integer_value(fv) < 0) rc = CLI_FAIL;
  if (rc != CLI_OK) cli_error("info", "--model %s: files named in model.json are missing", dir);
  if (check && rc == CLI_OK) {
    sg_model_params mp = sg_model_default_params();
    mp.device = device;
    double t0 = cli_now();
    sg_model *m = sg_model_load(dir, mp, err, sizeof err);
    if (!m) {
      cli_error("info", "--model %s: %s", dir, err);
      rc = CLI_FAIL;
    } else {
      fprintf(stderr, "check: every module loaded on %s in %.1f s\n", device, cli_now() - t0);
      sg_model_free(m);
    }
  }
  json_decref(files);
  json_decref(root);
  return rc;
}
