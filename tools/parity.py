#!/usr/bin/python3
"""Parity of the C engine with the Python reference sampler (tools/sample.py), computed on the machine that runs it.

Usage: /usr/bin/python3 tools/parity.py TEST_GENERATE MODEL_DIR WORK_DIR
TEST_GENERATE is tests/core/test_generate (built): this script writes the cases (parameters and sketches) into
WORK_DIR/cases.json, the C program generates each one and writes, per case, the latents after every step
(case_K.trace.f32) and the 8-bit pixels (case_K.pixels.u8), and this script checks them against the reference:

- teacher-forced, every step: the reference's step from the C engine's latents before that step matches the C
  engine's latents after it, to within STEP_TOL, guided or not. One step is not chaotic, but a guided one is not
  continuous everywhere: the gradient of the LGP's ReLUs jumps where a hidden unit's input crosses 0, and a unit
  within rounding of 0 at one pixel changes the gradient, so the push, over the whole latent (measured: a 1e-6
  change of the input moved one step by 7.5e-3 on the reference alone). A step that misses is therefore retried
  from up to NEIGHBOURS points within NEIGHBOUR_EPS of its input, and passes if the C engine's step is the
  reference's at one of them: the C engine computes the reference's step function at a point within rounding of
  its input (a wrong timestep, sign or scale misses at every point);
- free-running, unguided cases: the reference's own trajectory ends within FREE_TOL of the C engine's;
- decoding: the reference's decoder on the C engine's final latents gives the C engine's pixels to within 1 level.

Guided trajectories run free are chaotic (a 1e-6 rounding difference between two CPUs' kernels, or between two
orders of the same sums, grows to 1e-2 in the final latents of a 25-guided-step case), so their free-running
difference is printed, not checked. Stored trajectories from another CPU are never used.
"""
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import json
import subprocess
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
    {"prompt": "a blue circle on a striped green background", "negative": "", "beta": 0.0, "stop": 0.5, "steps": 20,
     "cfg": 6.0, "seed": 8, "sampler": "ddpm", "eta": 0.0, "n": 2, "sketch_shape": "circle"},
    {"prompt": "a purple star on a plain white background", "negative": "", "beta": 3.0, "stop": 0.5, "steps": 10,
     "cfg": 8.0, "seed": 4, "sampler": "euler_a", "eta": 0.0, "n": 1, "sketch_shape": "star"},
    {"prompt": "a red square on a plain green background", "negative": "", "beta": 0.0, "stop": 0.5, "steps": 12,
     "cfg": 8.0, "seed": 6, "sampler": "euler_a", "eta": 0.0, "n": 1, "sketch_shape": "square"},
]

# Measured on this project's machine (AMD EPYC, AVX-512, single-threaded), model of d88d949: the largest
# teacher-forced step error is 4.1e-6 outside euler_a (case 1, after the neighbourhood) and 8.2e-5 for euler_a (case 6,
# against 1.5e-3 scaled), the largest unguided free-running one 3.5e-5 (case 6); beta 1% too large in the C engine
# moves a step by 7e-3 or more in every guided case (cases 1, 2, 3 and 5 fail).
STEP_TOL = 1e-4
FREE_TOL = 1e-4
# The neighbourhood of a teacher-forced step's input (module docstring): 1e-6 is 8 float32 roundings at |z| = 1, the
# size of the difference between two orders of the same sums; every step that missed on the retrained model of
# d88d949 (5 of 50 in case 1) matched to 4.3e-6 at the first or second point.
NEIGHBOURS = 8
NEIGHBOUR_EPS = 1e-6


def sketch_of(i: int, c: dict, size: int) -> np.ndarray:
    """Case i's sketch: a binary map of the case's shape in one of the four sketch styles."""
    p = dict(shapes.sample_params(31337 + i), shape=c["sketch_shape"])
    return shapes.sketch(p, shapes.SKETCH_STYLES[i % 4], i, size) > 127


def run_reference(model, c: dict, sk: np.ndarray, teacher=None):
    """The reference's trajectory for case c (teacher: the latents entering each step after the first)."""
    trace = []
    target = ref.edge_target(model, sk.astype(np.float32))
    ref.sample(model, c["prompt"], target, beta=c["beta"], stop=c["stop"], steps=c["steps"], cfg=c["cfg"],
               seed=c["seed"], sampler=c["sampler"], eta=c["eta"], negative=c["negative"], n=c["n"], trace=trace,
               teacher=teacher)
    return trace


def main() -> int:
    if len(sys.argv) != 4:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    exe, model_dir, work = sys.argv[1:]
    # one thread in both, as parity is defined: multi-threaded reductions change the order of sums run to run
    torch.set_num_threads(1)
    model = ref.Model(model_dir)
    os.makedirs(work, exist_ok=True)
    sketches = [sketch_of(i, c, model.size) for i, c in enumerate(CASES)]
    with open(os.path.join(work, "cases.json"), "w") as f:
        json.dump({"cases": [dict(c, sketch=np.flatnonzero(s).tolist()) for c, s in zip(CASES, sketches)]}, f)
    r = subprocess.run([exe, model_dir, os.path.join(work, "cases.json"), work])
    if r.returncode != 0:
        print("parity: %s failed (exit %d)" % (exe, r.returncode))
        return 1
    failed = 0
    shape = [-1] + model.latent_shape
    for i, (c, sk) in enumerate(zip(CASES, sketches)):
        steps, n = c["steps"], c["n"]
        got = torch.from_numpy(np.fromfile(os.path.join(work, "case_%d.trace.f32" % i), dtype=np.float32))
        got = got.reshape([steps, n] + model.latent_shape)
        pixels = np.fromfile(os.path.join(work, "case_%d.pixels.u8" % i), dtype=np.uint8)
        # euler_a's latents are sigma-scaled (up to sigma_max, 14.6, times the noise): its tolerances scale with it
        scale = ref.t_to_sigma(model.abar, model.abar.numel() - 1) if c["sampler"] == "euler_a" else 1.0
        teacher = [got[k] for k in range(steps)]
        forced = run_reference(model, c, sk, teacher=teacher)
        # per step and image, the smallest error over the input and the points around it tried so far
        err = [[(forced[k][j] - got[k][j]).abs().max().item() for j in range(n)] for k in range(steps)]
        exact = sum(e <= STEP_TOL * scale for row in err for e in row)
        gen = torch.Generator().manual_seed(1000 + i)
        tries = 0
        while tries < NEIGHBOURS and any(e > STEP_TOL * scale for row in err for e in row):
            tries += 1
            near = run_reference(model, c, sk, teacher=[
                x + NEIGHBOUR_EPS * scale * torch.randn(x.shape, generator=gen) for x in teacher])
            err = [[min(err[k][j], (near[k][j] - got[k][j]).abs().max().item()) for j in range(n)]
                   for k in range(steps)]
        step_err = max(max(row) for row in err)
        free = run_reference(model, c, sk)[-1]
        free_err = (free - got[-1]).abs().max().item()
        want_px = model.decode(got[-1].reshape(shape)).flatten()
        px_err = int(np.abs(want_px.astype(int) - pixels.astype(int)).max()) if want_px.size == pixels.size else -1
        guided = c["beta"] != 0
        print("case %d (%s, beta %.1f, %d steps, %d images): step max |diff| %.2e (%d of %d at the input itself, "
              "%d points around it tried); free-running %.2e%s; pixels %d"
              % (i, c["sampler"], c["beta"], steps, n, step_err, exact, steps * n, tries, free_err,
                 " (guided: not checked)" if guided else "", px_err))
        problems = []
        if not step_err <= STEP_TOL * scale:
            problems.append("a step differs by %g (tolerance %g)" % (step_err, STEP_TOL * scale))
        if not guided and not free_err <= FREE_TOL * scale:
            problems.append("the unguided trajectory ends %g away (tolerance %g)" % (free_err, FREE_TOL * scale))
        if not 0 <= px_err <= 1:
            problems.append("pixels differ by %d levels" % px_err if px_err >= 0 else "pixel count %d" % pixels.size)
        for p in problems:
            print("FAIL case %d: %s" % (i, p))
        failed += bool(problems)
    print("parity: %d of %d cases failed" % (failed, len(CASES)))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
