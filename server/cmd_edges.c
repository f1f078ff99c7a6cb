/* sketchguide edges: image -> edge map (white on black PNG), with the detector the LGP trainer uses. */
#include <stdlib.h>

#include "cli.h"
#include "edges.h"
#include "image.h"

static const char HELP[] =
    "usage: sketchguide edges INPUT OUTPUT [--size N] [--low X] [--high Y]\n\n"
    "Runs the built-in edge detector (the one `train-lgp` uses when a pair has no edge map: 3x3 blur, Sobel on\n"
    "each colour channel, non-maximum suppression, hysteresis) on a PNG or JPEG and writes a grayscale PNG with\n"
    "edges 255 on 0.\n\n"
    "options:\n"
    "  --size N   resize the image to N x N first (as the trainer does, to the model's image size)\n"
    "  --low X    hysteresis low threshold on the gradient of [0, 1] images (default 0.08)\n"
    "  --high Y   high threshold (default 0.16)\n";

int cmd_edges(int argc, char **argv) {
  cli_args a = {"edges", argc, argv, 1, 0};
  const char *in_path = NULL, *out_path = NULL, *size_s = NULL, *low_s = NULL, *high_s = NULL, *v;
  while (a.i < argc && !a.failed) {
    if (cli_flag(&a, "--help") || cli_flag(&a, "-h")) {
      fputs(HELP, stdout);
      return CLI_OK;
    }
    if (cli_value(&a, "--size", &v)) size_s = v;
    else if (cli_value(&a, "--low", &v)) low_s = v;
    else if (cli_value(&a, "--high", &v)) high_s = v;
    else if (argv[a.i][0] != '-' && !in_path) in_path = argv[a.i++];
    else if (argv[a.i][0] != '-' && !out_path) out_path = argv[a.i++];
    else cli_unknown(&a);
  }
  int64_t size = 0;
  double low = SG_EDGES_LOW, high = SG_EDGES_HIGH;
  if (!a.failed && (!in_path || !out_path)) {
    cli_error("edges", "INPUT and OUTPUT are required (see sketchguide edges --help)");
    a.failed = 1;
  }
  if (a.failed || (size_s && cli_parse_int("edges", "--size", size_s, 1, 4096, &size)) ||
      (low_s && cli_parse_double("edges", "--low", low_s, 0, 10, &low)) ||
      (high_s && cli_parse_double("edges", "--high", high_s, 0, 10, &high)))
    return CLI_USAGE;
  if (low > high) {
    cli_error("edges", "--low: %g is above --high %g", low, high);
    return CLI_USAGE;
  }
  char err[1024];
  sg_image im = {0}, rgb = {0}, sized = {0};
  uint8_t *map = NULL;
  int rc = CLI_USAGE;
  if (sg_image_load(in_path, sg_image_default_params(), &im, err, sizeof err) ||
      sg_image_to_rgb(&im, &rgb, err, sizeof err)) {
    cli_error("edges", "%s: %s", in_path, err);
    goto done;
  }
  sg_image *src = &rgb;
  if (size && (rgb.width != size || rgb.height != size)) {
    if (sg_image_resize(&rgb, (int32_t)size, (int32_t)size, &sized, err, sizeof err)) {
      cli_error("edges", "%s: %s", in_path, err);
      goto done;
    }
    src = &sized;
  }
  rc = CLI_FAIL;
  if (!(map = malloc((size_t)src->width * src->height))) goto done;
  if (sg_edges_detect(src->pixels, src->width, src->height, src->channels, low, high, map, err, sizeof err)) {
    cli_error("edges", "%s: %s", in_path, err);
    goto done;
  }
  sg_png_text text[] = {{"software", "sketchguide edges"}};
  if (sg_png_save(out_path, map, src->width, src->height, 1, text, 1, err, sizeof err)) {
    cli_error("edges", "%s: %s", out_path, err);
    goto done;
  }
  rc = CLI_OK;
done:
  free(map);
  sg_image_free(&im);
  sg_image_free(&rgb);
  sg_image_free(&sized);
  return rc;
}
