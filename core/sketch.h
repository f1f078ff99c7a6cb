/* Sketch clean-up on binary stroke maps: speck removal, a downscale that keeps thin strokes, filled regions to outlines, wide strokes to lines.
 *
 * Basic usage (what sg_sketch_map in image.h does with a sketch larger than the map):
 *   uint8_t *m = ...;                       // w x h, 1 = stroke (thresholded at the sketch's own resolution)
 *   sg_sketch_despeckle(m, w, h);           // JPEG blocks, grain and dust are not strokes
 *   sg_sketch_box_any(m, w, h, 64, small);  // every stroke survives the downscale, however thin
 *   sg_sketch_filled_to_outline(small, 64, 64, SG_FILLED_AUTO, &converted);  // a silhouette means its outline
 *   sg_sketch_thin_wide(small, 64, 64);     // a marker line means its centre line
 *
 * Maps are row-major bytes, 0 or 1. Every function matches tools/sample.py (despeckle, box_any,
 * filled_to_outline, thin_wide) value for value. Functions return 0 or a negative SG_SKETCH_E* code and change nothing on
 * error; they keep no state and are thread-safe.
 */
#ifndef SG_SKETCH_H
#define SG_SKETCH_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum { SG_SKETCH_OK = 0, SG_SKETCH_EINVAL = -1, SG_SKETCH_ENOMEM = -2 };

/* What a filled region of a sketch means: AUTO detects filled regions (below), TRUE takes every region as
 * filled, FALSE none (strokes are used as drawn). */
typedef enum { SG_FILLED_AUTO = 0, SG_FILLED_TRUE, SG_FILLED_FALSE } sg_filled;

/* At a 64 x 64 map (scaled with the map's larger side): a pixel is interior when the (2r+1)^2 square around it,
 * r = SG_SKETCH_FILLED_RADIUS, is all strokes; a region is filled when at least SG_SKETCH_FILLED_PERCENT percent
 * of its pixels are interior. A marker stroke up to 6 pixels wide at 64 has no interior pixel. */
#define SG_SKETCH_FILLED_RADIUS 3
#define SG_SKETCH_FILLED_PERCENT 10
/* A region is a wide stroke when at least SG_SKETCH_WIDE_PERCENT percent of its pixels have a 3 x 3 square of
 * strokes around them. */
#define SG_SKETCH_WIDE_PERCENT 10
/* A mark whose bounding box's larger side is under 1/SG_SKETCH_SPECK_DIVISOR of the map's larger side is a speck. */
#define SG_SKETCH_SPECK_DIVISOR 40

/* Returns the sg_filled for "auto", "true"/"1"/"yes" or "false"/"0"/"no" (any case), or -1 (also for NULL). */
int sg_filled_parse(const char *s);

/* Clears, in place, every 8-connected mark of the w x h map m whose bounding box's larger side is under
 * max(w, h) / SG_SKETCH_SPECK_DIVISOR. Returns 0, SG_SKETCH_EINVAL or SG_SKETCH_ENOMEM. */
int sg_sketch_despeckle(uint8_t *m, int32_t w, int32_t h);

/* Downscales the w x h map m (w, h >= size) to size x size into out (caller-provided): an output pixel is a stroke
 * when any pixel of its source box, rows [y h / size, (y + 1) h / size) and likewise columns (integer division),
 * is. Returns 0 or SG_SKETCH_EINVAL. */
int sg_sketch_box_any(const uint8_t *m, int32_t w, int32_t h, int32_t size, uint8_t *out);

/* Replaces, in place, each filled 8-connected region of the w x h map m (as mode says) by its two-pixel outline:
 * its pixels with a 4-neighbour outside it (or off the map) and the pixels outside it with a 4-neighbour in it.
 * *converted (may be NULL) gets the number of regions replaced. Returns 0, SG_SKETCH_EINVAL or SG_SKETCH_ENOMEM. */
int sg_sketch_filled_to_outline(uint8_t *m, int32_t w, int32_t h, sg_filled mode, int32_t *converted);

/* Thins, in place, each wide 8-connected region of the w x h map m (see SG_SKETCH_WIDE_PERCENT: a marker line 3
 * or more pixels wide) to its one-pixel Zhang-Suen skeleton; thinner strokes are kept, as the edges the LGP learnt
 * are 1 to 2 pixels wide. Returns 0, SG_SKETCH_EINVAL or SG_SKETCH_ENOMEM. */
int sg_sketch_thin_wide(uint8_t *m, int32_t w, int32_t h);

#ifdef __cplusplus
}
#endif

#endif
