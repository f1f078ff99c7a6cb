/* The built-in edge detector (Canny-style on every channel) and the edge F1 score, identical to tools/edges.py.
 *
 * Basic usage:
 *   uint8_t *edges = malloc((size_t)w * h);
 *   char err[256];
 *   if (sg_edges_detect(rgb, w, h, 3, SG_EDGES_LOW, SG_EDGES_HIGH, edges, err, sizeof err)) fail(err);
 *   double f = sg_edges_f1(edges, sketch, w, h, 2);
 *
 * The arithmetic is float64 in numpy's order, so the maps equal tools/edges.py's bit for bit. Thread-safe: no
 * global state.
 */
#ifndef SG_EDGES_H
#define SG_EDGES_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Hysteresis thresholds on the gradient magnitude of [0, 1] images (tools/edges.py LOW, HIGH). */
#define SG_EDGES_LOW 0.08
#define SG_EDGES_HIGH 0.16

enum { SG_EDGES_OK = 0, SG_EDGES_EINVAL = -1, SG_EDGES_ENOMEM = -2 };

/* Detects edges in an 8-bit image of w x h pixels with `channels` interleaved channels (1 for grayscale, 3 for
 * RGB; every channel counts, as edges.detect does with an H x W x C array): per channel a 3x3 blur and Sobel
 * gradients, the channel with the largest gradient at each pixel, non-maximum suppression in four directions,
 * then hysteresis (pixels >= high, grown through 8-connected pixels >= low). Writes w x h bytes into out: 255 on
 * edges, else 0. Returns 0, or a negative SG_EDGES_* code with a message in err. */
int sg_edges_detect(const uint8_t *pixels, int32_t w, int32_t h, int32_t channels, double low, double high,
                    uint8_t *out, char *err, size_t errlen);

/* Edge F1 with a distance tolerance between two w x h maps (edge where > 127): precision = predicted edge pixels
 * within Chebyshev distance tol of a reference edge pixel, recall = reference edge pixels within tol of a predicted
 * one. Returns the F1 in [0, 1]; 0 when either map has no edges or on bad arguments. */
double sg_edges_f1(const uint8_t *pred, const uint8_t *ref, int32_t w, int32_t h, int32_t tol);

#ifdef __cplusplus
}
#endif

#endif
