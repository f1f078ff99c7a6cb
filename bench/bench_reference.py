#!/usr/bin/python3
"""Benchmark (run by hand): per-image time of the Python reference sampler on a model, 50 DDIM steps, unguided
and guided (beta 1.6, stop 0.5), best of several runs, with the guided/unguided ratio measured in the same run.

Usage: /usr/bin/python3 bench/bench_reference.py [models/shapes] [--runs 5] [--steps 50] [--threads 2]
       [--sketch FILE] [--prompt TEXT] [--json]   (--json: one JSON line, as bench/bench_engine.py reads)
"""
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import json
import resource
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools"))
import sample as ref  # noqa: E402
import shapes  # noqa: E402


def best_of(runs, fn):
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times), float(np.median(times))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", default="models/shapes")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--sketch", help="sketch file (default: a procedural star)")
    ap.add_argument("--prompt", default="a red star on a plain blue background")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    model = ref.Model(a.model, a.device)
    d = model.manifest["defaults"]
    p = dict(shapes.sample_params(1), shape="star")
    if a.sketch:
        target = ref.edge_target(model, ref.load_sketch(a.sketch, model.size))
    else:
        target = ref.edge_target(model, shapes.sketch(p, "wobbly", 0, model.size) / 255.0)
    prompt = a.prompt

    def run(beta, tg):
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        z = ref.sample(model, prompt, tg, beta=beta, stop=d["stop"], steps=a.steps, cfg=d["cfg"], seed=0)
        model.decode(z)  # returns host pixels, so the GPU has finished

    run(0.0, None)  # warm-up
    u = best_of(a.runs, lambda: run(0.0, None))
    g = best_of(a.runs, lambda: run(d["beta"], target))
    if a.json:
        print(json.dumps({"engine": "python", "steps": a.steps, "threads": a.threads, "cfg": d["cfg"],
                          "beta": d["beta"], "stop": d["stop"], "torch": torch.__version__,
                          "unguided": {"best_s": u[0], "median_s": u[1]}, "guided": {"best_s": g[0], "median_s": g[1]},
                          "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
        return 0
    print("model %s, %d steps, cfg %.1f, %d threads, torch %s" % (a.model, a.steps, d["cfg"], a.threads, torch.__version__))
    print("unguided: best %.3f s, median %.3f s per image" % u)
    print("guided (beta %.1f, stop %.2f): best %.3f s, median %.3f s per image" % (d["beta"], d["stop"], *g))
    print("guided / unguided: %.2fx" % (g[0] / u[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
