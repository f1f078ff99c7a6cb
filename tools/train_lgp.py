#!/usr/bin/python3
"""Python reference trainer of the Latent Guidance Predictor (METHOD.md, "Training the LGP"), resumable.

Usage: /usr/bin/python3 tools/train_lgp.py MODEL_DIR [--data DIR | --shapes N] [--steps 2000] [--batch 32] [--lr 3e-4]

Data: --shapes N generates N samples of the procedural shapes set (seeds from 5,000,000, disjoint from the
model's training set); --data DIR reads NAME.png|.jpg (image), NAME.txt (caption) and NAME.edges.png (edge map;
when absent, the built-in edge detector's output). Writes MODEL_DIR/lgp.pt (TorchScript, its description inside)
and the manifest's `lgp` section; a checkpoint beside it (lgp.ckpt) lets an interrupted run resume.
"""
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import glob
import json
import sys
import time

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import edges as edgedet  # noqa: E402
import export  # noqa: E402
import lgp as lgpmod  # noqa: E402
import sample as ref  # noqa: E402
import shapes  # noqa: E402

SHAPES_SEED = 5_000_000
EVAL_T = [50, 250, 500, 750, 950]


def load_dir(folder: str, size: int):
    """(images uint8 [N,H,W,3], edge maps uint8 [N,H,W], captions) from a data directory."""
    imgs, eds, caps = [], [], []
    for path in sorted(glob.glob(os.path.join(folder, "*"))):
        stem, ext = os.path.splitext(path)
        if ext.lower() not in (".png", ".jpg", ".jpeg") or stem.endswith(".edges"):
            continue
        if not os.path.exists(stem + ".txt"):
            continue
        im = np.asarray(Image.open(path).convert("RGB").resize((size, size), Image.BICUBIC))
        ep = stem + ".edges.png"
        e = np.asarray(Image.open(ep).convert("L").resize((size, size), Image.BILINEAR)) if os.path.exists(ep) else edgedet.detect(im)
        with open(stem + ".txt", encoding="utf-8") as f:
            caps.append(f.read().strip())
        imgs.append(im)
        eds.append(((e > 127) * 255).astype(np.uint8))
    if not imgs:
        raise SystemExit("train_lgp: %s holds no (image, caption) pairs" % folder)
    return np.stack(imgs), np.stack(eds), caps


def shapes_data(n: int, size: int, first: int = SHAPES_SEED):
    rows = [shapes.sample(first + i, size) for i in range(n)]
    return np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows]), [r[2] for r in rows]


class Prepared:
    """Encoded training pairs: z0 = E(image), target = E(edges), and text contexts per caption."""

    def __init__(self, model: ref.Model, images: np.ndarray, edge_maps: np.ndarray, captions):
        x = torch.from_numpy(images).float().permute(0, 3, 1, 2) / 127.5 - 1
        self.z0 = torch.cat([model.encode_image(x[i:i + 256]) for i in range(0, len(x), 256)])
        self.target = torch.cat([ref.edge_target(model, edge_maps[i:i + 256] / 255.0) for i in range(0, len(x), 256)])
        uniq = sorted(set(captions))
        ctx = torch.cat([model.encode_text(uniq[i:i + 256]) for i in range(0, len(uniq), 256)])
        where = {c: i for i, c in enumerate(uniq)}
        self.ctx = ctx
        self.cap_idx = torch.tensor([where[c] for c in captions])

    def __len__(self):
        return len(self.z0)


def lgp_loss(model: ref.Model, net, data: Prepared, idx: torch.Tensor, t: torch.Tensor, noise: torch.Tensor):
    """METHOD.md's loss: mean over latent pixels of the squared distance between P(F(z_t), t) and E(e)."""
    a = model.abar[t].float()[:, None, None, None]
    zt = a.sqrt() * data.z0[idx] + (1 - a).sqrt() * noise
    with torch.no_grad():
        taps = model.unet(zt.to(model.dtype), t, data.ctx[data.cap_idx[idx]].to(model.dtype))[1:]
    pred = net(list(taps), t)
    return (pred - data.target[idx]).pow(2).sum(dim=1).mean()


@torch.no_grad()
def held_out(model: ref.Model, net, data: Prepared, seed: int = 123) -> dict:
    """Loss of the predictor in eval mode on held-out pairs at fixed timesteps."""
    was = net.training
    net.eval()
    g = torch.Generator().manual_seed(seed)
    out = {}
    for t in EVAL_T:
        tot = 0.0
        for i in range(0, len(data), 64):
            idx = torch.arange(i, min(i + 64, len(data)))
            noise = torch.randn((len(idx),) + tuple(data.z0.shape[1:]), generator=g)
            tot += lgp_loss(model, net, data, idx, torch.full((len(idx),), t), noise).item() * len(idx)
        out[str(t)] = round(tot / len(data), 5)
    net.train(was)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="model directory")
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--data", help="data directory (NAME.png + NAME.txt [+ NAME.edges.png])")
    src.add_argument("--shapes", type=int, default=4000, help="procedural training samples (default 4000)")
    ap.add_argument("--held-out", type=int, default=256, help="procedural held-out samples for the loss report")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--time-dim", type=int, default=lgpmod.TIME_DIM)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="output file (default MODEL_DIR/lgp.pt, which also updates model.json)")
    ap.add_argument("--checkpoint", help="resumable training state (default: OUT.ckpt)")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    model = ref.Model(a.model)
    m = model.manifest
    out = a.out or os.path.join(a.model, "lgp.pt")
    ckpt = a.checkpoint or out + ".ckpt"
    t0 = time.time()
    train = Prepared(model, *(load_dir(a.data, model.size) if a.data else shapes_data(a.shapes, model.size)))
    hold = Prepared(model, *shapes_data(a.held_out, model.size, SHAPES_SEED + 1_000_000))
    print("prepared %d training and %d held-out pairs in %.0f s" % (len(train), len(hold), time.time() - t0), flush=True)
    net = lgpmod.LGP(m["tap_channels"], m["latent_size"], a.time_dim, out_channels=m["latent_channels"])
    opt = torch.optim.Adam(net.parameters(), a.lr)
    step = 0
    if os.path.exists(ckpt):
        ck = torch.load(ckpt)
        net.load_state_dict(ck["net"])
        opt.load_state_dict(ck["opt"])
        step = ck["step"]
        print("resumed at step %d" % step, flush=True)
    g = torch.Generator().manual_seed(a.seed * 7919 + step)
    n_train = m["schedule"]["num_train_timesteps"]
    net.train()
    t0, run = time.time(), 0.0
    while step < a.steps:
        idx = torch.randint(0, len(train), (a.batch,), generator=g)
        t = torch.randint(0, n_train, (a.batch,), generator=g)
        noise = torch.randn((a.batch,) + tuple(train.z0.shape[1:]), generator=g)
        loss = lgp_loss(model, net, train, idx, t, noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        run += loss.item()
        if step % 100 == 0 or step == a.steps:
            k = 100 if step % 100 == 0 else step % 100
            eta = (time.time() - t0) / k * (a.steps - step)
            print("step %d/%d loss %.4f eta %.0f s" % (step, a.steps, run / k, eta), flush=True)
            t0, run = time.time(), 0.0
        if step % 500 == 0 or step == a.steps:
            torch.save({"net": net.state_dict(), "opt": opt.state_dict(), "step": step}, ckpt + ".tmp")
            os.replace(ckpt + ".tmp", ckpt)
    losses = held_out(model, net, hold)
    print("held-out loss by t: %s" % json.dumps(losses), flush=True)
    desc = lgpmod.describe(net, m, {"trained": {
        "by": "tools/train_lgp.py", "steps": a.steps, "batch": a.batch, "lr": a.lr, "optimizer": "adam",
        "data": a.data or "shapes x %d" % a.shapes, "t": "uniform 0..%d" % (n_train - 1),
        "held_out_loss": losses}})
    lgpmod.save(net, out, desc)
    if a.out is None:
        m["lgp"] = dict(desc, file="lgp.pt")
        export.write_manifest(a.model, m)
    print("wrote %s" % out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
