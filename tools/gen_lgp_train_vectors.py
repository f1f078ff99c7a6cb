#!/usr/bin/python3
"""Prints reference training figures from the Python LGP trainer (tools/train_lgp.py) for the C trainer's test.

Usage: /usr/bin/python3 tools/gen_lgp_train_vectors.py MODEL_DIR PAIRS_DIR [--keep-pairs] > REFERENCE.json
Writes PAIRS_DIR (tests/core/data/lgp_pairs): 8 procedural pairs as NAME.png + NAME.txt, two with NAME.edges.png
(with --keep-pairs it reads the pairs already there), then trains on them exactly as train_lgp.py's main() does
(seed, LGP, Adam, one generator for the batches) for a few steps on one thread, and prints each step's loss and
the held-out loss (held_out() on the same pairs, unrounded). The test runs it with --keep-pairs on the machine that
runs the test (tests/core/meson.build), since other CPUs pick other kernels.
"""
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import json
import sys

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lgp as lgpmod  # noqa: E402
import sample as ref  # noqa: E402
import shapes  # noqa: E402
import train_lgp  # noqa: E402

PARAMS = {"steps": 6, "batch": 4, "lr": 3e-4, "seed": 2, "time_dim": 32}


def write_pairs(out: str, size: int) -> None:
    os.makedirs(out, exist_ok=True)
    for i in range(8):
        img, edges, cap, _ = shapes.sample(7_000_000 + i, size)
        Image.fromarray(img).save(os.path.join(out, "p%d.png" % i))
        with open(os.path.join(out, "p%d.txt" % i), "w", encoding="utf-8") as f:
            f.write(cap + "\n")
        if i in (2, 5):
            Image.fromarray(edges).save(os.path.join(out, "p%d.edges.png" % i))


def main() -> int:
    torch.set_num_threads(1)
    model_dir, out = sys.argv[1], sys.argv[2]
    keep = sys.argv[3:] == ["--keep-pairs"]
    torch.manual_seed(PARAMS["seed"])
    model = ref.Model(model_dir)
    m = model.manifest
    if not keep:
        write_pairs(out, model.size)
    data = train_lgp.Prepared(model, *train_lgp.load_dir(out, model.size))
    net = lgpmod.LGP(m["tap_channels"], m["latent_size"], PARAMS["time_dim"], out_channels=m["latent_channels"])
    opt = torch.optim.Adam(net.parameters(), PARAMS["lr"])
    g = torch.Generator().manual_seed(PARAMS["seed"] * 7919)
    n_train, b = m["schedule"]["num_train_timesteps"], PARAMS["batch"]
    losses = []
    net.train()
    for _ in range(PARAMS["steps"]):
        idx = torch.randint(0, len(data), (b,), generator=g)
        t = torch.randint(0, n_train, (b,), generator=g)
        noise = torch.randn((b,) + tuple(data.z0.shape[1:]), generator=g)
        loss = train_lgp.lgp_loss(model, net, data, idx, t, noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    net.eval()
    gen = torch.Generator().manual_seed(123)
    held = {}
    with torch.no_grad():
        for tt in train_lgp.EVAL_T:
            tot = 0.0
            for i in range(0, len(data), 64):
                idx = torch.arange(i, min(i + 64, len(data)))
                noise = torch.randn((len(idx),) + tuple(data.z0.shape[1:]), generator=gen)
                tot += train_lgp.lgp_loss(model, net, data, idx, torch.full((len(idx),), tt), noise).item() * len(idx)
            held[str(tt)] = tot / len(data)
    json.dump({"generator": "tools/gen_lgp_train_vectors.py", "torch": torch.__version__, "params": PARAMS,
               "pairs": len(data), "losses": losses, "held_out_loss": held}, sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
