/* Sketch clean-up on binary stroke maps (speck removal, stroke-keeping downscale, filled regions to outlines, wide strokes thinned), as tools/sample.py. */
#include "sketch.h"

#include "image.h"
#include "mem.h"

#include <stdlib.h>
#include <string.h>

int sg_filled_parse(const char *s) {
  /* the same words as invert's, and the enums agree: AUTO 0, TRUE 1, FALSE 2 */
  int v = sg_invert_parse(s);
  return v == SG_INVERT_AUTO ? SG_FILLED_AUTO : v == SG_INVERT_TRUE ? SG_FILLED_TRUE : v == SG_INVERT_FALSE ? SG_FILLED_FALSE : -1;
}

/* Marks the 8-connected region of value 1 that holds pixel `seed` with `mark` and lists its pixels in q (room for
 * every stroke pixel). Returns how many it listed. */
static size_t flood(uint8_t *m, int32_t w, int32_t h, uint32_t seed, uint8_t mark, uint32_t *q) {
  size_t n = 0;
  m[seed] = mark;
  q[n++] = seed;
  for (size_t i = 0; i < n; i++) {
    int32_t y = (int32_t)(q[i] / (uint32_t)w), x = (int32_t)(q[i] % (uint32_t)w);
    for (int32_t yy = y - 1; yy <= y + 1; yy++) {
      if (yy < 0 || yy >= h) continue;
      for (int32_t xx = x - 1; xx <= x + 1; xx++) {
        if (xx < 0 || xx >= w) continue;
        uint32_t k = (uint32_t)yy * (uint32_t)w + (uint32_t)xx;
        if (m[k] == 1) {
          m[k] = mark;
          q[n++] = k;
        }
      }
    }
  }
  return n;
}

static int bad_map(const uint8_t *m, int32_t w, int32_t h) {
  return !m || w <= 0 || h <= 0 || (uint64_t)w * (uint64_t)h > UINT32_MAX;
}

/* Full-resolution temporaries come from sg_mem (mem.h): a 4096 x 4096 sketch's are given back when freed. */
static void *zalloc(size_t n) {
  void *p = sg_mem_alloc(n);
  if (p) memset(p, 0, n);
  return p;
}

/* A queue with room for every stroke pixel of m (at least one), or NULL; *n gets the pixel count. */
static uint32_t *stroke_queue(const uint8_t *m, size_t px, size_t *n) {
  size_t c = 0;
  for (size_t i = 0; i < px; i++) c += m[i] != 0;
  *n = c;
  return sg_mem_alloc((c ? c : 1) * sizeof(uint32_t));
}

int sg_sketch_despeckle(uint8_t *m, int32_t w, int32_t h) {
  if (bad_map(m, w, h)) return SG_SKETCH_EINVAL;
  size_t px = (size_t)w * (size_t)h, strokes;
  for (size_t i = 0; i < px; i++) m[i] = m[i] != 0;
  uint32_t *q = stroke_queue(m, px, &strokes);
  if (!q) return SG_SKETCH_ENOMEM;
  int64_t big = w > h ? w : h;
  for (size_t i = 0; i < px && strokes; i++) {
    if (m[i] != 1) continue;
    size_t n = flood(m, w, h, (uint32_t)i, 2, q);
    uint32_t x0 = UINT32_MAX, x1 = 0, y0 = UINT32_MAX, y1 = 0;
    for (size_t k = 0; k < n; k++) {
      uint32_t y = q[k] / (uint32_t)w, x = q[k] % (uint32_t)w;
      if (x < x0) x0 = x;
      if (x > x1) x1 = x;
      if (y < y0) y0 = y;
      if (y > y1) y1 = y;
    }
    int64_t extent = (int64_t)(x1 - x0 > y1 - y0 ? x1 - x0 : y1 - y0) + 1;
    if (extent * SG_SKETCH_SPECK_DIVISOR < big)
      for (size_t k = 0; k < n; k++) m[q[k]] = 0;
  }
  for (size_t i = 0; i < px; i++) m[i] = m[i] != 0;
  sg_mem_free(q);
  return SG_SKETCH_OK;
}

int sg_sketch_box_any(const uint8_t *m, int32_t w, int32_t h, int32_t size, uint8_t *out) {
  if (bad_map(m, w, h) || !out || size <= 0 || w < size || h < size) return SG_SKETCH_EINVAL;
  for (int32_t oy = 0; oy < size; oy++) {
    int32_t y0 = (int32_t)((int64_t)oy * h / size), y1 = (int32_t)((int64_t)(oy + 1) * h / size);
    for (int32_t ox = 0; ox < size; ox++) {
      int32_t x0 = (int32_t)((int64_t)ox * w / size), x1 = (int32_t)((int64_t)(ox + 1) * w / size);
      uint8_t any = 0;
      for (int32_t y = y0; y < y1 && !any; y++)
        for (int32_t x = x0; x < x1; x++)
          if (m[(size_t)y * (size_t)w + (size_t)x]) {
            any = 1;
            break;
          }
      out[(size_t)oy * (size_t)size + (size_t)ox] = any;
    }
  }
  return SG_SKETCH_OK;
}

int sg_sketch_filled_to_outline(uint8_t *m, int32_t w, int32_t h, sg_filled mode, int32_t *converted) {
  if (converted) *converted = 0;
  if (bad_map(m, w, h) || (mode != SG_FILLED_AUTO && mode != SG_FILLED_TRUE && mode != SG_FILLED_FALSE))
    return SG_SKETCH_EINVAL;
  if (mode == SG_FILLED_FALSE) return SG_SKETCH_OK;
  size_t px = (size_t)w * (size_t)h, strokes;
  for (size_t i = 0; i < px; i++) m[i] = m[i] != 0;
  uint32_t *q = stroke_queue(m, px, &strokes);
  uint8_t *interior = zalloc(px);
  uint32_t *ii = mode == SG_FILLED_AUTO ? zalloc(((size_t)w + 1) * ((size_t)h + 1) * sizeof *ii) : NULL;
  if (!q || !interior || (mode == SG_FILLED_AUTO && !ii)) {
    sg_mem_free(q), sg_mem_free(interior), sg_mem_free(ii);
    return SG_SKETCH_ENOMEM;
  }
  if (mode == SG_FILLED_AUTO) {
    int32_t big = w > h ? w : h, r = (SG_SKETCH_FILLED_RADIUS * big + 32) / 64, side;
    if (r < 1) r = 1;
    side = 2 * r + 1;
    size_t W = (size_t)w + 1;
    for (int32_t y = 0; y < h; y++)
      for (int32_t x = 0; x < w; x++)
        ii[(size_t)(y + 1) * W + (size_t)(x + 1)] = m[(size_t)y * (size_t)w + (size_t)x] + ii[(size_t)y * W + (size_t)(x + 1)] +
                                                  ii[(size_t)(y + 1) * W + (size_t)x] - ii[(size_t)y * W + (size_t)x];
    for (int32_t y = r; y + r < h; y++)
      for (int32_t x = r; x + r < w; x++) {
        size_t y0 = (size_t)(y - r), y1 = (size_t)(y + r + 1), x0 = (size_t)(x - r), x1 = (size_t)(x + r + 1);
        uint32_t s = ii[y1 * W + x1] - ii[y0 * W + x1] - ii[y1 * W + x0] + ii[y0 * W + x0];
        interior[(size_t)y * (size_t)w + (size_t)x] = s == (uint32_t)(side * side);
      }
  }
  /* regions: 2 kept as drawn, 3 filled (converted) */
  int32_t conv = 0;
  for (size_t i = 0; i < px && strokes; i++) {
    if (m[i] != 1) continue;
    size_t n = flood(m, w, h, (uint32_t)i, 2, q), inner = 0;
    for (size_t k = 0; k < n; k++) inner += interior[q[k]];
    if (mode == SG_FILLED_TRUE || (inner > 0 && inner * 100 >= n * SG_SKETCH_FILLED_PERCENT)) {
      for (size_t k = 0; k < n; k++) m[q[k]] = 3;
      conv++;
    }
  }
  /* the outline, into `interior` (reused): region pixels by a non-region 4-neighbour, outside pixels by a region one */
  for (int32_t y = 0; y < h; y++)
    for (int32_t x = 0; x < w; x++) {
      size_t k = (size_t)y * (size_t)w + (size_t)x;
      int up = y > 0 && m[k - (size_t)w] == 3, down = y + 1 < h && m[k + (size_t)w] == 3;
      int left = x > 0 && m[k - 1] == 3, right = x + 1 < w && m[k + 1] == 3;
      if (m[k] == 3) interior[k] = !(up && down && left && right);
      else interior[k] = m[k] == 2 || (m[k] == 0 && (up || down || left || right));
    }
  memcpy(m, interior, px);
  sg_mem_free(q), sg_mem_free(interior), sg_mem_free(ii);
  if (converted) *converted = conv;
  return SG_SKETCH_OK;
}

/* Zhang-Suen thinning of the 0/1 map m in place (both sub-iterations delete at once; off-map neighbours are 0), the
 * deletions of a sub-iteration marked in del (w x h bytes). */
static void zhang_suen(uint8_t *m, int32_t w, int32_t h, uint8_t *del) {
  static const int dy[8] = {-1, -1, 0, 1, 1, 1, 0, -1}, dx[8] = {0, 1, 1, 1, 0, -1, -1, -1}; /* P2 .. P9 */
  for (int changed = 1; changed;) {
    changed = 0;
    for (int step = 0; step < 2; step++) {
      memset(del, 0, (size_t)w * (size_t)h);
      int any = 0;
      for (int32_t y = 0; y < h; y++)
        for (int32_t x = 0; x < w; x++) {
          if (!m[(size_t)y * (size_t)w + (size_t)x]) continue;
          int p[8], b = 0, a = 0;
          for (int k = 0; k < 8; k++) {
            int32_t yy = y + dy[k], xx = x + dx[k];
            p[k] = yy >= 0 && yy < h && xx >= 0 && xx < w && m[(size_t)yy * (size_t)w + (size_t)xx];
            b += p[k];
          }
          for (int k = 0; k < 8; k++) a += !p[k] && p[(k + 1) % 8];
          int c = step == 0 ? !(p[0] && p[2] && p[4]) && !(p[2] && p[4] && p[6])
                            : !(p[0] && p[2] && p[6]) && !(p[0] && p[4] && p[6]);
          if (b >= 2 && b <= 6 && a == 1 && c) del[(size_t)y * (size_t)w + (size_t)x] = 1, any = 1;
        }
      if (any) {
        for (size_t i = 0; i < (size_t)w * (size_t)h; i++)
          if (del[i]) m[i] = 0;
        changed = 1;
      }
    }
  }
}

int sg_sketch_thin_wide(uint8_t *m, int32_t w, int32_t h) {
  if (bad_map(m, w, h)) return SG_SKETCH_EINVAL;
  size_t px = (size_t)w * (size_t)h, strokes;
  for (size_t i = 0; i < px; i++) m[i] = m[i] != 0;
  uint32_t *q = stroke_queue(m, px, &strokes);
  uint8_t *inner = zalloc(px), *skel = sg_mem_alloc(px), *del = sg_mem_alloc(px);
  if (!q || !inner || !skel || !del) {
    sg_mem_free(q), sg_mem_free(inner), sg_mem_free(skel), sg_mem_free(del);
    return SG_SKETCH_ENOMEM;
  }
  for (int32_t y = 1; y + 1 < h; y++)
    for (int32_t x = 1; x + 1 < w; x++) {
      int all = 1;
      for (int32_t yy = y - 1; yy <= y + 1 && all; yy++)
        for (int32_t xx = x - 1; xx <= x + 1; xx++) all &= m[(size_t)yy * (size_t)w + (size_t)xx];
      inner[(size_t)y * (size_t)w + (size_t)x] = (uint8_t)all;
    }
  memcpy(skel, m, px);
  zhang_suen(skel, w, h, del);
  /* regions: 2 kept as drawn, 3 wide (thinned) */
  for (size_t i = 0; i < px && strokes; i++) {
    if (m[i] != 1) continue;
    size_t n = flood(m, w, h, (uint32_t)i, 2, q), in = 0;
    for (size_t k = 0; k < n; k++) in += inner[q[k]];
    if (in > 0 && in * 100 >= n * SG_SKETCH_WIDE_PERCENT) {
      for (size_t k = 0; k < n; k++) m[q[k]] = 3;
    }
  }
  for (size_t i = 0; i < px; i++) m[i] = m[i] == 2 || (m[i] == 3 && skel[i]);
  sg_mem_free(q), sg_mem_free(inner), sg_mem_free(skel), sg_mem_free(del);
  return SG_SKETCH_OK;
}
