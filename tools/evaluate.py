#!/usr/bin/python3
"""Measures a shapes model: prompt adherence (shape classifier and colour heads) unguided and sketch-guided, for
the template caption and for captions as people write them (training templates and held-out templates, each its own
group), and edge fidelity guided against unguided on in-domain edge maps and out-of-domain sketches (METHOD.md).

Usage: /usr/bin/python3 tools/evaluate.py models/shapes [--adherence 200] [--groups template,train,held_out]
           [--fidelity 50] [--steps 50] [--sampler ddim] [--cli build/server/sketchguide] [--vae-bound 600]
           [--json OUT]
With --cli the images come from the C engine's command line (every sampler it has, e.g. dpmpp_2m), else from the
Python reference sampler (ddim, ddpm). The classifier (tools/data/shape_classifier.pt) is trained on the procedural
data set when missing.
"""
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import json
import subprocess
import sys
import tempfile
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


def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Each image blurred by its own Gaussian (sigma in pixels, 0: unchanged), replicate-padded."""
    r = 4
    d = torch.arange(-r, r + 1, dtype=x.dtype)
    k = torch.exp(-d[None] ** 2 / (2 * sigma.clamp(min=1e-3)[:, None] ** 2))
    k = k / k.sum(1, keepdim=True)  # [B, 2r+1]
    b, c, h, w = x.shape
    y = F.pad(x, (r,) * 4, mode="replicate").reshape(1, b * c, h + 2 * r, w + 2 * r)
    kc = k.repeat_interleave(c, 0)
    y = F.conv2d(y, kc[:, None, None, :], groups=b * c)
    y = F.conv2d(y, kc[:, None, :, None], groups=b * c)
    return y.reshape(b, c, h, w)


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Degradations a decoder leaves, none of them from any model, so that soft and slightly off-colour decoded
    images classify like crisp ones: per image, a Gaussian blur (sigma up to 1.6 px) or a pass through a coarser
    grid (bilinear down to 20 to 48 px and back), a colour gain and offset (up to 10% per channel), then noise.
    A quarter of the images stay crisp."""
    b = x.shape[0]
    u = torch.rand(b, generator=g)
    sigma = torch.rand(b, generator=g) * 1.6 * (u < 0.45)
    x = _gaussian_blur(x, sigma)
    coarse = (u >= 0.45) & (u < 0.75)
    for i in torch.nonzero(coarse).flatten().tolist():
        n = int(torch.randint(20, 49, (1,), generator=g))
        y = F.interpolate(x[i:i + 1], size=(n, n), mode="bilinear", align_corners=False, antialias=True)
        x[i] = F.interpolate(y, size=x.shape[2:], mode="bilinear", align_corners=False)[0]
    gain = 1 + (torch.rand(b, 3, 1, 1, generator=g) * 2 - 1) * 0.1
    off = (torch.rand(b, 3, 1, 1, generator=g) * 2 - 1) * 0.1
    return x * gain + off + torch.randn(x.shape, generator=g) * 0.05


def train_classifier(path: str, steps: int = 2500, batch: int = 64, pool: int = 16_000) -> Classifier:
    """Trains the classifier on `pool` procedural images (seeds 20,000,000 on, apart from every evaluation seed),
    each batch drawn from the pool and degraded afresh (_augment), and saves it at path."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    xs, labs = zip(*[_batch(range(20_000_000 + i, 20_000_000 + min(i + 500, pool))) for i in range(0, pool, 500)])
    x_all, lab_all = torch.cat(xs), [torch.cat(col) for col in zip(*labs)]
    net = Classifier()
    opt = torch.optim.Adam(net.parameters(), 2e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=steps)
    for step in range(steps):
        idx = torch.from_numpy(rng.integers(0, pool, batch))
        outs = net(_augment(x_all[idx].clone(), g))
        loss = sum(F.cross_entropy(o, l[idx]) for o, l in zip(outs, lab_all))
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


RADIUS_BANDS = (0.20, 0.25, 0.30, 0.34, 0.38)  # shapes.sample_params draws the radius from [0.20, 0.38)


@torch.no_grad()
def vae_bound(model, net: Classifier, n: int, first_seed: int = EVAL_SEED + 500_000, batch: int = 50) -> dict:
    """The classifier's shape reading of n real held-out images and of the same images encoded and decoded by the
    model's VAE, overall, per shape and per radius band. Every generated image passes through the decoder, so the
    reconstructions' figure bounds what a guided or unguided image can score: a shape the VAE blurs into another
    (small stars into crosses) is lost before the U-Net or the guidance have a say."""
    seeds = range(first_seed, first_seed + n)
    x, lab = _batch(seeds)
    rec = np.concatenate([model.decode(model.encode_image(x[i:i + batch])) for i in range(0, n, batch)])
    real = ((x.permute(0, 2, 3, 1).numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)
    truth = lab[0].numpy()
    ok_real, ok_rec = classify(net, real)[0] == truth, classify(net, rec)[0] == truth
    radius = np.array([shapes.sample_params(s)["radius"] for s in seeds])
    out = {"images": n, "real": float(ok_real.mean()), "reconstructed": float(ok_rec.mean()), "per_shape": {},
           "per_radius": {}}
    for i, name in enumerate(shapes.SHAPES):
        k = truth == i
        out["per_shape"][name] = {"images": int(k.sum()), "real": float(ok_real[k].mean()) if k.any() else None,
                                  "reconstructed": float(ok_rec[k].mean()) if k.any() else None}
    for lo, hi in zip(RADIUS_BANDS[:-1], RADIUS_BANDS[1:]):
        k = (radius >= lo) & (radius < hi)
        out["per_radius"]["%.2f-%.2f" % (lo, hi)] = {
            "images": int(k.sum()), "reconstructed": float(ok_rec[k].mean()) if k.any() else None}
    return out


GROUPS = ("template", "train", "held_out")


def prompts_for(group: str, n: int, first_seed: int = EVAL_SEED):
    """n (prompt, params) cases of a group: `template`, the data set's caption (shapes.caption) of
    shapes.sample_params; `train` and `held_out`, a natural caption (shapes.natural_caption) from a training or
    held-out template of shapes.natural_params (half plain backgrounds, which most such captions do not name)."""
    if group not in GROUPS:
        raise ValueError("unknown prompt group %r (one of %s)" % (group, ", ".join(GROUPS)))
    out = []
    for i in range(n):
        if group == "template":
            p = shapes.sample_params(first_seed + i)
            out.append((shapes.caption(p), p))
        else:
            p = shapes.natural_params(first_seed + i)
            rng = np.random.default_rng([first_seed + i, GROUPS.index(group)])
            out.append((shapes.natural_caption(p, rng, held_out=group == "held_out"), p))
    return out


class Engine:
    """Makes images: the Python reference sampler over a loaded model, or (cli) the C engine's command line."""

    def __init__(self, model, cli=None, sampler="ddim"):
        self.model, self.cli, self.sampler = model, cli, sampler
        if cli is None and sampler not in ("ddim", "ddpm"):
            raise ValueError("the Python sampler has ddim and ddpm; use --cli for %s" % sampler)

    def generate(self, prompts, sketches, seeds, beta, stop, steps, cfg, batch=25):
        """uint8 images [N, H, W, 3]; sketches: None (unguided) or one map per prompt (strokes 1.0 on 0), each read
        as an uploaded sketch is (both engines alike)."""
        if self.cli is not None:
            return self._generate_cli(prompts, sketches, seeds, beta, stop, steps, cfg)
        # each sketch is read as the C engine reads the PNG that _generate_cli writes (an upload): quantised to 8
        # bits, thresholded, cleared of specks, filled regions outlined and wide strokes thinned (sample.sketch_map)
        targets = None if sketches is None else ref.edge_target(self.model, np.stack([
            ref.sketch_map((np.asarray(s, np.float64) * 255).round().astype(np.float32) / 255.0, self.model.size,
                           "false") for s in sketches]))
        out = []
        for i in range(0, len(prompts), batch):
            tg = None if targets is None else targets[i:i + batch]
            z = ref.sample(self.model, prompts[i:i + batch], tg, beta=beta, stop=stop, steps=steps, cfg=cfg,
                           seeds=seeds[i:i + batch], sampler=self.sampler)
            out.append(self.model.decode(z))
        return np.concatenate(out)

    def _generate_cli(self, prompts, sketches, seeds, beta, stop, steps, cfg):
        from PIL import Image
        out = []
        with tempfile.TemporaryDirectory() as tmp:
            for i, (prompt, seed) in enumerate(zip(prompts, seeds)):
                png = os.path.join(tmp, "out.png")
                cmd = [self.cli, "generate", "--model", self.model.folder, "--prompt", prompt, "--seed", str(seed),
                       "--steps", str(steps), "--cfg", str(cfg), "--sampler", self.sampler, "--output", png,
                       "--quiet", "--threads", "1"]
                if sketches is not None:
                    sk = os.path.join(tmp, "sketch.png")
                    Image.fromarray((np.asarray(sketches[i]) * 255).round().astype(np.uint8)).save(sk)
                    cmd += ["--sketch", sk, "--invert", "false", "--beta", str(beta), "--stop", str(stop)]
                subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
                out.append(np.asarray(Image.open(png).convert("RGB")))
        return np.stack(out)


def adherence(engine, net, group, n, size, beta, stop, steps, cfg, guided=True, first_seed=EVAL_SEED):
    """Prompt adherence of a group of n prompts, unguided and guided by an out-of-domain sketch of the prompt's
    shape (placed independently of the prompt): shares with the shape, the foreground, the background and both
    colours right, as the classifier reads the images, and the share with the shape right per shape asked for."""
    cases = prompts_for(group, n, first_seed)
    prompts = [c[0] for c in cases]
    params = [c[1] for c in cases]
    seeds = list(range(n))
    truth = [np.array([shapes.SHAPES.index(p["shape"]) for p in params]),
             np.array([shapes.COLOUR_NAMES.index(p["fg"]) for p in params]),
             np.array([shapes.COLOUR_NAMES.index(p["bg"]) for p in params])]

    def score(imgs):
        pr = classify(net, imgs)
        ok = pr[0] == truth[0]
        return {"shape": float(ok.mean()), "fg": float((pr[1] == truth[1]).mean()),
                "bg": float((pr[2] == truth[2]).mean()),
                "fg_and_bg": float(((pr[1] == truth[1]) & (pr[2] == truth[2])).mean()),
                "shape_by_shape": {sh: float(ok[truth[0] == k].mean()) for k, sh in enumerate(shapes.SHAPES)
                                   if (truth[0] == k).any()}}

    res = {"prompts": n, "examples": prompts[:4]}
    res["unguided"] = score(engine.generate(prompts, None, seeds, 0.0, 0.0, steps, cfg))
    print("%s unguided adherence: %s" % (group, json.dumps(res["unguided"])), flush=True)
    if guided and engine.model.lgp is not None:
        sk = [sketch_for(dict(shapes.sample_params(EVAL_SEED + 100_000 + i), shape=p["shape"]), i, True, size) / 255.0
              for i, p in enumerate(params)]
        res["guided"] = score(engine.generate(prompts, sk, seeds, beta, stop, steps, cfg))
        print("%s guided adherence: %s" % (group, json.dumps(res["guided"])), flush=True)
    return res


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


def evidence(path: str, engine, size: int, beta: float, stop: float, steps: int, cfg: float) -> dict:
    """docs/evidence.png: one hand-drawn sketch per style of tools/sketches.py (read as an upload is, through
    sample.load_sketch), each with a natural caption of the drawn shape (training and held-out templates by
    turns); rows of sketch | unguided | guided with edge F1 against the drawn shape's outline."""
    import inspect
    import io
    from PIL import Image
    import sketches
    cs = list(sketches.cases(1))
    rng = np.random.default_rng(EVAL_SEED)
    prompts, maps, raw = [], [], []
    for i, c in enumerate(cs):
        prompts.append(shapes.natural_caption(c["params"], rng, held_out=i % 2 == 1))
        tmp = os.path.join(tempfile.gettempdir(), "evidence_%d%s" % (os.getpid(), c["ext"]))
        with open(tmp, "wb") as f:
            f.write(c["data"])
        kw = {"filled": "auto"} if "filled" in inspect.signature(ref.load_sketch).parameters else {}
        maps.append(ref.load_sketch(tmp, size, "auto", **kw))
        os.unlink(tmp)
        raw.append(255 - np.asarray(Image.open(io.BytesIO(c["data"])).convert("L").resize((size, size), Image.BILINEAR)))
    seeds = [c["seed"] % 100_000 for c in cs]
    gu = engine.generate(prompts, None, seeds, 0.0, 0.0, steps, cfg)
    gg = engine.generate(prompts, maps, seeds, beta, stop, steps, cfg)
    f_u = [edges.f1(edges.detect(im), c["outline"]) for im, c in zip(gu, cs)]
    f_g = [edges.f1(edges.detect(im), c["outline"]) for im, c in zip(gg, cs)]
    labels = ["%s  [%s sketch, %s template]" % (p, c["style"], "held-out" if i % 2 else "training")
              for i, (p, c) in enumerate(zip(prompts, cs))]
    figure(path, labels, raw, gu, gg, f_u, f_g, [False] * len(cs))
    return {"cases": [{"prompt": p, "style": c["style"], "edge_f1_unguided": float(u), "edge_f1_guided": float(g)}
                      for p, c, u, g in zip(prompts, cs, f_u, f_g)]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--adherence", type=int, default=200,
                    help="samples for prompt adherence (0: none, edge fidelity alone)")
    ap.add_argument("--vae-bound", type=int, default=600,
                    help="real images to read through the VAE for the bound on shape adherence (0: skip)")
    ap.add_argument("--fidelity", type=int, default=50, help="prompt/sketch/seed cases for edge fidelity (half OOD)")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--cfg", type=float, default=None, help="default: the model's recommended cfg, else 7.5")
    ap.add_argument("--beta", type=float, default=1.6)
    ap.add_argument("--stop", type=float, default=0.5)
    ap.add_argument("--groups", default=",".join(GROUPS), help="prompt groups for adherence (comma-separated): "
                    "template (the data set's caption), train (natural captions, training templates), held_out "
                    "(natural captions, held-out templates)")
    ap.add_argument("--unguided-only", action="store_true", help="adherence without the sketch-guided half")
    ap.add_argument("--sampler", default="ddim")
    ap.add_argument("--cli", help="the sketchguide executable: generate with the C engine (any of its samplers)")
    ap.add_argument("--json", help="write the figures here")
    ap.add_argument("--figure", help="write a PNG of sketches, unguided and guided results side by side")
    ap.add_argument("--evidence", help="write docs/evidence.png here: natural prompts, one sketch per style of "
                    "tools/sketches.py")
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
    if a.vae_bound > 0:  # the bound the VAE sets on shape adherence (vae_bound)
        res["classifier_reading_vae_reconstructions"] = vae_bound(model, net, a.vae_bound)
        print("shape read through the VAE:", json.dumps(res["classifier_reading_vae_reconstructions"]), flush=True)

    engine = Engine(model, a.cli, a.sampler)
    res["sampler"] = a.sampler
    res["engine"] = "c-cli" if a.cli else "python-reference"
    res["adherence"] = {}
    for group in a.groups.split(",") if a.adherence > 0 else []:  # --adherence 0: edge fidelity alone
        res["adherence"][group] = adherence(engine, net, group, a.adherence, size, a.beta, a.stop, a.steps, cfg,
                                            guided=not a.unguided_only)
    if "template" in res["adherence"]:  # the earlier layout's figures: the template group
        res["unguided"] = res["adherence"]["template"]["unguided"]
        if "guided" in res["adherence"]["template"]:
            res["guided"] = res["adherence"]["template"]["guided"]
    if model.lgp is not None and a.fidelity > 0:
        m = a.fidelity
        fp = [shapes.sample_params(EVAL_SEED + 200_000 + i) for i in range(m)]
        fprompts = [shapes.caption(p) for p in fp]
        fsk = [sketch_for(dict(shapes.sample_params(EVAL_SEED + 300_000 + i), shape=p["shape"]), i, i % 2 == 1, size)
               for i, p in enumerate(fp)]
        fseeds = list(range(1000, 1000 + m))
        gu = engine.generate(fprompts, None, fseeds, 0.0, 0.0, a.steps, cfg)
        gg = engine.generate(fprompts, [s / 255.0 for s in fsk], fseeds, a.beta, a.stop, a.steps, cfg)
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
    if a.evidence:
        res["evidence"] = evidence(a.evidence, engine, size, a.beta, a.stop, a.steps, cfg)
    res["seconds"] = round(time.time() - t0, 1)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)
            f.write("\n")
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
