"""The built-in edge detector (Canny-style on the RGB channels) and edge-fidelity scores between edge maps."""
import math

import numpy as np

LOW, HIGH = 0.08, 0.16  # hysteresis thresholds on the gradient magnitude of [0, 1] images
# Options for images a model generated (train-lgp --prompts): outline edges, not texture edges, for a model whose
# latent pixel is 4 image pixels (the bundled model). Chosen by measurement (tools/tune_edges.py,
# docs/train-lgp-prompts.md); core/edges.h's sg_edges_generated_params(4). generated() scales them to a model.
GENERATED = {"sigma": 2.0, "low": 0.08, "high": 0.16, "thin": True, "min_length": 8}


def generated(downscale: int = 4) -> dict:
    """GENERATED for a model whose latent pixel is downscale image pixels: sigma half a latent pixel, min_length two
    latent pixels (measured at 4, the bundled model; the scaling to 8, SD 1.x, keeps those fractions)."""
    return dict(GENERATED, sigma=0.5 * downscale, min_length=2 * downscale)


def _conv_sep(x: np.ndarray, kx, ky) -> np.ndarray:
    p = np.pad(x, ((1, 1), (1, 1)), mode="edge")
    h = kx[0] * p[:, :-2] + kx[1] * p[:, 1:-1] + kx[2] * p[:, 2:]
    return ky[0] * h[:-2] + ky[1] * h[1:-1] + ky[2] * h[2:]


def gaussian_kernel(sigma: float) -> list:
    """The normalised Gaussian taps exp(-x^2 / (2 sigma^2)) for x in -r..r, r = max(1, ceil(3 sigma)) (summed left
    to right, as core/edges.c does)."""
    r = max(1, math.ceil(3.0 * sigma))
    k = []
    for i in range(2 * r + 1):
        z = (i - r) / sigma
        k.append(math.exp(-0.5 * (z * z)))
    s = 0.0
    for v in k:
        s += v
    return [v / s for v in k]


def _blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """sigma 0: the 3x3 binomial blur; else a separable Gaussian of that sigma (edge padding, taps in order)."""
    if sigma == 0:
        return _conv_sep(x, (0.25, 0.5, 0.25), (0.25, 0.5, 0.25))
    k = gaussian_kernel(sigma)
    r = len(k) // 2
    h, w = x.shape
    p = np.pad(x, ((0, 0), (r, r)), mode="edge")
    t = k[0] * p[:, 0:w]
    for j in range(1, len(k)):
        t = t + k[j] * p[:, j:j + w]
    p = np.pad(t, ((r, r), (0, 0)), mode="edge")
    out = k[0] * p[0:h]
    for j in range(1, len(k)):
        out = out + k[j] * p[j:j + h]
    return out


def thin(edges: np.ndarray) -> np.ndarray:
    """Zhang-Suen thinning of a boolean map to one-pixel-wide lines (outside the image counts as background)."""
    e = edges.astype(np.uint8)
    h, w = e.shape
    while True:
        changed = False
        for sub in (0, 1):
            p = np.pad(e, 1)
            n = [p[0:h, 1:w + 1], p[0:h, 2:w + 2], p[1:h + 1, 2:w + 2], p[2:h + 2, 2:w + 2],  # P2 P3 P4 P5
                 p[2:h + 2, 1:w + 1], p[2:h + 2, 0:w], p[1:h + 1, 0:w], p[0:h, 0:w]]            # P6 P7 P8 P9
            b = sum(v.astype(np.int32) for v in n)
            a = sum(((n[i] == 0) & (n[(i + 1) % 8] == 1)).astype(np.int32) for i in range(8))
            p2, p4, p6, p8 = n[0], n[2], n[4], n[6]
            if sub == 0:
                c = ((p2 & p4 & p6) == 0) & ((p4 & p6 & p8) == 0)
            else:
                c = ((p2 & p4 & p8) == 0) & ((p2 & p6 & p8) == 0)
            kill = (e == 1) & (b >= 2) & (b <= 6) & (a == 1) & c
            if kill.any():
                e = np.where(kill, 0, e).astype(np.uint8)
                changed = True
        if not changed:
            return e.astype(bool)


def drop_short(edges: np.ndarray, min_length: int) -> np.ndarray:
    """Removes 8-connected groups of fewer than min_length edge pixels."""
    h, w = edges.shape
    out = edges.copy()
    seen = np.zeros_like(edges)
    for r0, c0 in zip(*np.nonzero(edges)):
        if seen[r0, c0]:
            continue
        seen[r0, c0] = True
        stack, group = [(r0, c0)], []
        while stack:
            r, c = stack.pop()
            group.append((r, c))
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    rr, cc = r + dy, c + dx
                    if 0 <= rr < h and 0 <= cc < w and edges[rr, cc] and not seen[rr, cc]:
                        seen[rr, cc] = True
                        stack.append((rr, cc))
        if len(group) < min_length:
            for r, c in group:
                out[r, c] = False
    return out


def detect(image: np.ndarray, low: float = LOW, high: float = HIGH, sigma: float = 0.0, thin_lines: bool = False,
           min_length: int = 0) -> np.ndarray:
    """uint8 image (H, W[, 3]) -> edge map uint8 (H, W), 255 on edges: per-channel blur (sigma 0: 3x3 binomial,
    else Gaussian) and Sobel, the channel with the largest gradient at each pixel, non-maximum suppression,
    hysteresis; then optionally Zhang-Suen thinning and the removal of groups under min_length pixels."""
    x = image.astype(np.float64) / 255.0
    if x.ndim == 2:
        x = x[..., None]
    best_m, best_gx, best_gy = None, None, None
    for c in range(x.shape[2]):
        b = _blur(x[..., c], sigma)
        gx = _conv_sep(b, (-1, 0, 1), (0.25, 0.5, 0.25))
        gy = _conv_sep(b, (0.25, 0.5, 0.25), (-1, 0, 1))
        m = np.hypot(gx, gy)
        if best_m is None:
            best_m, best_gx, best_gy = m, gx, gy
        else:
            sel = m > best_m
            best_m = np.where(sel, m, best_m)
            best_gx = np.where(sel, gx, best_gx)
            best_gy = np.where(sel, gy, best_gy)
    m, gx, gy = best_m, best_gx, best_gy
    ang = (np.rad2deg(np.arctan2(gy, gx)) + 180.0) % 180.0
    mp = np.pad(m, 1)
    h, w = m.shape
    nb = {0: ((0, 1), (0, -1)), 45: ((1, 1), (-1, -1)), 90: ((1, 0), (-1, 0)), 135: ((1, -1), (-1, 1))}
    q = (np.round(ang / 45.0).astype(int) % 4) * 45
    keep = np.zeros_like(m, dtype=bool)
    for d, ((dy1, dx1), (dy2, dx2)) in nb.items():
        n1 = mp[1 + dy1:1 + dy1 + h, 1 + dx1:1 + dx1 + w]
        n2 = mp[1 + dy2:1 + dy2 + h, 1 + dx2:1 + dx2 + w]
        keep |= (q == d) & (m >= n1) & (m >= n2)
    strong = keep & (m >= high)
    weak = keep & (m >= low)
    edges = strong.copy()
    while True:  # grow strong edges through 8-connected weak ones
        g = np.pad(edges, 1)
        grown = np.zeros_like(edges)
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                grown |= g[1 + dy:1 + dy + h, 1 + dx:1 + dx + w]
        new = grown & weak & ~edges
        if not new.any():
            break
        edges |= new
    if thin_lines:
        edges = thin(edges)
    if min_length > 1:
        edges = drop_short(edges, min_length)
    return edges.astype(np.uint8) * 255


def detect_generated(image: np.ndarray, **over) -> np.ndarray:
    """detect() with the GENERATED options (any of them overridden by keyword)."""
    o = dict(GENERATED, **over)
    return detect(image, o["low"], o["high"], o["sigma"], o["thin"], o["min_length"])


def _dilate(mask: np.ndarray, r: int) -> np.ndarray:
    """Pixels within Chebyshev distance r of the mask."""
    h, w = mask.shape
    p = np.pad(mask, r)
    out = np.zeros_like(mask)
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            out |= p[r + dy:r + dy + h, r + dx:r + dx + w]
    return out


def f1(pred: np.ndarray, ref: np.ndarray, tol: int = 2) -> float:
    """Edge F1 with a distance tolerance: precision = predicted edge pixels within tol of a reference one,
    recall = reference pixels within tol of a predicted one. Returns 0 when either map is empty."""
    p, r = pred > 127, ref > 127
    if not p.any() or not r.any():
        return 0.0
    prec = (p & _dilate(r, tol)).sum() / p.sum()
    rec = (r & _dilate(p, tol)).sum() / r.sum()
    return 0.0 if prec + rec == 0 else float(2 * prec * rec / (prec + rec))
