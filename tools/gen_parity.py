#!/usr/bin/python3
"""Writes reference generations from the Python sampler (tools/sample.py) for the C engine's parity test.

Usage: /usr/bin/python3 tools/gen_parity.py MODEL_DIR > tests/core/data/parity_NAME.json
Each case: the parameters, the sketch (stroke pixel indices), and the final latents and 8-bit pixels.
Regenerate whenever the model's weights change.
"""
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import json
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sample as ref  # noqa: E402
import shapes  # noqa: E402

CASES = [
    {"prompt": "a red star on a plain blue background", "negative": "", "beta": 0.0, "stop": 0.5, "steps": 50,
     "cfg": 7.5, "seed": 3, "sampler": "ddim", "eta": 0.0, "n": 1, "sketch_shape": "star"},
    {"prompt": "a green heart on a striped yellow background", "negative": "", "beta": 1.6, "stop": 0.5, "steps": 50,
     "cfg": 7.5, "seed": 5, "sampler": "ddim", "eta": 0.0, "n": 2, "sketch_shape": "heart"},
    {"prompt": "a white cross on a checkered purple background", "negative": "a blue circle", "beta": 1.0,
     "stop": 0.3, "steps": 12, "cfg": 5.0, "seed": 11, "sampler": "ddpm", "eta": 0.0, "n": 1, "sketch_shape": "cross"},
    {"prompt": "an orange triangle", "negative": "", "beta": 1.6, "stop": 0.5, "steps": 10, "cfg": 1.0, "seed": 2,
     "sampler": "ddim", "eta": 0.7, "n": 1, "sketch_shape": "triangle"},
]


def main() -> int:
    model = ref.Model(sys.argv[1])
    # one thread: guided trajectories amplify the smallest rounding difference (a 1e-6 change of the initial noise
    # grows to 0.06 in the final latents of a 25-guided-step case), so parity is defined single-threaded, and the
    # C engine computes the guidance move with torch's own ops to round exactly as this sampler does
    torch.set_num_threads(1)
    out = []
    for i, c in enumerate(CASES):
        p = dict(shapes.sample_params(31337 + i), shape=c["sketch_shape"])
        sk = shapes.sketch(p, shapes.SKETCH_STYLES[i % 4], i, model.size) > 127
        target = ref.edge_target(model, sk.astype(np.float32))
        z = ref.sample(model, c["prompt"], target, beta=c["beta"], stop=c["stop"], steps=c["steps"], cfg=c["cfg"],
                       seed=c["seed"], sampler=c["sampler"], eta=c["eta"], negative=c["negative"], n=c["n"])
        case = dict(c, sketch=np.flatnonzero(sk).tolist(), latents=[round(v, 7) for v in z.flatten().tolist()],
                    pixels=model.decode(z).flatten().tolist())
        out.append(case)
    json.dump({"model": os.path.basename(os.path.normpath(sys.argv[1])), "torch": torch.__version__, "cases": out},
              sys.stdout, separators=(",", ":"))
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
