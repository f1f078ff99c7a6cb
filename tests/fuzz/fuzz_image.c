/* Fuzz target for core/image.c: a sketch upload as the server decodes it (magic bytes, its max_image_pixels),
 * then the sketch map at the bundled model's and SD 1.5's sizes, RGB conversion, resizing and a PNG round trip. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "image.h"

#include "fuzz.h"

#ifdef SG_FUZZ_LIBFUZZER
#include <zlib.h>

size_t LLVMFuzzerMutate(uint8_t *data, size_t size, size_t max_size);

static uint32_t be32(const uint8_t *b) { return (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3]; }

/* libpng refuses a chunk whose CRC is wrong, which almost every mutation makes it: the mutator rewrites the CRCs
 * of a mutated PNG (7 times in 8) so that the fuzzer gets past them into the chunks' contents. The saved input
 * is the fixed one, so that it replays as it ran. */
size_t LLVMFuzzerCustomMutator(uint8_t *data, size_t size, size_t max_size, unsigned int seed) {
  size = LLVMFuzzerMutate(data, size, max_size);
  if (seed % 8 == 0 || sg_image_sniff(data, size) != SG_IMAGE_PNG) return size;
  for (size_t pos = 8; pos + 12 <= size;) {
    uint32_t n = be32(data + pos);
    if (n > size - pos - 12) break;
    uint32_t crc = (uint32_t)crc32(0, data + pos + 4, n + 4);
    uint8_t *c = data + pos + 8 + n;
    c[0] = (uint8_t)(crc >> 24), c[1] = (uint8_t)(crc >> 16), c[2] = (uint8_t)(crc >> 8), c[3] = (uint8_t)crc;
    pos += 12 + (size_t)n;
  }
  return size;
}
#endif

/* The server's default max_image_pixels (server/http.c, config/sketchguide.json): 4096 x 4096. */
#define FUZZ_MAX_PIXELS (4096 * 4096)

/* The extra maps, the RGB conversion, the resize and the PNG round trip are kept to small images (most of what
 * the fuzzer makes), so that they do not dominate its time. */
#define FUZZ_ROUND_TRIP_PIXELS (64 * 64)

static void check_sketch_map(const sg_image *im, int32_t size, sg_invert inv) {
  char err[256];
  float *map = malloc(sizeof *map * (size_t)size * (size_t)size);
  FUZZ_CHECK(map != NULL, "out of memory for a %d x %d map", size, size);
  int inverted = -1;
  int rc = sg_sketch_map(im, size, inv, map, &inverted, err, sizeof err);
  FUZZ_CHECK(rc == 0, "sg_sketch_map(%d x %d, %d channels -> %d, invert %d) failed: %d %s", im->width, im->height,
             im->channels, size, (int)inv, rc, err);
  FUZZ_CHECK(inverted == 0 || inverted == 1, "inverted is %d", inverted);
  FUZZ_CHECK(inv != SG_INVERT_TRUE || inverted == 1, "invert true did not invert");
  FUZZ_CHECK(inv != SG_INVERT_FALSE || inverted == 0, "invert false inverted");
  for (size_t i = 0; i < (size_t)size * (size_t)size; i++)
    FUZZ_CHECK(map[i] == 0.0f || map[i] == 1.0f, "map[%zu] = %g is not binary", i, (double)map[i]);
  free(map);
}

/* Re-encodes im as PNG and decodes it again: the same size, channels and pixels must come back. */
static void check_round_trip(const sg_image *im) {
  char err[256];
  uint8_t *png = NULL;
  size_t png_len = 0;
  sg_png_text text[] = {{"prompt", "fuzz \xc3\xa9"}, {"seed", "1"}};
  int rc = sg_png_encode(im->pixels, im->width, im->height, im->channels, text, 2, &png, &png_len, err, sizeof err);
  FUZZ_CHECK(rc == 0, "sg_png_encode of a decoded %d x %d x %d image failed: %s", im->width, im->height,
             im->channels, err);
  sg_image back;
  rc = sg_image_decode(png, png_len, sg_image_default_params(), &back, err, sizeof err);
  FUZZ_CHECK(rc == 0, "decoding our own PNG failed: %s", err);
  FUZZ_CHECK(back.width == im->width && back.height == im->height && back.channels == im->channels,
             "round trip changed %d x %d x %d into %d x %d x %d", im->width, im->height, im->channels, back.width,
             back.height, back.channels);
  FUZZ_CHECK(!memcmp(back.pixels, im->pixels, (size_t)im->width * (size_t)im->height * (size_t)im->channels),
             "round trip changed the pixels");
  sg_image_free(&back);
  free(png);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t len) {
  sg_image_params p = sg_image_default_params();
  p.max_pixels = FUZZ_MAX_PIXELS;
  sg_image im;
  char err[256] = "";
  sg_image_format format = sg_image_sniff(data, len);
  int rc = sg_image_decode(data, len, p, &im, err, sizeof err);
  if (rc) {
    FUZZ_CHECK(rc == SG_IMAGE_EUNSUPPORTED || rc == SG_IMAGE_ETOOBIG || rc == SG_IMAGE_ECORRUPT ||
                   rc == SG_IMAGE_ENOMEM,
               "unexpected decode error %d: %s", rc, err);
    FUZZ_CHECK(im.pixels == NULL && im.width == 0 && im.height == 0 && im.channels == 0,
               "a failed decode left *out set");
    FUZZ_CHECK(err[0] != '\0', "decode error %d without a message", rc);
    FUZZ_CHECK(format != SG_IMAGE_UNKNOWN || rc == SG_IMAGE_EUNSUPPORTED, "unknown data gave error %d", rc);
    return 0;
  }
  FUZZ_CHECK(format != SG_IMAGE_UNKNOWN, "decoded data that is neither PNG nor JPEG by its magic bytes");
  FUZZ_CHECK(im.width > 0 && im.height > 0 && (int64_t)im.width * im.height <= FUZZ_MAX_PIXELS,
             "decoded a %d x %d image (limit %d pixels)", im.width, im.height, FUZZ_MAX_PIXELS);
  FUZZ_CHECK(im.channels >= 1 && im.channels <= 4 && im.pixels != NULL, "decoded %d channels", im.channels);

  /* The server's path: the map at the model's size with the request's invert mode (auto by default); the mode
   * comes from the data's length so that one input file stays one input. */
  sg_invert inv = (sg_invert)(len % 3);
  check_sketch_map(&im, 64, inv);
  if ((int64_t)im.width * im.height <= FUZZ_ROUND_TRIP_PIXELS) {
    check_sketch_map(&im, 512, SG_INVERT_AUTO);
    if (im.width == im.height) check_sketch_map(&im, im.width, SG_INVERT_AUTO); /* no resize */

    sg_image rgb, sized;
    rc = sg_image_to_rgb(&im, &rgb, err, sizeof err);
    FUZZ_CHECK(rc == 0 && rgb.channels == 3 && rgb.width == im.width && rgb.height == im.height,
               "sg_image_to_rgb failed: %s", err);
    rc = sg_image_resize(&rgb, 1 + im.height % 97, 1 + im.width % 89, &sized, err, sizeof err);
    FUZZ_CHECK(rc == 0 && sized.channels == 3 && sized.width == 1 + im.height % 97 && sized.height == 1 + im.width % 89,
               "sg_image_resize failed: %s", err);
    sg_image_free(&sized);
    sg_image_free(&rgb);
    check_round_trip(&im);
  }
  sg_image_free(&im);
  FUZZ_CHECK(im.pixels == NULL && im.width == 0, "sg_image_free did not zero the image");
  return 0;
}
