#!/usr/bin/python3
"""Writes test_torchshim's random-number reference to stdout: torch.randn from seeded generators, drawn by this
machine's torch when the test runs (the reference is never stored: torch's CPU normal kernel differs by CPU
capability, e.g. the default kernel from the AVX2 one, so numbers from another machine need not match).

Usage: /usr/bin/python3 tests/shim/gen_randn.py > randn.json
Each entry: seed, shape, the first and last 8 values of a first randn, the sum of all its values, and the first 8
of a second randn from the same generator.
"""
import json
import os
import sys

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import torch  # noqa: E402

CASES = [(42, [2, 4, 16, 16]), (0, [5]), (123456789, [3, 7]), (2**40 + 3, [4, 64, 64])]


def main() -> int:
    out = []
    for seed, shape in CASES:
        g = torch.Generator().manual_seed(seed)
        a = torch.randn(shape, generator=g).flatten()
        b = torch.randn(shape, generator=g).flatten()
        out.append({"seed": seed, "shape": shape, "first": a[:8].tolist(), "last": a[-8:].tolist(),
                    "sum": float(a.double().sum()), "second_first": b[:8].tolist()})
    json.dump(out, sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
