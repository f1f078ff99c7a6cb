#!/usr/bin/python3
"""Chooses the edge detector's options for generated images (edges.GENERATED, used by train-lgp --prompts): the
F1 (tolerance 2) of each option set's edges against the exact object outlines of procedural images that went
through a model's VAE (encoded, decoded: the softness of generated images), textured backgrounds included, so that
texture edges count against an option set and outline edges for it.

Usage: /usr/bin/python3 tools/tune_edges.py models/shapes [-n 200] [--json OUT]
"""
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import itertools
import json
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import edges  # noqa: E402
import sample as ref  # noqa: E402
import shapes  # noqa: E402

SEED = 8_000_000  # images no model saw in training
SIGMAS = [0.0, 0.7, 1.0, 1.4, 2.0]
THRESHOLDS = [(0.04, 0.08), (0.06, 0.12), (0.08, 0.16), (0.1, 0.2), (0.12, 0.24), (0.16, 0.32)]
THIN = [False, True]
MIN_LENGTHS = [0, 4, 8, 16]


def round_trip(model: ref.Model, images: np.ndarray) -> np.ndarray:
    """images (N, H, W, 3) uint8 -> the same through the VAE (encoder mean, decoder), uint8."""
    x = torch.from_numpy(images).float().permute(0, 3, 1, 2) / 127.5 - 1
    with torch.no_grad():
        return model.decode(model.encode_image(x))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("-n", type=int, default=200, help="images")
    ap.add_argument("--json", help="write every option set's F1 here")
    a = ap.parse_args()
    torch.set_num_threads(1)
    model = ref.Model(a.model)
    rows = [shapes.sample(SEED + i, model.size) for i in range(a.n)]
    raw = np.stack([r[0] for r in rows])
    truth = [r[1] for r in rows]
    decoded = round_trip(model, raw)
    results = []
    for sigma, (low, high), thin in itertools.product(SIGMAS, THRESHOLDS, THIN):
        base = [edges.detect(im, low, high, sigma, thin, 0) > 0 for im in decoded]
        for ml in MIN_LENGTHS:
            maps = base if ml < 2 else [edges.drop_short(b, ml) for b in base]
            f = [edges.f1(m.astype(np.uint8) * 255, t) for m, t in zip(maps, truth)]
            results.append({"sigma": sigma, "low": low, "high": high, "thin": thin, "min_length": ml,
                            "f1": float(np.mean(f))})
        print("sigma %.1f thresholds %.2f/%.2f thin %d: F1 %s" % (
            sigma, low, high, thin, " ".join("%.3f" % r["f1"] for r in results[-len(MIN_LENGTHS):])), flush=True)
    results.sort(key=lambda r: -r["f1"])
    default = next(r for r in results if r["sigma"] == 0 and r["low"] == edges.LOW and not r["thin"]
                   and r["min_length"] == 0)
    print("default detector: F1 %.4f" % default["f1"])
    print("best:", json.dumps(results[:10], indent=1))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"model": a.model, "images": a.n, "seed": SEED, "default": default, "results": results}, f,
                      indent=1)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
