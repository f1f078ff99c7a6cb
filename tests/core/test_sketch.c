/* Tests of core/sketch.c and the sketch maps built on it: speck removal, the stroke-keeping downscale, filled regions
 * to outlines, wide strokes thinned, and on drawn sketches (tests/core/data/sketches, from tools/sketches.py fixtures): a filled
 * silhouette's map is its outline's map, a 1 px stroke at 256 survives the downscale to 64, a photographed JPEG
 * sketch gives no strokes away from the drawing. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "image.h"
#include "sketch.h"

#include "check.h"

#define MAP 64

static const char *data_dir;

/* The 64 x 64 map of sketch file `name` (NULL when it cannot be read or mapped). */
static float *map_of(const char *name, sg_filled filled, int32_t *converted) {
  char path[1024], err[256] = "";
  snprintf(path, sizeof path, "%s/%s", data_dir, name);
  sg_image im;
  if (sg_image_load(path, sg_image_default_params(), &im, err, sizeof err)) {
    CHECK(0, "%s: %s", path, err);
    return NULL;
  }
  float *m = malloc(MAP * MAP * sizeof *m);
  int rc = sg_sketch_map_filled(&im, MAP, SG_INVERT_AUTO, filled, m, NULL, converted, err, sizeof err);
  sg_image_free(&im);
  CHECK(rc == 0, "%s: %s", name, err);
  if (rc) free(m), m = NULL;
  return m;
}

/* Share of a's strokes within Chebyshev distance tol of one of b's (1 when a has none). */
static double near_share(const float *a, const float *b, int tol) {
  int n = 0, hit = 0;
  for (int y = 0; y < MAP; y++)
    for (int x = 0; x < MAP; x++) {
      if (a[y * MAP + x] != 1.0f) continue;
      n++;
      int found = 0;
      for (int dy = -tol; dy <= tol && !found; dy++)
        for (int dx = -tol; dx <= tol && !found; dx++) {
          int yy = y + dy, xx = x + dx;
          found = yy >= 0 && yy < MAP && xx >= 0 && xx < MAP && b[yy * MAP + xx] == 1.0f;
        }
      hit += found;
    }
  return n ? (double)hit / n : 1.0;
}

static int count(const float *m) {
  int n = 0;
  for (int i = 0; i < MAP * MAP; i++) n += m[i] == 1.0f;
  return n;
}

static void test_units(void) {
  /* specks: on a 40 x 40 map a mark under 1 px (40 / 40) is a speck: none here; on 80 x 80, under 2 px */
  uint8_t m[80 * 80];
  memset(m, 0, sizeof m);
  m[5 * 80 + 5] = 1;                                        /* 1 x 1: a speck */
  m[10 * 80 + 10] = m[11 * 80 + 11] = 1;                    /* a diagonal pair: 2 x 2, kept */
  for (int x = 20; x < 60; x++) m[40 * 80 + x] = 1;         /* a line */
  CHECK(sg_sketch_despeckle(m, 80, 80) == 0, "despeckle");
  CHECK(m[5 * 80 + 5] == 0 && m[10 * 80 + 10] == 1 && m[11 * 80 + 11] == 1 && m[40 * 80 + 30] == 1,
        "speck cleared, pair and line kept");
  CHECK(sg_sketch_despeckle(NULL, 80, 80) == SG_SKETCH_EINVAL && sg_sketch_despeckle(m, 0, 80) == SG_SKETCH_EINVAL,
        "bad maps");

  /* box_any: a one-pixel line on 256 survives at 64; a box with nothing stays empty */
  static uint8_t big[256 * 256], small[64 * 64];
  memset(big, 0, sizeof big);
  for (int x = 0; x < 256; x++) big[(size_t)(x / 2 + 50) * 256 + (size_t)x] = 1;
  CHECK(sg_sketch_box_any(big, 256, 256, 64, small) == 0, "box_any");
  int on = 0;
  for (int i = 0; i < 64 * 64; i++) on += small[i];
  CHECK(on >= 64 && small[(size_t)(50 / 4) * 64] == 1 && small[63 * 64 + 63] == 0, "thin line kept: %d pixels", on);
  CHECK(sg_sketch_box_any(big, 256, 256, 300, small) == SG_SKETCH_EINVAL, "box_any cannot upscale");

  /* filled_to_outline: a filled 20 x 20 square becomes its two-pixel outline; a 3-pixel-wide ring stays as drawn */
  uint8_t f[64 * 64];
  memset(f, 0, sizeof f);
  for (int y = 10; y < 30; y++)
    for (int x = 10; x < 30; x++) f[y * 64 + x] = 1;
  for (int y = 36; y < 60; y++)
    for (int x = 36; x < 60; x++) f[y * 64 + x] = y < 39 || y >= 57 || x < 39 || x >= 57;
  uint8_t ring[64 * 64];
  memcpy(ring, f, sizeof f);
  int32_t conv = -1;
  CHECK(sg_sketch_filled_to_outline(f, 64, 64, SG_FILLED_AUTO, &conv) == 0 && conv == 1, "one region filled: %d", conv);
  CHECK(f[10 * 64 + 15] == 1 && f[9 * 64 + 15] == 1 && f[11 * 64 + 15] == 0 && f[20 * 64 + 20] == 0 &&
            f[8 * 64 + 15] == 0,
        "outline rows 9 and 10, inside cleared");
  CHECK(!memcmp(f + 33 * 64, ring + 33 * 64, 31 * 64), "the ring is untouched");
  memcpy(f, ring, sizeof f);
  CHECK(sg_sketch_filled_to_outline(f, 64, 64, SG_FILLED_FALSE, &conv) == 0 && conv == 0 && !memcmp(f, ring, sizeof f),
        "false keeps everything");
  CHECK(sg_sketch_filled_to_outline(f, 64, 64, SG_FILLED_TRUE, &conv) == 0 && conv == 2 && f[20 * 64 + 20] == 0,
        "true converts both regions: %d", conv);
  CHECK(sg_sketch_filled_to_outline(f, 64, 64, (sg_filled)9, &conv) == SG_SKETCH_EINVAL, "bad mode");
  /* thin_wide: a 5-pixel-wide bar becomes a one-pixel line along its middle; a 2-pixel-wide bar stays */
  uint8_t t[32 * 32];
  memset(t, 0, sizeof t);
  for (int x = 4; x < 28; x++) t[10 * 32 + x] = t[11 * 32 + x] = t[12 * 32 + x] = t[13 * 32 + x] = t[14 * 32 + x] = 1;
  for (int x = 4; x < 28; x++) t[22 * 32 + x] = t[23 * 32 + x] = 1;
  CHECK(sg_sketch_thin_wide(t, 32, 32) == 0, "thin_wide");
  int col = 0, two = 0;
  for (int y = 0; y < 20; y++) col += t[y * 32 + 16];
  for (int y = 20; y < 32; y++) two += t[y * 32 + 16];
  CHECK(col == 1 && t[12 * 32 + 16] == 1 && two == 2, "bar thinned to its middle (%d), thin bar kept (%d)", col, two);
  CHECK(sg_sketch_thin_wide(NULL, 32, 32) == SG_SKETCH_EINVAL, "thin_wide: bad map");
  CHECK(sg_filled_parse("AUTO") == SG_FILLED_AUTO && sg_filled_parse("yes") == SG_FILLED_TRUE &&
            sg_filled_parse("0") == SG_FILLED_FALSE && sg_filled_parse("filled") == -1 && sg_filled_parse(NULL) == -1,
        "parse");
}

static void test_drawn(void) {
  for (int k = 0; k < 3; k++) {
    char name[64];
    int32_t conv = -1;
    snprintf(name, sizeof name, "ref_%d.png", k);
    float *ref = map_of(name, SG_FILLED_FALSE, NULL);
    snprintf(name, sizeof name, "filled_%d.png", k);
    float *filled = map_of(name, SG_FILLED_AUTO, &conv);
    float *kept = map_of(name, SG_FILLED_FALSE, NULL);
    snprintf(name, sizeof name, "outline_%d.png", k);
    float *outline = map_of(name, SG_FILLED_AUTO, NULL);
    snprintf(name, sizeof name, "thin_%d.png", k);
    float *thin = map_of(name, SG_FILLED_AUTO, NULL);
    snprintf(name, sizeof name, "jpeg_%d.jpg", k);
    float *jpeg = map_of(name, SG_FILLED_AUTO, NULL);
    if (!ref || !filled || !kept || !outline || !thin || !jpeg) goto next;
    /* a silhouette means its outline: the two maps agree to a pixel, both ways */
    CHECK(conv == 1, "case %d: %d regions converted", k, conv);
    CHECK(near_share(filled, outline, 1) >= 0.98 && near_share(outline, filled, 1) >= 0.98,
          "case %d: filled vs outline %.3f, %.3f", k, near_share(filled, outline, 1), near_share(outline, filled, 1));
    CHECK(count(kept) > 3 * count(outline), "case %d: filled false keeps the silhouette (%d pixels)", k, count(kept));
    /* a 1 px stroke at 256: every outline pixel has a stroke within a pixel */
    CHECK(near_share(ref, thin, 1) >= 0.98, "case %d: thin stroke kept for %.3f of the outline", k,
          near_share(ref, thin, 1));
    /* grain, dust and JPEG blocks: no stroke 2 px away from the drawing, and the drawing is there */
    CHECK(near_share(jpeg, ref, 2) == 1.0, "case %d: %.3f of the JPEG map's strokes are on the drawing", k,
          near_share(jpeg, ref, 2));
    CHECK(near_share(ref, jpeg, 1) >= 0.95, "case %d: JPEG map covers %.3f of the outline", k, near_share(ref, jpeg, 1));
  next:
    free(ref), free(filled), free(kept), free(outline), free(thin), free(jpeg);
  }
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s SKETCH_DIR\n", argv[0]);
    return 2;
  }
  data_dir = argv[1];
  test_units();
  test_drawn();
  if (failures) fprintf(stderr, "%d failures\n", failures);
  return failures ? 1 : 0;
}
