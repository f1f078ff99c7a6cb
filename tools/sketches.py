#!/usr/bin/python3
"""Hand-drawn sketch set for the shapes model: each shape drawn at 256 px as people draw it, in styles no trainer saw.

Usage:
  /usr/bin/python3 tools/sketches.py write OUT_DIR [--per-style 12]   sketches as files (PNG; JPEG for "jpeg") with
                                                                      cases.json (prompt, seed, style, outline)
  /usr/bin/python3 tools/sketches.py fixtures OUT_DIR                 the test files of tests/core/test_sketch.c
  /usr/bin/python3 tools/sketches.py eval MODEL_DIR [--per-style 12] [--json OUT] [--beta 1.6] [--stop 0.5]
                                              [--backgrounds as-drawn|plain]
                                                                      edge F1 per style, guided against unguided

Styles (dark strokes on white paper, 256 x 256, anti-aliased): thin (1-2 px), thick (10-16 px marker), wobbly
(tremor and overshooting ends), broken (dashes with gaps), double (two or three offset passes), filled (a filled
silhouette), small (an off-centre small shape), jpeg (3 px strokes photographed: grey
grainy paper, uneven light, dust specks, saved as a quality 6-15 JPEG).
Each sketch is read through the reference preprocessing (sample.py load_sketch, which the C engine matches) from
its encoded file, as a client's upload would be. Edge F1 is evaluate.py's (2 px tolerance at 64 x 64) between the
generated image's edges and the drawn shape's exact outline at 64 x 64 (what the drawing means, whatever its
style; a filled silhouette's reference is its outline). Seeds start at 7_000_000: no model or LGP trained on them.
Each style also gets its ceiling: the F1 of the picture the prompt and sketch ask for (the data set's exact
rendering of the prompt's shape where the sketch is), which a striped, checkered or gradient background keeps well
under 1, as its own edges count against every image; `--backgrounds plain` asks every prompt for a plain
background instead (same sketches, shapes and colours), where the ceiling is about 1 and F1 measures the outline
alone.
"""
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import inspect
import io
import json
import math
import sys
import time

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import shapes  # noqa: E402

STYLES = ["thin", "thick", "wobbly", "broken", "double", "filled", "small", "jpeg"]
SIZE = 256
SUPER = 4  # drawn at 4x and downsampled: anti-aliased like a drawing program's brush
FIRST_SEED = 7_000_000


def _outline(p: dict, size: int, n: int = 400) -> np.ndarray:
    """The closed outline of p's shape at `size`, resampled to n points evenly spaced along it."""
    poly = shapes.placed_polygon(p, size)
    closed = np.concatenate([poly, poly[:1]], 0)
    seg = np.sqrt(((closed[1:] - closed[:-1]) ** 2).sum(1))
    s = np.concatenate([[0], np.cumsum(seg)])
    t = np.linspace(0, s[-1], n)
    return np.stack([np.interp(t, s, closed[:, 0]), np.interp(t, s, closed[:, 1])], 1)


def _wobble(pts: np.ndarray, rng: np.random.Generator, amp: float) -> np.ndarray:
    """Smooth low-frequency displacement (amp pixels at SIZE), as a hand's tremor along the path."""
    n = len(pts)
    u = np.linspace(0, 2 * math.pi, n)
    off = np.zeros_like(pts)
    for k in range(1, 7):
        for d in range(2):
            off[:, d] += rng.normal(0, amp) / k * np.sin(k * u * (1 + 0.13 * d) + rng.uniform(0, 2 * math.pi))
    return pts + off


def params_for(style: str, seed: int) -> dict:
    """The shape, colours and placement of sketch `seed` (small: a small shape near an edge or corner)."""
    p = shapes.sample_params(seed)
    if style == "small":
        rng = np.random.default_rng([seed, 31])
        p = dict(p, radius=float(rng.uniform(0.12, 0.17)), cx=float(rng.choice([-1, 1]) * rng.uniform(0.6, 1.0)),
                 cy=float(rng.choice([-1, 1]) * rng.uniform(0.6, 1.0)))
    return p


def draw(p: dict, style: str, seed: int) -> Image.Image:
    """Sketch of p's shape in `style`: an 8-bit grayscale SIZE x SIZE image, dark strokes on white paper."""
    rng = np.random.default_rng([seed, 4099, STYLES.index(style)])
    S = SIZE * SUPER
    im = Image.new("L", (S, S), 255)
    d = ImageDraw.Draw(im)
    pts = _outline(p, SIZE)

    def line(q: np.ndarray, width: float, closed: bool = True, ink: int = 0):
        q = q * SUPER
        xy = [tuple(v) for v in (np.concatenate([q, q[:1]], 0) if closed else q)]
        d.line(xy, fill=ink, width=max(1, int(round(width * SUPER))), joint="curve")
        r = width * SUPER / 2
        for x, y in (xy[0], xy[-1]):  # round caps
            d.ellipse([x - r, y - r, x + r, y + r], fill=ink)

    if style == "thin":
        line(_wobble(pts, rng, 0.8), rng.uniform(1.0, 2.0))
    elif style == "thick":
        line(_wobble(pts, rng, 1.5), rng.uniform(10.0, 16.0))
    elif style == "wobbly":
        q = _wobble(pts, rng, 6.0)
        start = int(rng.integers(len(q)))
        q = np.roll(q, -start, 0)
        over = int(len(q) * rng.uniform(0.03, 0.08))  # the pen overshoots where the stroke closes
        q = np.concatenate([q, q[:over] + rng.normal(0, 2.0, 2)], 0)
        line(q, rng.uniform(2.5, 4.0), closed=False)
    elif style == "broken":
        q = _wobble(pts, rng, 2.0)
        i = 0
        while i < len(q) - 1:
            n_on = int(rng.integers(12, 30))
            line(q[i:i + n_on + 1], 3.0, closed=False)
            i += n_on + int(rng.integers(6, 14))
    elif style == "double":
        for _ in range(int(rng.integers(2, 4))):
            q = _wobble(pts, rng, 3.5) + rng.normal(0, 2.0, 2)
            line(q, rng.uniform(1.5, 3.0))
    elif style == "filled":
        q = _wobble(pts, rng, 1.5) * SUPER
        d.polygon([tuple(v) for v in q], fill=int(rng.integers(0, 60)))
    elif style == "small":
        line(_wobble(pts, rng, 0.8), rng.uniform(2.5, 4.0))
    elif style == "jpeg":
        line(_wobble(pts, rng, 1.5), 3.0)
    else:
        raise ValueError("unknown style %r" % style)
    im = im.resize((SIZE, SIZE), Image.LANCZOS)
    if style == "jpeg":  # a phone photo of paper: grey and grainy, uneven light, dust specks; a low-quality JPEG
        yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
        light = rng.uniform(0.8, 0.95) - rng.uniform(0.0, 0.12) * (xx * math.cos(rng.uniform(0, 6.3)) + yy) / 2
        g = np.asarray(im, dtype=np.float64) * light + rng.normal(0, 10.0, (SIZE, SIZE))
        for _ in range(int(rng.integers(15, 40))):
            y, x = rng.integers(2, SIZE - 3, 2)
            r = int(rng.integers(0, 2))
            g[y - r:y + r + 1, x - r:x + r + 1] *= rng.uniform(0.15, 0.5)
        im = Image.fromarray(np.clip(g + 0.5, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.5))
    return im


def encode(im: Image.Image, style: str, seed: int) -> bytes:
    """The file a client would upload: PNG, or a low-quality JPEG for the jpeg style."""
    buf = io.BytesIO()
    if style == "jpeg":
        im.convert("RGB").save(buf, "JPEG", quality=int(np.random.default_rng([seed, 77]).integers(6, 16)))
    else:
        im.save(buf, "PNG")
    return buf.getvalue()


def cases(per_style: int, styles=STYLES, first: int = FIRST_SEED, plain: bool = False):
    """Yields per_style cases per style: dict(style, seed, params, prompt, data (file bytes), ext, outline (64 x 64
    uint8 reference edges, 255 on 0)). plain: every prompt asks for a plain background (the same shapes, colours
    and sketches), so that no background texture's own edges count against the image."""
    for si, style in enumerate(styles):
        for k in range(per_style):
            seed = first + 1000 * STYLES.index(style) + k
            p = params_for(style, seed)
            if plain:
                p = dict(p, texture="plain")
            data = encode(draw(p, style, seed), style, seed)
            yield {"style": style, "seed": seed, "params": p, "prompt": shapes.caption(p), "data": data,
                   "ext": ".jpg" if style == "jpeg" else ".png", "outline": shapes.render(p, 64)[1]}


def ceiling(case: dict, size: int = 64) -> float:
    """The edge F1 of the picture a case's prompt and sketch ask for: the data set's exact rendering (the shape where
    the sketch is, the prompt's colours and background) against the case's outline. A textured background's own
    edges count against every image, that one included."""
    import edges
    return float(edges.f1(edges.detect(shapes.render(case["params"], size)[0]), case["outline"]))


def write(out_dir: str, per_style: int) -> None:
    os.makedirs(out_dir, exist_ok=True)
    meta = []
    for c in cases(per_style):
        name = "%s_%d%s" % (c["style"], c["seed"], c["ext"])
        with open(os.path.join(out_dir, name), "wb") as f:
            f.write(c["data"])
        Image.fromarray(c["outline"]).save(os.path.join(out_dir, "%s_%d.outline.png" % (c["style"], c["seed"])))
        meta.append({"file": name, "style": c["style"], "seed": c["seed"], "prompt": c["prompt"],
                     "shape": c["params"]["shape"]})
    with open(os.path.join(out_dir, "cases.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")


def evaluate(model_dir: str, per_style: int, beta: float, stop: float, steps: int, cfg, styles, sampler="ddim",
             unguided_too: bool = True, filled: str = "auto", plain: bool = False) -> dict:
    import edges
    import sample as ref
    model = ref.Model(model_dir)
    cfg = cfg if cfg is not None else model.manifest.get("defaults", {}).get("cfg", 7.5)
    cs = list(cases(per_style, styles, plain=plain))
    maps = []
    for c in cs:
        path = "/tmp/sketches_eval_%d%s" % (os.getpid(), c["ext"])
        with open(path, "wb") as f:
            f.write(c["data"])
        kw = {"filled": filled} if "filled" in inspect.signature(ref.load_sketch).parameters else {}
        maps.append(ref.load_sketch(path, model.size, "auto", **kw))
        os.unlink(path)
    prompts = [c["prompt"] for c in cs]
    seeds = [c["seed"] % 100_000 for c in cs]
    targets = ref.edge_target(model, np.stack(maps))

    def gen(tg, b):
        out = []
        for i in range(0, len(cs), 24):
            z = ref.sample(model, prompts[i:i + 24], None if tg is None else tg[i:i + 24], beta=b, stop=stop,
                           steps=steps, cfg=cfg, seeds=seeds[i:i + 24], sampler=sampler)
            out.append(model.decode(z))
        return np.concatenate(out)

    img_g = gen(targets, beta)
    img_u = gen(None, 0.0) if unguided_too else None
    res = {"model": model_dir, "beta": beta, "stop": stop, "steps": steps, "cfg": cfg, "sampler": sampler,
           "per_style": per_style, "filled": filled, "backgrounds": "plain" if plain else "as drawn",
           "tolerance_px": 2, "styles": {}}
    f_g_all, f_u_all, f_c_all = [], [], []
    for style in styles:
        idx = [i for i, c in enumerate(cs) if c["style"] == style]
        fg = [edges.f1(edges.detect(img_g[i]), cs[i]["outline"]) for i in idx]
        fm = [edges.f1((maps[i] * 255).astype(np.uint8), cs[i]["outline"]) for i in idx]
        fc = [ceiling(cs[i], model.size) for i in idx]
        r = {"guided": float(np.mean(fg)), "map_vs_outline": float(np.mean(fm)), "ceiling": float(np.mean(fc))}
        r["of_ceiling"] = r["guided"] / max(r["ceiling"], 1e-9)
        f_g_all += fg
        f_c_all += fc
        if img_u is not None:
            fu = [edges.f1(edges.detect(img_u[i]), cs[i]["outline"]) for i in idx]
            f_u_all += fu
            r["unguided"] = float(np.mean(fu))
            r["ratio"] = r["guided"] / max(r["unguided"], 1e-9)
        res["styles"][style] = r
        print("%-8s guided %.3f%s  (map vs outline %.3f, ceiling %.3f)" % (style, r["guided"], "  unguided %.3f  x%.2f" % (
            r["unguided"], r["ratio"]) if img_u is not None else "", r["map_vs_outline"], r["ceiling"]), flush=True)
    res["guided"] = float(np.mean(f_g_all))
    res["ceiling"] = float(np.mean(f_c_all))
    res["of_ceiling"] = res["guided"] / max(res["ceiling"], 1e-9)
    if img_u is not None:
        res["unguided"] = float(np.mean(f_u_all))
        res["ratio"] = res["guided"] / max(res["unguided"], 1e-9)
    res["images"] = {"guided": img_g, "unguided": img_u, "maps": maps}
    return res


def fixtures(out_dir: str, n: int = 3) -> None:
    """Files for tests/core/test_sketch.c, per case K: filled_K.png (a filled silhouette) and outline_K.png (the
    same polygon drawn as a 3 px stroke), thin_K.png (a 1 px stroke), jpeg_K.jpg (the jpeg style), and ref_K.png
    (the shape's exact outline at 64 x 64)."""
    os.makedirs(out_dir, exist_ok=True)
    for k in range(n):
        seed = FIRST_SEED + 90_000 + k
        p = shapes.sample_params(seed)
        Image.fromarray(shapes.render(p, 64)[1]).save(os.path.join(out_dir, "ref_%d.png" % k))
        q = _outline(p, SIZE) * SUPER
        for name, fill in (("filled", True), ("outline", False)):
            im = Image.new("L", (SIZE * SUPER,) * 2, 255)
            d = ImageDraw.Draw(im)
            if fill:
                d.polygon([tuple(v) for v in q], fill=20)
            else:
                d.line([tuple(v) for v in np.concatenate([q, q[:1]], 0)], fill=0, width=3 * SUPER, joint="curve")
            im.resize((SIZE, SIZE), Image.LANCZOS).save(os.path.join(out_dir, "%s_%d.png" % (name, k)))
        im = Image.new("L", (SIZE * SUPER,) * 2, 255)
        ImageDraw.Draw(im).line([tuple(v) for v in np.concatenate([q, q[:1]], 0)], fill=0, width=SUPER, joint="curve")
        im.resize((SIZE, SIZE), Image.LANCZOS).save(os.path.join(out_dir, "thin_%d.png" % k))
        with open(os.path.join(out_dir, "jpeg_%d.jpg" % k), "wb") as f:
            f.write(encode(draw(p, "jpeg", seed), "jpeg", seed))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("write")
    w.add_argument("out")
    w.add_argument("--per-style", type=int, default=12)
    fx = sub.add_parser("fixtures")
    fx.add_argument("out")
    e = sub.add_parser("eval")
    e.add_argument("model")
    e.add_argument("--per-style", type=int, default=12)
    e.add_argument("--styles", default=",".join(STYLES))
    e.add_argument("--beta", type=float, default=1.6)
    e.add_argument("--stop", type=float, default=0.5)
    e.add_argument("--steps", type=int, default=50)
    e.add_argument("--cfg", type=float, default=None)
    e.add_argument("--sampler", default="ddim")
    e.add_argument("--filled", default="auto")
    e.add_argument("--backgrounds", choices=["as-drawn", "plain"], default="as-drawn",
                   help="plain: every prompt asks for a plain background (no texture edges in the figure)")
    e.add_argument("--json")
    e.add_argument("--figure", help="PNG: per case, the sketch map, unguided and guided images")
    e.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    if a.cmd == "write":
        write(a.out, a.per_style)
        return 0
    if a.cmd == "fixtures":
        fixtures(a.out)
        return 0
    import torch
    torch.set_num_threads(a.threads)
    t0 = time.time()
    r = evaluate(a.model, a.per_style, a.beta, a.stop, a.steps, a.cfg, a.styles.split(","), a.sampler,
                 filled=a.filled, plain=a.backgrounds == "plain")
    imgs = r.pop("images")
    r["seconds"] = round(time.time() - t0, 1)
    print(json.dumps(r, indent=1))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(r, f, indent=1)
            f.write("\n")
    if a.figure:
        rows = []
        for i, m in enumerate(imgs["maps"]):
            tiles = [np.stack([255 - (m * 255).astype(np.uint8)] * 3, -1), imgs["guided"][i]]
            if imgs["unguided"] is not None:
                tiles.insert(1, imgs["unguided"][i])
            rows.append(np.concatenate(tiles, 1))
        Image.fromarray(np.concatenate(rows, 0)).save(a.figure)
    return 0


if __name__ == "__main__":
    sys.exit(main())
