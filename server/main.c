/* sketchguide: the command line (serve, generate, train-lgp, edges, info, tokenize) over the engine in core/. */
#include <jansson.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "mem.h"

#ifndef SG_VERSION
#define SG_VERSION "unknown"
#endif

typedef struct {
  const char *name;
  int (*run)(int argc, char **argv);
  const char *summary;
} command;

static const command COMMANDS[] = {
    {"serve", cmd_serve, "the HTTP service: POST /v1/generate, jobs, events, health and metrics"},
    {"generate", cmd_generate, "prompt + sketch -> PNG images (sketch-guided diffusion)"},
    {"train-lgp", cmd_train_lgp, "train a model's Latent Guidance Predictor on (image, caption) pairs"},
    {"edges", cmd_edges, "image -> edge map, with the detector the LGP trainer uses"},
    {"info", cmd_info, "what a model directory holds"},
    {"tokenize", cmd_tokenize, "prompt -> the 77 input ids of the text encoder, as JSON"},
};

static void usage(FILE *f) {
  fprintf(f,
          "usage: sketchguide COMMAND [OPTIONS]\n\n"
          "Sketch-guided text-to-image diffusion (Voynov, Aberman, Cohen-Or 2023).\n\ncommands:\n");
  for (size_t i = 0; i < sizeof COMMANDS / sizeof *COMMANDS; i++)
    fprintf(f, "  %-10s %s\n", COMMANDS[i].name, COMMANDS[i].summary);
  fprintf(f,
          "\n`sketchguide COMMAND --help` describes a command's options. The model directory defaults to\n"
          "$SKETCHGUIDE_MODEL, else the bundled model (%s).\n",
          cli_default_model());
}

int main(int argc, char **argv) {
  /* before jansson allocates anything: a JSON body's strings (a base64 sketch) are given back when freed (mem.h) */
  json_set_alloc_funcs(sg_mem_alloc, sg_mem_free);
  sg_mem_tune_process(); /* the engine's tensors stay in malloc's arenas (mem.h); on failure glibc's defaults stand */
  if (argc < 2) {
    usage(stderr);
    return CLI_USAGE;
  }
  if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
    usage(stdout);
    return CLI_OK;
  }
  if (!strcmp(argv[1], "--version")) {
    printf("sketchguide %s\n", SG_VERSION);
    return CLI_OK;
  }
  for (size_t i = 0; i < sizeof COMMANDS / sizeof *COMMANDS; i++)
    if (!strcmp(argv[1], COMMANDS[i].name)) return COMMANDS[i].run(argc - 1, argv + 1);
  fprintf(stderr, "sketchguide: unknown command '%s' (see sketchguide --help)\n", argv[1]);
  return CLI_USAGE;
}
