#!/usr/bin/python3
"""Writes reference edge maps and F1 scores from tools/edges.py for the C edge detector's test (core/edges.c).

Usage: /usr/bin/python3 tools/gen_edges_vectors.py > tests/core/data/edges_vectors.json
Images: procedural shapes (tools/shapes.py), random noise, a grayscale image, a non-square crop and a smooth
ramp; each with the default thresholds and some with others; then the options (Gaussian smoothing, thinning, the
minimum group length, the GENERATED preset) on shapes, noise, a crop and a bar. Pixels are hex strings (row-major,
interleaved channels); edge maps are strings of '0' and '1'. F1 cases compare detected maps with the shapes' exact edges and
with shifted copies, at tolerances 0 to 4.
"""
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import edges  # noqa: E402
import shapes  # noqa: E402


def bits(e: np.ndarray) -> str:
    return "".join("1" if v else "0" for v in (e > 127).ravel())


def case(name: str, img: np.ndarray, low: float = edges.LOW, high: float = edges.HIGH, **opts) -> dict:
    """opts: sigma, thin, min_length (absent: the default detector)."""
    img = np.ascontiguousarray(img, dtype=np.uint8)
    e = edges.detect(img, low, high, opts.get("sigma", 0.0), opts.get("thin", False), opts.get("min_length", 0))
    c = {"name": name, "w": int(img.shape[1]), "h": int(img.shape[0]),
         "channels": 1 if img.ndim == 2 else int(img.shape[2]), "low": low, "high": high,
         "pixels": img.tobytes().hex(), "edges": bits(e)}
    if opts:
        c.update(sigma=float(opts.get("sigma", 0.0)), thin=bool(opts.get("thin", False)),
                 min_length=int(opts.get("min_length", 0)))
    return c


def f1_case(name: str, pred: np.ndarray, ref: np.ndarray) -> dict:
    """F1 at tolerances 0..4 (the list f1[tol])."""
    return {"name": name, "w": int(pred.shape[1]), "h": int(pred.shape[0]), "pred": bits(pred), "ref": bits(ref),
            "f1": [edges.f1(pred, ref, tol) for tol in range(5)]}


def main() -> int:
    rng = np.random.default_rng(20240611)
    cases = []
    truth = {}
    for seed in (1, 2, 7, 42):
        img, e, cap, _ = shapes.sample(seed, 64)
        cases.append(case("shapes %d (%s)" % (seed, cap), img))
        truth[seed] = (img, e)
    big, _, cap, _ = shapes.sample(9, 96)
    cases.append(case("non-square crop of shapes 9 at 96", big[10:58, 3:83]))
    cases.append(case("random noise", rng.integers(0, 256, (64, 64, 3))))
    cases.append(case("random noise, thresholds 0.25/0.5", rng.integers(0, 256, (40, 56, 3)), 0.25, 0.5))
    gray = truth[2][0].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    cases.append(case("grayscale shapes 2", np.clip(gray + 0.5, 0, 255).astype(np.uint8)))
    yy, xx = np.mgrid[0:50, 0:64]
    cases.append(case("smooth ramp with a disc", ((xx * 3 + yy * 2) % 256 * ((xx - 30) ** 2 + (yy - 25) ** 2 > 120))
                      .astype(np.uint8)))
    cases.append(case("shapes 7, low above high", truth[7][0], 0.2, 0.1))
    g = edges.GENERATED
    for seed in (1, 42):
        cases.append(case("shapes %d, the GENERATED options" % seed, truth[seed][0], g["low"], g["high"],
                          sigma=g["sigma"], thin=g["thin"], min_length=g["min_length"]))
    cases.append(case("shapes 2, sigma 0.6", truth[2][0], sigma=0.6))
    cases.append(case("shapes 7, sigma 1.5, thinned", truth[7][0], 0.04, 0.1, sigma=1.5, thin=True))
    cases.append(case("shapes 42, thinned only", truth[42][0], thin=True))
    cases.append(case("shapes 1, groups of 12 or more", truth[1][0], min_length=12))
    cases.append(case("random noise, sigma 2, groups of 5", rng.integers(0, 256, (48, 40, 3)), 0.01, 0.03, sigma=2.0,
                      thin=True, min_length=5))
    cases.append(case("non-square crop, sigma 3.3, thinned", big[5:70, 0:90], 0.02, 0.05, sigma=3.3, thin=True,
                      min_length=3))
    cases.append(case("a 4-pixel-wide bar, thinned", np.pad(np.full((6, 30), 255, np.uint8), 9), 0.0, 0.0, thin=True))
    f1 = []
    for seed, (img, e) in truth.items():
        det = edges.detect(img)
        shifted = np.roll(e, (seed % 3 + 1, -(seed % 2) - 1), (0, 1))
        for pred, ref, what in ((det, e, "detected vs exact"), (shifted, e, "shifted exact vs exact"),
                                (det, shifted, "detected vs shifted")):
            f1.append(f1_case("shapes %d %s" % (seed, what), pred, ref))
    f1.append(f1_case("empty prediction", np.zeros((64, 64), np.uint8), truth[1][1]))
    f1.append(f1_case("random sparse maps", (rng.random((30, 45)) > 0.93).astype(np.uint8) * 255,
                      (rng.random((30, 45)) > 0.9).astype(np.uint8) * 255))
    json.dump({"generator": "tools/gen_edges_vectors.py", "generated": g, "detect": cases, "f1": f1}, sys.stdout,
              indent=1)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
