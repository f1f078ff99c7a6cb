#!/usr/bin/python3
"""Compares Latent Guidance Predictors of one model: held-out loss by t on procedural pairs (train_lgp.py's
held_out) and guided edge F1 against sketches (tools/evaluate.py's fidelity cases and protocol: 50 DDIM steps,
the model's cfg, beta 1.6, stop 0.5, tolerance 2), with the unguided F1 of the same seeds. Used for the
prompts-only predictor of train-lgp --prompts against the data-trained one (docs/train-lgp-prompts.md).

Usage: /usr/bin/python3 tools/compare_lgp.py MODEL_DIR NAME=LGP.pt [NAME=LGP.pt ...] [--held-out DIR]
       [--fidelity 50] [--json OUT]
"""
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import json
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import edges  # noqa: E402
import sample as ref  # noqa: E402
import shapes  # noqa: E402

EVAL_SEED = 9_000_000  # tools/evaluate.py's: prompts and sketches from seeds no model saw in training


def fidelity_cases(m: int, size: int, ood_only: bool = False):
    """evaluate.py's edge-fidelity cases: prompts, sketches (case i out of domain, a hand-drawn style, when i is
    odd; else the exact outline), seeds, and which are out of domain. ood_only keeps the odd ones."""
    idx = [i for i in range(m) if not ood_only or i % 2 == 1]
    fp = [shapes.sample_params(EVAL_SEED + 200_000 + i) for i in idx]
    prompts = [shapes.caption(p) for p in fp]
    sk = []
    for i, p in zip(idx, fp):
        q = dict(shapes.sample_params(EVAL_SEED + 300_000 + i), shape=p["shape"])
        sk.append(shapes.sketch(q, shapes.SKETCH_STYLES[i % len(shapes.SKETCH_STYLES)], i, size) if i % 2 == 1
                  else shapes.render(q, size)[1])
    return prompts, sk, [1000 + i for i in idx], np.array([i % 2 == 1 for i in idx])


def generate(model, prompts, sketches, seeds, beta, stop, steps, cfg, batch=25):
    """DDIM images (uint8 [N, H, W, 3]) as evaluate.py makes them; sketches None for unguided."""
    targets = None if sketches is None else ref.edge_target(model, np.stack(sketches) / 255.0)
    out = []
    for i in range(0, len(prompts), batch):
        tg = None if targets is None else targets[i:i + batch]
        z = ref.sample(model, prompts[i:i + batch], tg, beta=beta, stop=stop, steps=steps, cfg=cfg,
                       seeds=seeds[i:i + batch])
        out.append(model.decode(z))
    return np.concatenate(out)


def mean_f1(images, sketches) -> np.ndarray:
    return np.array([edges.f1(edges.detect(im), s) for im, s in zip(images, sketches)])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("lgps", nargs="+", help="NAME=PATH of a predictor (TorchScript, as train-lgp writes)")
    ap.add_argument("--held-out", help="procedural pairs (tools/shapes.py write_pairs) for the loss by t")
    ap.add_argument("--fidelity", type=int, default=50, help="cases (odd ones out of domain), as evaluate.py")
    ap.add_argument("--ood-only", action="store_true", help="only the out-of-domain cases")
    ap.add_argument("--no-unguided", action="store_true", help="skip the unguided images (already measured)")
    ap.add_argument("--held-out-only", action="append", default=[], metavar="NAME=PATH",
                    help="a predictor of which only the held-out loss is measured (its F1 already is)")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--json")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    t0 = time.time()
    model = ref.Model(a.model)
    cfg = model.manifest.get("defaults", {}).get("cfg", 7.5)
    size = model.size
    prompts, sk, seeds, ood = fidelity_cases(a.fidelity, size, a.ood_only)
    res = {"model": a.model, "steps": a.steps, "cfg": cfg, "cases": len(prompts)}
    f_u = None
    if not a.no_unguided:
        f_u = mean_f1(generate(model, prompts, None, seeds, 0.0, 0.0, a.steps, cfg), sk)
        res["unguided"] = {"edge_f1": float(f_u.mean()), "edge_f1_out_of_domain": float(f_u[ood].mean()),
                           "edge_f1_in_domain": float(f_u[~ood].mean()) if (~ood).any() else None,
                           "per_case": [round(float(v), 4) for v in f_u]}
        print("unguided:", json.dumps(res["unguided"]), flush=True)
    held = None
    if a.held_out:
        import train_lgp
        im, ed, caps = train_lgp.load_dir(a.held_out, size)
        held = train_lgp.Prepared(model, im, ed, caps)
    for spec in a.lgps:
        name, path = spec.split("=", 1)
        model.lgp = torch.jit.load(path).eval()
        gg = generate(model, prompts, sk, seeds, 1.6, 0.5, a.steps, cfg)
        f_g = mean_f1(gg, sk)
        r = {"lgp": path, "edge_f1": float(f_g.mean()),
             "edge_f1_in_domain": float(f_g[~ood].mean()) if (~ood).any() else None,
             "edge_f1_out_of_domain": float(f_g[ood].mean()), "per_case": [round(float(v), 4) for v in f_g]}
        if f_u is not None:
            r["guided_wins"] = int((f_g > f_u).sum())
        if held is not None:
            r["held_out_loss"] = train_lgp.held_out(model, model.lgp, held)
        res[name] = r
        print(name + ":", json.dumps(r), flush=True)
    for spec in a.held_out_only:
        name, path = spec.split("=", 1)
        if held is not None:
            model.lgp = torch.jit.load(path).eval()
            res[name] = {"lgp": path, "held_out_loss": train_lgp.held_out(model, model.lgp, held)}
            print(name + ":", json.dumps(res[name]), flush=True)
    res["seconds"] = round(time.time() - t0, 1)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
