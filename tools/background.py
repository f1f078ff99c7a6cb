#!/usr/bin/python3
"""Background cleanliness of sketch-guided images: colour variance outside the shape, guided against unguided, per
sampler and beta (issue 12 item 4; docs/guidance.md).

Usage: /usr/bin/python3 tools/background.py MODEL_DIR [--cases 12] [--samplers ddim,ddpm,euler_a]
           [--betas 0,1.6,3] [--steps 50] [--stop 0.5] [--json OUT] [--figure OUT.png]
Each case is a prompt with a plain background ("a red star on a plain blue background") and an exact edge map of
its shape placed elsewhere (seeds from 8_000_000, which no model saw). The background of an image is every pixel
more than 3 px outside the sketch's shape whose colour is nearer the prompt's background colour than its
foreground colour (so an unguided image's shape, drawn wherever the model puts it, is not counted as background);
its variance is the mean over R, G and B of the variance over those pixels, in 8-bit levels squared. A plain
background has a variance near that of unguided images; coloured noise raises it by one or two orders.
"""
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import json
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sample as ref  # noqa: E402
import shapes  # noqa: E402

FIRST_SEED = 8_000_000


def cases(n: int, size: int = 64):
    """n (prompt, sketch map 0/1 float32 size x size, background mask bool size x size, fg rgb, bg rgb)."""
    out = []
    for i in range(n):
        p = dict(shapes.sample_params(FIRST_SEED + i), texture="plain")
        q = dict(shapes.sample_params(FIRST_SEED + 50_000 + i), shape=p["shape"])
        sd = shapes.signed_distance(shapes.placed_polygon(q, size), size)
        sketch = (np.abs(sd) < shapes.EDGE_WIDTH / 2 * size / 64).astype(np.float32)
        out.append((shapes.caption(p), sketch, sd > 3.0 * size / 64, np.array(shapes.COLOURS[p["fg"]], float),
                    np.array(shapes.COLOURS[p["bg"]], float)))
    return out


def variance(img: np.ndarray, mask: np.ndarray, fg: np.ndarray, bg: np.ndarray) -> float:
    """Colour variance (mean over channels, 8-bit levels squared) of img's background pixels (see the module)."""
    x = img.astype(np.float64)
    nearer_bg = ((x - bg) ** 2).sum(-1) <= ((x - fg) ** 2).sum(-1)
    sel = mask & nearer_bg
    if sel.sum() < 16:
        sel = mask
    return float(x[sel].var(0).mean())


def measure(model, cs, sampler: str, beta: float, steps: int, stop: float, cfg: float, batch: int = 12):
    """Returns (per-case variances, images) for one sampler and beta (beta 0: unguided)."""
    prompts = [c[0] for c in cs]
    target = ref.edge_target(model, np.stack([c[1] for c in cs])) if beta > 0 else None
    seeds = list(range(100, 100 + len(cs)))
    imgs = []
    for i in range(0, len(cs), batch):
        z = ref.sample(model, prompts[i:i + batch], None if target is None else target[i:i + batch], beta=beta,
                       stop=stop, steps=steps, cfg=cfg, seeds=seeds[i:i + batch], sampler=sampler)
        imgs.append(model.decode(z))
    imgs = np.concatenate(imgs)
    return [variance(im, c[2], c[3], c[4]) for im, c in zip(imgs, cs)], imgs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--cases", type=int, default=12)
    ap.add_argument("--samplers", default="ddim,ddpm,euler_a")
    ap.add_argument("--betas", default="0,1.6,3")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--stop", type=float, default=0.5)
    ap.add_argument("--cfg", type=float, default=None)
    ap.add_argument("--json")
    ap.add_argument("--figure", help="PNG: a row per sampler and beta, a column per case")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    import torch
    torch.set_num_threads(a.threads)
    t0 = time.time()
    model = ref.Model(a.model)
    cfg = a.cfg if a.cfg is not None else model.manifest.get("defaults", {}).get("cfg", 7.5)
    cs = cases(a.cases, model.size)
    res = {"model": a.model, "cases": a.cases, "steps": a.steps, "stop": a.stop, "cfg": cfg, "variance": {}}
    rows = []
    for sampler in a.samplers.split(","):
        for beta in [float(b) for b in a.betas.split(",")]:
            v, imgs = measure(model, cs, sampler, beta, a.steps, a.stop, cfg)
            key = "%s beta %g" % (sampler, beta)
            res["variance"][key] = {"mean": float(np.mean(v)), "median": float(np.median(v)),
                                    "per_case": [round(x, 1) for x in v]}
            print("%-18s background variance mean %8.1f median %8.1f" % (key, np.mean(v), np.median(v)), flush=True)
            rows.append(np.concatenate(list(imgs), 1))
    res["seconds"] = round(time.time() - t0, 1)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
            f.write("\n")
    if a.figure:
        from PIL import Image
        Image.fromarray(np.concatenate(rows, 0)).save(a.figure)
    return 0


if __name__ == "__main__":
    sys.exit(main())
