#!/usr/bin/python3
"""Measures a shapes model: prompt adherence (shape classifier and colour heads) unguided and sketch-guided, and
edge fidelity guided against unguided on in-domain edge maps and out-of-domain sketches (METHOD.md).

Usage: /usr/bin/python3 tools/evaluate.py models/shapes [--adherence 200] [--fidelity 50] [--json OUT]
The classifier (tools/data/shape_classifier.pt) is trained on the procedural data set when missing.
"""
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import json
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import edges  # noqa: E402
import sample as ref  # noqa: E402
import shapes  # noqa: E402

CLASSIFIER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "shape_classifier.pt")
EVAL_SEED = 9_000_000  # prompts and sketches come from seeds no model saw in training


class Classifier(nn.Module):
    """Small CNN with three heads: shape class, foreground colour, background colour (64x64 RGB in [-1, 1],
    looked at 32x32)."""

    def __init__(self):
        super().__init__()
        c = [3, 32, 48, 64]
        layers = []
        for i in range(3):
            layers += [nn.Conv2d(c[i], c[i + 1], 3, padding=1), nn.BatchNorm2d(c[i + 1]), nn.ReLU(),
                       nn.Conv2d(c[i + 1], c[i + 1], 3, padding=1), nn.BatchNorm2d(c[i + 1]), nn.ReLU(), nn.MaxPool2d(2)]
        self.body = nn.Sequential(*layers)
        self.shape = nn.Linear(c[-1], len(shapes.SHAPES))
        self.fg = nn.Linear(c[-1], len(shapes.COLOUR_NAMES))
        self.bg = nn.Linear(c[-1], len(shapes.COLOUR_NAMES))

    def forward(self, x):
        h = self.body(F.avg_pool2d(x, 2)).amax(dim=(2, 3))
        return self.shape(h), self.fg(h), self.bg(h)


def _batch(seeds):
    rows = [shapes.sample(int(s)) for s in seeds]
    x = torch.from_numpy(np.stack([r[0] for r in rows])).float().permute(0, 3, 1, 2) / 127.5 - 1
    lab = [torch.tensor([shapes.SHAPES.index(r[3]["shape"]) for r in rows]),
           torch.tensor([shapes.COLOUR_NAMES.index(r[3]["fg"]) for r in rows]),
           torch.tensor([shapes.COLOUR_NAMES.index(r[3]["bg"]) for r in rows])]
    return x, lab


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Blur and noise, so that decoded (slightly soft) images classify like crisp ones."""
    k = int(torch.randint(0, 3, (1,), generator=g)) * 2 + 1
    if k > 1:
        x = F.avg_pool2d(F.pad(x, (k // 2,) * 4, mode="replicate"), k, 1)
    return x + torch.randn(x.shape, generator=g) * 0.05


def train_classifier(path: str, steps: int = 800, batch: int = 64) -> Classifier:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    net = Classifier()
    opt = torch.optim.Adam(net.parameters(), 2e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=steps)
    rng = np.random.default_rng(0)
    for step in range(steps):
        x, lab = _batch(rng.integers(20_000_000, 30_000_000, batch))
        outs = net(_augment(x, g))
        loss = sum(F.cross_entropy(o, l) for o, l in zip(outs, lab))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 250 == 0:
            print("classifier step %d loss %.3f" % (step, loss.item()), flush=True)
    net.eval()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save(net.state_dict(), path)
    return net


def load_classifier(path: str = CLASSIFIER) -> Classifier:
    if not os.path.exists(path):
        return train_classifier(path)
    net = Classifier()
    net.load_state_dict(torch.load(path))
    return net.eval()


@torch.no_grad()
def classify(net: Classifier, images: np.ndarray):
    x = torch.from_numpy(images).float().permute(0, 3, 1, 2) / 127.5 - 1
    return [o.argmax(1).numpy() for o in net(x)]


def generate(model, prompts, targets, seeds, beta, stop, steps, cfg, batch=25):
    out = []
    for i in range(0, len(prompts), batch):
        tg = None if targets is None else targets[i:i + batch]
        z = ref.sample(model, prompts[i:i + batch], tg, beta=beta, stop=stop, steps=steps, cfg=cfg,
                       seeds=seeds[i:i + batch])
        out.append(model.decode(z))
    return np.concatenate(out)


def sketch_for(p: dict, k: int, ood: bool, size: int) -> np.ndarray:
    """An in-domain edge map (exact outline) or an out-of-domain hand-drawn sketch of p's shape."""
    if ood:
        return shapes.sketch(p, shapes.SKETCH_STYLES[k % len(shapes.SKETCH_STYLES)], k, size)
    return shapes.render(p, size)[1]


def figure(path, prompts, sketches, unguided, guided, f_u, f_g, ood, scale=3):
    """Rows: sketch | unguided | guided, each with its prompt and edge F1."""
    from PIL import Image, ImageDraw
    size = sketches[0].shape[0] * scale
    label_h, col_w = 40, size + 8
    im = Image.new("RGB", (3 * col_w + 8, len(prompts) * (size + label_h) + 24), "white")  # prompt above, F1 below
    d = ImageDraw.Draw(im)
    for j, head in enumerate(("sketch", "unguided", "guided (beta 1.6, stop 0.5)")):
        d.text((8 + j * col_w, 6), head, fill="black")
    for i, (p, s, u, g) in enumerate(zip(prompts, sketches, unguided, guided)):
        y = 24 + i * (size + label_h)
        d.text((8, y), "%s%s" % (p, "  [out-of-domain sketch]" if ood[i] else ""), fill="black")
        tiles = [np.stack([255 - s] * 3, -1), u, g]
        for j, t in enumerate(tiles):
            im.paste(Image.fromarray(t).resize((size, size), Image.NEAREST), (8 + j * col_w, y + 14))
        d.text((8 + col_w, y + 14 + size + 1), "edge F1 %.2f" % f_u[i], fill="black")
        d.text((8 + 2 * col_w, y + 14 + size + 1), "edge F1 %.2f" % f_g[i], fill="black")
    im.save(path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--adherence", type=int, default=200, help="samples for prompt adherence")
    ap.add_argument("--fidelity", type=int, default=50, help="prompt/sketch/seed cases for edge fidelity (half OOD)")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--cfg", type=float, default=None, help="default: the model's recommended cfg, else 7.5")
    ap.add_argument("--beta", type=float, default=1.6)
    ap.add_argument("--stop", type=float, default=0.5)
    ap.add_argument("--json", help="write the figures here")
    ap.add_argument("--figure", help="write a PNG of sketches, unguided and guided results side by side")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    t0 = time.time()
    model = ref.Model(a.model)
    cfg = a.cfg if a.cfg is not None else model.manifest.get("defaults", {}).get("cfg", 7.5)
    size = model.size
    net = load_classifier()
    res = {"model": a.model, "steps": a.steps, "cfg": cfg, "beta": a.beta, "stop": a.stop}

    # the classifier on real held-out images (its own accuracy bounds what it can tell about generated ones)
    x, lab = _batch(range(EVAL_SEED + 500_000, EVAL_SEED + 500_500))
    with torch.no_grad():
        pred = [o.argmax(1) for o in net(x)]
    res["classifier_accuracy_real"] = {k: float((p == l).float().mean()) for k, p, l in zip(("shape", "fg", "bg"), pred, lab)}

    n = a.adherence
    params = [shapes.sample_params(EVAL_SEED + i) for i in range(n)]
    prompts = [shapes.caption(p) for p in params]
    seeds = list(range(n))
    truth = [np.array([shapes.SHAPES.index(p["shape"]) for p in params]),
             np.array([shapes.COLOUR_NAMES.index(p["fg"]) for p in params]),
             np.array([shapes.COLOUR_NAMES.index(p["bg"]) for p in params])]
    imgs_u = generate(model, prompts, None, seeds, 0.0, 0.0, a.steps, cfg)
    pu = classify(net, imgs_u)
    res["unguided"] = {"shape": float((pu[0] == truth[0]).mean()), "fg": float((pu[1] == truth[1]).mean()),
                       "bg": float((pu[2] == truth[2]).mean()),
                       "fg_and_bg": float(((pu[1] == truth[1]) & (pu[2] == truth[2])).mean())}
    print("unguided adherence:", json.dumps(res["unguided"]), flush=True)
    if model.lgp is not None:
        # guided by an out-of-domain sketch of the prompt's shape, placed independently of the prompt's seed
        sk = []
        for i, p in enumerate(params):
            q = dict(shapes.sample_params(EVAL_SEED + 100_000 + i), shape=p["shape"])
            sk.append(sketch_for(q, i, True, size) / 255.0)
        targets = ref.edge_target(model, np.stack(sk))
        imgs_g = generate(model, prompts, targets, seeds, a.beta, a.stop, a.steps, cfg)
        pg = classify(net, imgs_g)
        res["guided"] = {"shape": float((pg[0] == truth[0]).mean()), "fg": float((pg[1] == truth[1]).mean()),
                         "bg": float((pg[2] == truth[2]).mean()),
                         "fg_and_bg": float(((pg[1] == truth[1]) & (pg[2] == truth[2])).mean())}
        print("guided adherence:", json.dumps(res["guided"]), flush=True)

        m = a.fidelity
        fp = [shapes.sample_params(EVAL_SEED + 200_000 + i) for i in range(m)]
        fprompts = [shapes.caption(p) for p in fp]
        fsk = [sketch_for(dict(shapes.sample_params(EVAL_SEED + 300_000 + i), shape=p["shape"]), i, i % 2 == 1, size)
               for i, p in enumerate(fp)]
        ft = ref.edge_target(model, np.stack(fsk) / 255.0)
        fseeds = list(range(1000, 1000 + m))
        gu = generate(model, fprompts, None, fseeds, 0.0, 0.0, a.steps, cfg)
        gg = generate(model, fprompts, ft, fseeds, a.beta, a.stop, a.steps, cfg)
        f_u = np.array([edges.f1(edges.detect(im), s) for im, s in zip(gu, fsk)])
        f_g = np.array([edges.f1(edges.detect(im), s) for im, s in zip(gg, fsk)])
        ood = np.arange(m) % 2 == 1
        res["edge_f1"] = {
            "cases": m, "tolerance_px": 2,
            "unguided": float(f_u.mean()), "guided": float(f_g.mean()),
            "unguided_in_domain": float(f_u[~ood].mean()), "guided_in_domain": float(f_g[~ood].mean()),
            "unguided_out_of_domain": float(f_u[ood].mean()), "guided_out_of_domain": float(f_g[ood].mean()),
            "guided_wins": int((f_g > f_u).sum()),
        }
        print("edge F1:", json.dumps(res["edge_f1"]), flush=True)
        if a.figure:
            figure(a.figure, fprompts[:8], fsk[:8], gu[:8], gg[:8], f_u[:8], f_g[:8], ood[:8])
    res["seconds"] = round(time.time() - t0, 1)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)
            f.write("\n")
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
