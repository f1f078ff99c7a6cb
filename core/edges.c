/* The built-in edge detector and edge F1, operation for operation as tools/edges.py computes them in numpy. */
#include "edges.h"

#include "errbuf.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define MAX_PIXELS (1 << 28)

/* numpy's _conv_sep: edge-padded 3-tap filter along x (kx), then along y (ky), sums taken left to right. */
static void conv_sep(const double *x, int32_t w, int32_t h, const double kx[3], const double ky[3], double *tmp,
                     double *out) {
  /* tmp holds the horizontal pass for rows -1..h (h + 2 rows), the padded rows being copies of rows 0 and h-1 */
  for (int32_t r = -1; r <= h; r++) {
    const double *row = x + (size_t)(r < 0 ? 0 : r >= h ? h - 1 : r) * w;
    double *t = tmp + (size_t)(r + 1) * w;
    for (int32_t c = 0; c < w; c++) {
      double a = row[c > 0 ? c - 1 : 0], b = row[c], d = row[c < w - 1 ? c + 1 : w - 1];
      t[c] = kx[0] * a + kx[1] * b + kx[2] * d;
    }
  }
  for (int32_t r = 0; r < h; r++)
    for (int32_t c = 0; c < w; c++) {
      size_t i = (size_t)r * w + c;
      out[i] = ky[0] * tmp[i] + ky[1] * tmp[i + (size_t)w] + ky[2] * tmp[i + 2 * (size_t)w];
    }
}

/* m at (r, c), 0 outside the image (numpy's zero padding of the magnitude). */
static double at0(const double *m, int32_t w, int32_t h, int32_t r, int32_t c) {
  return r < 0 || r >= h || c < 0 || c >= w ? 0.0 : m[(size_t)r * w + c];
}

/* edges.py _blur with sigma > 0: taps k (2r + 1) along x then along y, edge padding, summed in tap order. */
static void conv_gauss(const double *x, int32_t w, int32_t h, const double *k, int32_t r, double *tmp, double *out) {
  for (int32_t y = 0; y < h; y++) {
    const double *row = x + (size_t)y * w;
    for (int32_t c = 0; c < w; c++) {
      double t = 0;
      for (int32_t j = 0; j <= 2 * r; j++) {
        int32_t cc = c + j - r;
        double v = k[j] * row[cc < 0 ? 0 : cc >= w ? w - 1 : cc];
        t = j ? t + v : v;
      }
      tmp[(size_t)y * w + c] = t;
    }
  }
  for (int32_t y = 0; y < h; y++)
    for (int32_t c = 0; c < w; c++) {
      double t = 0;
      for (int32_t j = 0; j <= 2 * r; j++) {
        int32_t yy = y + j - r;
        double v = k[j] * tmp[(size_t)(yy < 0 ? 0 : yy >= h ? h - 1 : yy) * w + c];
        t = j ? t + v : v;
      }
      out[(size_t)y * w + c] = t;
    }
}

/* Zhang-Suen thinning of e (w x h, 0 or nonzero) in place; kill is w x h scratch. Outside the image is background. */
static void thin_lines(uint8_t *e, int32_t w, int32_t h, uint8_t *kill) {
  static const int nb[8][2] = {{-1, 0}, {-1, 1}, {0, 1}, {1, 1}, {1, 0}, {1, -1}, {0, -1}, {-1, -1}}; /* P2..P9 */
  for (int changed = 1; changed;) {
    changed = 0;
    for (int sub = 0; sub < 2; sub++) {
      int any = 0;
      for (int32_t r = 0; r < h; r++)
        for (int32_t c = 0; c < w; c++) {
          size_t i = (size_t)r * w + c;
          kill[i] = 0;
          if (!e[i]) continue;
          int v[8], b = 0, a = 0;
          for (int k = 0; k < 8; k++) {
            int32_t rr = r + nb[k][0], cc = c + nb[k][1];
            v[k] = rr >= 0 && rr < h && cc >= 0 && cc < w && e[(size_t)rr * w + cc];
            b += v[k];
          }
          for (int k = 0; k < 8; k++) a += !v[k] && v[(k + 1) % 8];
          int cond = sub == 0 ? !(v[0] && v[2] && v[4]) && !(v[2] && v[4] && v[6])
                              : !(v[0] && v[2] && v[6]) && !(v[0] && v[4] && v[6]);
          if (b >= 2 && b <= 6 && a == 1 && cond) kill[i] = 1, any = 1;
        }
      if (any) {
        for (size_t i = 0; i < (size_t)w * h; i++)
          if (kill[i]) e[i] = 0;
        changed = 1;
      }
    }
  }
}

/* Clears the 8-connected groups of e (255/0) with fewer than min_length pixels; seen and stack are scratch. */
static void drop_short(uint8_t *e, int32_t w, int32_t h, int32_t min_length, uint8_t *seen, int32_t *stack) {
  size_t n = (size_t)w * h;
  memset(seen, 0, n);
  for (size_t s = 0; s < n; s++) {
    if (!e[s] || seen[s]) continue;
    /* the group is collected on the stack's low part (grown as a queue), so it can be cleared afterwards */
    size_t len = 0, next = 0;
    stack[len++] = (int32_t)s;
    seen[s] = 1;
    while (next < len) {
      int32_t i = stack[next++], r = i / w, c = i % w;
      for (int32_t dy = -1; dy <= 1; dy++)
        for (int32_t dx = -1; dx <= 1; dx++) {
          int32_t rr = r + dy, cc = c + dx;
          if (rr < 0 || rr >= h || cc < 0 || cc >= w) continue;
          size_t j = (size_t)rr * w + cc;
          if (e[j] && !seen[j]) {
            seen[j] = 1;
            stack[len++] = (int32_t)j;
          }
        }
    }
    if (len < (size_t)min_length)
      for (size_t k = 0; k < len; k++) e[stack[k]] = 0;
  }
}

sg_edges_params sg_edges_default_params(void) {
  sg_edges_params p = {0.0, SG_EDGES_LOW, SG_EDGES_HIGH, 0, 0};
  return p;
}

sg_edges_params sg_edges_generated_params(int32_t downscale) {
  if (downscale < 1) downscale = 1;
  sg_edges_params p = {0.5 * downscale, 0.08, 0.16, 1, 2 * downscale}; /* tools/edges.py generated() */
  if (p.sigma > 16) p.sigma = 16;
  return p;
}

int sg_edges_detect(const uint8_t *pixels, int32_t w, int32_t h, int32_t channels, double low, double high,
                    uint8_t *out, char *err, size_t errlen) {
  sg_edges_params p = sg_edges_default_params();
  p.low = low;
  p.high = high;
  return sg_edges_detect_params(pixels, w, h, channels, p, out, err, errlen);
}

int sg_edges_detect_params(const uint8_t *pixels, int32_t w, int32_t h, int32_t channels, sg_edges_params p,
                           uint8_t *out, char *err, size_t errlen) {
  double low = p.low, high = p.high;
  if (!pixels || !out) {
    sg_set_err(err, errlen, "edges: missing image or output");
    return SG_EDGES_EINVAL;
  }
  if (w < 1 || h < 1 || (int64_t)w * h > MAX_PIXELS || channels < 1 || channels > 4) {
    sg_set_err(err, errlen, "edges: bad image shape %dx%d with %d channels", (int)w, (int)h, (int)channels);
    return SG_EDGES_EINVAL;
  }
  if (!isfinite(low) || !isfinite(high)) {
    sg_set_err(err, errlen, "edges: thresholds must be finite");
    return SG_EDGES_EINVAL;
  }
  if (!(p.sigma >= 0 && p.sigma <= 16) || p.min_length < 0) {
    sg_set_err(err, errlen, "edges: sigma must be in [0, 16] and the minimum length >= 0");
    return SG_EDGES_EINVAL;
  }
  double kern[2 * 48 + 1];
  int32_t kr = 0;
  if (p.sigma > 0) { /* edges.py gaussian_kernel */
    kr = (int32_t)ceil(3.0 * p.sigma);
    if (kr < 1) kr = 1;
    double s = 0;
    for (int32_t i = 0; i <= 2 * kr; i++) {
      double z = (double)(i - kr) / p.sigma;
      kern[i] = exp(-0.5 * (z * z));
      s += kern[i];
    }
    for (int32_t i = 0; i <= 2 * kr; i++) kern[i] /= s;
  }
  size_t n = (size_t)w * h;
  double *x = malloc(n * sizeof *x), *b = malloc(n * sizeof *b), *tmp = malloc((n + 2 * (size_t)w) * sizeof *tmp);
  double *gx = malloc(n * sizeof *gx), *gy = malloc(n * sizeof *gy);
  double *bm = malloc(n * sizeof *bm), *bgx = malloc(n * sizeof *bgx), *bgy = malloc(n * sizeof *bgy);
  uint8_t *weak = malloc(n);
  int32_t *stack = malloc(n * sizeof *stack);
  int rc = SG_EDGES_OK;
  if (!x || !b || !tmp || !gx || !gy || !bm || !bgx || !bgy || !weak || !stack) {
    sg_set_err(err, errlen, "edges: out of memory");
    rc = SG_EDGES_ENOMEM;
    goto done;
  }
  static const double blur[3] = {0.25, 0.5, 0.25}, diff[3] = {-1.0, 0.0, 1.0};
  for (int32_t ch = 0; ch < channels; ch++) {
    for (size_t i = 0; i < n; i++) x[i] = (double)pixels[i * (size_t)channels + (size_t)ch] / 255.0;
    if (kr) conv_gauss(x, w, h, kern, kr, tmp, b);
    else conv_sep(x, w, h, blur, blur, tmp, b);
    conv_sep(b, w, h, diff, blur, tmp, gx);
    conv_sep(b, w, h, blur, diff, tmp, gy);
    for (size_t i = 0; i < n; i++) {
      double m = hypot(gx[i], gy[i]);
      if (ch == 0 || m > bm[i]) {
        bm[i] = m;
        bgx[i] = gx[i];
        bgy[i] = gy[i];
      }
    }
  }
  /* Non-maximum suppression. The direction is (deg(atan2(gy, gx)) + 180) mod 180, rounded half to even (np.round)
   * to a multiple of 45; numpy's atan2 may differ from libm's in the last bit, which only matters exactly on a
   * rounding boundary. */
  for (int32_t r = 0; r < h; r++)
    for (int32_t c = 0; c < w; c++) {
      size_t i = (size_t)r * w + c;
      double ang = fmod(atan2(bgy[i], bgx[i]) * (180.0 / M_PI) + 180.0, 180.0);
      if (ang < 0) ang += 180.0; /* numpy's % takes the divisor's sign */
      int q = ((int)nearbyint(ang / 45.0)) % 4;
      static const int d1[4][2] = {{0, 1}, {1, 1}, {1, 0}, {1, -1}}; /* (dy, dx); the other neighbour mirrors it */
      double m = bm[i];
      double n1 = at0(bm, w, h, r + d1[q][0], c + d1[q][1]), n2 = at0(bm, w, h, r - d1[q][0], c - d1[q][1]);
      int keep = m >= n1 && m >= n2;
      weak[i] = keep && m >= low;
      out[i] = keep && m >= high ? 255 : 0;
    }
  /* Hysteresis: every weak pixel 8-connected through weak pixels to a strong one (the fixed point of edges.py's
   * growing loop). */
  size_t top = 0;
  for (size_t i = 0; i < n; i++)
    if (out[i]) stack[top++] = (int32_t)i;
  while (top) {
    int32_t i = stack[--top], r = i / w, c = i % w;
    for (int32_t dy = -1; dy <= 1; dy++)
      for (int32_t dx = -1; dx <= 1; dx++) {
        int32_t rr = r + dy, cc = c + dx;
        if (rr < 0 || rr >= h || cc < 0 || cc >= w) continue;
        size_t j = (size_t)rr * w + cc;
        if (weak[j] && !out[j]) {
          out[j] = 255;
          stack[top++] = (int32_t)j;
        }
      }
  }
  if (p.thin) {
    thin_lines(out, w, h, weak);
    for (size_t i = 0; i < n; i++) out[i] = out[i] ? 255 : 0;
  }
  if (p.min_length > 1) drop_short(out, w, h, p.min_length, weak, stack);
done:
  free(x), free(b), free(tmp), free(gx), free(gy), free(bm), free(bgx), free(bgy), free(weak), free(stack);
  return rc;
}

/* Pixels within Chebyshev distance r of the mask (a square maximum filter, done as rows then columns). */
static void dilate(const uint8_t *mask, int32_t w, int32_t h, int32_t r, uint8_t *tmp, uint8_t *out) {
  for (int32_t y = 0; y < h; y++)
    for (int32_t x = 0; x < w; x++) {
      uint8_t v = 0;
      for (int32_t k = x - r < 0 ? 0 : x - r; k <= x + r && k < w && !v; k++) v = mask[(size_t)y * w + k];
      tmp[(size_t)y * w + x] = v;
    }
  for (int32_t y = 0; y < h; y++)
    for (int32_t x = 0; x < w; x++) {
      uint8_t v = 0;
      for (int32_t k = y - r < 0 ? 0 : y - r; k <= y + r && k < h && !v; k++) v = tmp[(size_t)k * w + x];
      out[(size_t)y * w + x] = v;
    }
}

double sg_edges_f1(const uint8_t *pred, const uint8_t *ref, int32_t w, int32_t h, int32_t tol) {
  if (!pred || !ref || w < 1 || h < 1 || (int64_t)w * h > MAX_PIXELS || tol < 0) return 0.0;
  size_t n = (size_t)w * h;
  uint8_t *p = malloc(n), *q = malloc(n), *tmp = malloc(n), *dp = malloc(n), *dq = malloc(n);
  double f = 0.0;
  if (!p || !q || !tmp || !dp || !dq) goto done;
  int64_t np_ = 0, nq = 0, hit_p = 0, hit_q = 0;
  for (size_t i = 0; i < n; i++) {
    np_ += p[i] = pred[i] > 127;
    nq += q[i] = ref[i] > 127;
  }
  if (!np_ || !nq) goto done;
  dilate(q, w, h, tol, tmp, dq);
  dilate(p, w, h, tol, tmp, dp);
  for (size_t i = 0; i < n; i++) {
    hit_p += p[i] && dq[i];
    hit_q += q[i] && dp[i];
  }
  double prec = (double)hit_p / (double)np_, rec = (double)hit_q / (double)nq;
  f = prec + rec == 0 ? 0.0 : 2 * prec * rec / (prec + rec);
done:
  free(p), free(q), free(tmp), free(dp), free(dq);
  return f;
}
