#!/usr/bin/python3
"""Benchmark (run by hand): the C engine against the Python reference sampler on the same model, sketch, prompt and
parameters, in one run: per-image time (best of N after a warm-up) and peak memory of each, 50 DDIM steps at beta 0
and at the model's beta (stop 0.5), printed as ratios, with the C engine's time broken down.

Targets (issue 3): C at most 0.8x the Python reference's time; guided at most 1.6x unguided in the same engine.

Usage: /usr/bin/python3 bench/bench_engine.py [--model models/shapes] [--build build] [--runs 5] [--steps 50]
       [--threads 2] [--rounds 2] [--device cpu]
Build first (`ninja -C build`); the engines run alternately, each in its own process, `rounds` times, and the best
of each is kept, so that a noisy neighbour hurts both alike.
"""
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import json
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))


def run(cmd):
    """Runs cmd and returns the JSON line it prints (which holds its own peak resident memory)."""
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit("%s failed:\n%s" % (" ".join(cmd), p.stderr))
    return json.loads([l for l in p.stdout.splitlines() if l.startswith("{")][-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "shapes"))
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--prompt", default="a red star on a plain blue background")
    ap.add_argument("--sketch", help="sketch file (default: a procedural star sketch)")
    ap.add_argument("--skip-python", action="store_true", help="the C engine alone (e.g. on a GPU)")
    a = ap.parse_args()
    sketch = a.sketch
    if not sketch:
        import numpy as np
        from PIL import Image
        import shapes
        with open(os.path.join(a.model, "model.json")) as f:
            size = json.load(f)["image_size"]
        p = dict(shapes.sample_params(1), shape="star")
        sketch = os.path.join(tempfile.mkdtemp(), "sketch.png")
        Image.fromarray((255 - shapes.sketch(p, "wobbly", 0, size)).astype(np.uint8)).save(sketch)
    c_cmd = [os.path.join(a.build, "bench", "bench_engine"), a.model, sketch, a.prompt, str(a.steps), str(a.runs),
             str(a.threads), a.device]
    py_cmd = [sys.executable, os.path.join(ROOT, "bench", "bench_reference.py"), a.model, "--runs", str(a.runs),
              "--steps", str(a.steps), "--threads", str(a.threads), "--sketch", sketch, "--prompt", a.prompt, "--json", "--device", a.device]
    best = {}
    for r in range(a.rounds):
        for name, cmd in (("c", c_cmd), ("python", py_cmd)):
            if name == "python" and a.skip_python:
                continue
            res = run(cmd)
            print("round %d %-6s unguided %.3f s  guided %.3f s  peak %.0f MiB" % (
                r + 1, name, res["unguided"]["best_s"], res["guided"]["best_s"], res["peak_rss_kb"] / 1024), flush=True)
            prev = best.get(name)
            if prev is None:
                best[name] = res
            else:
                for k in ("unguided", "guided"):
                    if res[k]["best_s"] < prev[k]["best_s"]:
                        prev[k] = res[k]
                prev["peak_rss_kb"] = max(prev["peak_rss_kb"], res["peak_rss_kb"])
    c = best["c"]
    print("\nmodel %s, %d DDIM steps, cfg %g, beta %g, stop %g, %d threads, device %s" % (
        a.model, a.steps, c["cfg"], c["beta"], c["stop"], a.threads, a.device))
    print("%-26s %10s %10s %10s" % ("per image (best)", "C", "Python", "C/Python"))
    for k in ("unguided", "guided"):
        pyv = best["python"][k]["best_s"] if "python" in best else float("nan")
        print("%-26s %9.3fs %9.3fs %9.2fx" % (k, c[k]["best_s"], pyv, c[k]["best_s"] / pyv))
    if "python" in best:
        print("%-26s %8.0fMiB %8.0fMiB %9.2fx" % ("peak resident memory", c["peak_rss_kb"] / 1024,
                                                  best["python"]["peak_rss_kb"] / 1024,
                                                  c["peak_rss_kb"] / best["python"]["peak_rss_kb"]))
    print("guided / unguided: C %.2fx%s" % (c["guided"]["best_s"] / c["unguided"]["best_s"],
          "" if "python" not in best else ", Python %.2fx" % (best["python"]["guided"]["best_s"] / best["python"]["unguided"]["best_s"])))
    print("\nC engine, where the time goes (seconds per image, best run):")
    print("%-16s %10s %10s" % ("", "unguided", "guided"))
    for k in c["unguided"]["breakdown_s"]:
        print("%-16s %10.4f %10.4f" % (k, c["unguided"]["breakdown_s"][k], c["guided"]["breakdown_s"][k]))
    print(json.dumps({"c": c, "python": best.get("python")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
