"""Procedural data set of coloured shapes with captions, exact edge maps and out-of-domain hand-drawn-style sketches (deterministic by seed)."""
import math
import os
import re

import numpy as np

SHAPES = ["circle", "square", "triangle", "star", "heart", "cross"]
COLOURS = {
    "red": (215, 35, 35), "orange": (245, 135, 20), "yellow": (240, 215, 40), "green": (40, 160, 60),
    "blue": (35, 80, 215), "purple": (135, 55, 185), "white": (240, 240, 240), "black": (25, 25, 25),
}
COLOUR_NAMES = list(COLOURS)
TEXTURES = ["plain", "striped", "checkered", "gradient"]
SKETCH_STYLES = ["wobbly", "thick", "broken", "sketchy"]
EDGE_WIDTH = 1.5  # pixels, at 64x64


def polygon(shape: str) -> np.ndarray:
    """Outline of a shape, centred at 0 with circumradius about 1, as an (N, 2) array of vertices (y down)."""
    if shape == "circle":
        a = np.linspace(0, 2 * math.pi, 64, endpoint=False)
        return np.stack([np.cos(a), np.sin(a)], 1) * 0.9
    if shape == "square":
        a = math.pi / 4 + np.arange(4) * math.pi / 2
        return np.stack([np.cos(a), np.sin(a)], 1)
    if shape == "triangle":
        a = -math.pi / 2 + np.arange(3) * 2 * math.pi / 3
        return np.stack([np.cos(a), np.sin(a)], 1) + np.array([0.0, 0.15])
    if shape == "star":
        a = -math.pi / 2 + np.arange(10) * math.pi / 5
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        return np.stack([r * np.cos(a), r * np.sin(a)], 1)
    if shape == "heart":
        t = np.linspace(0, 2 * math.pi, 64, endpoint=False)
        x = 16 * np.sin(t) ** 3
        y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        p = np.stack([x, y + 2.5], 1) / 16.5
        return p
    if shape == "cross":
        w = 0.33
        p = [(-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1), (-w, 1), (-w, w), (-1, w), (-1, -w), (-w, -w)]
        return np.array(p, dtype=np.float64) * 0.85
    raise ValueError("unknown shape %r" % shape)


def _seg_dist(px: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance from points px (P, 2) to segments a->b (S, 2) each: returns (P, S)."""
    ab = b - a
    ap = px[:, None, :] - a[None]
    tt = np.clip((ap * ab[None]).sum(-1) / np.maximum((ab * ab).sum(-1), 1e-12)[None], 0, 1)
    d = ap - tt[..., None] * ab[None]
    return np.sqrt((d * d).sum(-1))


def _inside(px: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """Even-odd point-in-polygon test for points (P, 2)."""
    x, y = px[:, 0:1], px[:, 1:2]
    a, b = poly, np.roll(poly, -1, 0)
    cond = (a[None, :, 1] > y) != (b[None, :, 1] > y)
    xint = a[None, :, 0] + (y - a[None, :, 1]) * (b[None, :, 0] - a[None, :, 0]) / (b[None, :, 1] - a[None, :, 1] + 1e-12)
    return (cond & (x < xint)).sum(1) % 2 == 1


def _grid(size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    return np.stack([xx.ravel(), yy.ravel()], 1)


def signed_distance(poly: np.ndarray, size: int, reach: float = 4.0) -> np.ndarray:
    """Signed distance in pixels (negative inside) of every pixel centre to the closed polygon; exact within
    `reach` pixels of the outline's bounding box, +reach beyond it."""
    out = np.full((size, size), reach)
    x0, y0 = np.maximum(np.floor(poly.min(0) - reach).astype(int), 0)
    x1, y1 = np.minimum(np.ceil(poly.max(0) + reach).astype(int), size)
    if x1 <= x0 or y1 <= y0:
        return out
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float64) + 0.5
    px = np.stack([xx.ravel(), yy.ravel()], 1)
    d = _seg_dist(px, poly, np.roll(poly, -1, 0)).min(1)
    out[y0:y1, x0:x1] = np.where(_inside(px, poly), -d, d).reshape(y1 - y0, x1 - x0)
    return out


def _background(rng: np.random.Generator, colour: np.ndarray, texture: str, size: int) -> np.ndarray:
    """Background image (size, size, 3) float in [0, 255]."""
    tint = colour + (np.array([255.0, 255, 255]) - colour) * 0.45 if colour.mean() < 150 else colour * 0.6
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    ang = rng.uniform(0, math.pi)
    u = xx * math.cos(ang) + yy * math.sin(ang)
    if texture == "plain":
        m = np.zeros((size, size))
    elif texture == "striped":
        period = rng.uniform(8, 14)
        m = ((u + rng.uniform(0, period)) % period < period / 2).astype(np.float64)
    elif texture == "checkered":
        cell = rng.uniform(7, 12)
        v = -xx * math.sin(ang) + yy * math.cos(ang)
        m = ((np.floor(u / cell) + np.floor(v / cell)) % 2).astype(np.float64)
    elif texture == "gradient":
        m = (u - u.min()) / (u.max() - u.min() + 1e-9)
    else:
        raise ValueError(texture)
    return colour[None, None] * (1 - m[..., None]) + tint[None, None] * m[..., None]


def sample_params(seed: int) -> dict:
    """The random choices for sample `seed`: shape, colours, texture, placement."""
    rng = np.random.default_rng([seed, 7919])
    shape = SHAPES[rng.integers(len(SHAPES))]
    fg = COLOUR_NAMES[rng.integers(len(COLOUR_NAMES))]
    bg = fg
    while bg == fg:
        bg = COLOUR_NAMES[rng.integers(len(COLOUR_NAMES))]
    return {
        "shape": shape, "fg": fg, "bg": bg, "texture": TEXTURES[rng.integers(len(TEXTURES))],
        "radius": float(rng.uniform(0.20, 0.38)), "angle": float(rng.uniform(0, 2 * math.pi)),
        "cx": float(rng.uniform(-1, 1)), "cy": float(rng.uniform(-1, 1)), "tex_seed": int(rng.integers(1 << 31)),
    }


def caption(p: dict) -> str:
    article = "an" if p["fg"][0] in "aeiou" else "a"
    return "%s %s %s on a %s %s background" % (article, p["fg"], p["shape"], p["texture"], p["bg"])


# Captions as people write them: a grammar of phrasings. A template is a pattern with slots {fg} {bg} {shape}
# {tex} (the texture word and a space, or nothing, which means plain) and {a} (an article agreeing with the next
# word). Every part list has training choices and held-out choices; a held-out template has at least one held-out
# part, and every held-out part holds a word (HELD_OUT_WORDS) that no training part has, so training never sees a
# held-out template: adherence on them measures generalisation, not memorisation.
PREFIXES = ["", "", "", "a drawing of ", "a picture of ", "an image showing ", "an image of ", "a photo of ",
            "a painting of ", "a simple drawing of ", "draw ", "make ", "a cartoon of ", "an icon of ",
            "i want ", "show me ", "generate ", "a picture showing ", "a clean drawing of "]
HELD_OUT_PREFIXES = ["an illustration of ", "a sketch of ", "here is ", "please render ", "a rendering of "]
# the foreground phrase; {f} is a filler word (or nothing)
FG_FORMS = ["{a} {f}{fg} {shape}", "{a} {f}{fg} {shape}", "{fg} {shape}", "the {f}{fg} {shape}",
            "{a} {f}{fg}-coloured {shape}", "{a} {f}{fg}-colored {shape}", "{a} {fg} coloured {shape}",
            "{a} {f}{shape} in {fg}", "one {fg} {shape}", "{a} {f}{fg} {shape} shape", "{a} {fg} {f}{shape}"]
HELD_OUT_FG_FORMS = ["a single {fg} {shape}", "{a} {shape} tinted {fg}", "{a} {fg} {shape} figure"]
# the background phrase: with the noun (usable anywhere) or the bare colour (only after "on"-like connectors)
BG_FORMS = ["{a} {tex}{bg} background", "{a} {tex}{bg} background", "{tex}{bg} background",
            "the {tex}{bg} background", "{a} {tex}{bg} backdrop", "{a} {bg}-coloured {tex}background",
            "{a} {bg}-colored {tex}background", "{a} {tex}{bg} coloured background", "{a} {tex}{bg} colored backdrop",
            "{a} {bg} {tex}background",
            "{a} background of {tex}{bg}", "{tex}{bg} backdrop"]
HELD_OUT_BG_FORMS = ["{a} {tex}{bg} backdrop colour", "{a} {tex}{bg} backing"]
BARE_BG_FORMS = ["{tex}{bg}", "{tex}{bg}", "{a} {tex}{bg} one"]
FG_FIRST = [" on ", " on ", " against ", " in front of ", ", ", " with ", " on top of ", " and ", " over ", ". "]
BARE_OK = {" on ", " against ", " in front of ", " on top of ", " over "}
HELD_OUT_FG_FIRST = [" sitting on ", " placed against ", " resting on "]
BG_FIRST = [" with ", " with ", " and ", ", ", " showing ", " behind ", " under "]
HELD_OUT_BG_FIRST = [" featuring ", " that contains "]
SUFFIXES = ["", "", "", "", ".", ".", "!", " in the middle", " in the centre", " in the center", ", simple",
            ", minimal", ", flat colours", " on it", ", nothing else"]
HELD_OUT_SUFFIXES = [" please", ", high quality", " at the very centre", ", thanks"]
FILLERS = ["nice ", "cute ", "big ", "small ", "little ", "simple ", "pretty ", "cool ", "beautiful ", "happy ",
           "tiny ", "large ", "bold ", "neat ", "shiny ", "lovely ", "funny ", "perfect ", "clean "] + ["{w} "] * 8
HELD_OUT_FILLERS = ["fancy ", "giant ", "wonderful ", "elegant ", "modest "]
HELD_OUT_WORDS = {"illustration", "sketch", "here", "render", "rendering", "single", "tinted", "figure", "backing",
                  "sitting", "placed", "resting", "featuring", "contains", "please", "high", "quality", "very",
                  "thanks", "fancy", "giant", "wonderful", "elegant", "modest", "colour"}
# texture words: a textured background is always named; a plain one mostly is not (no texture word means plain)
TEXTURE_WORDS = {"plain": ["plain ", "solid ", "flat "], "striped": ["striped "], "checkered": ["checkered "],
                 "gradient": ["gradient "]}
KEY_WORDS = set(SHAPES) | set(COLOURS) | set(TEXTURES) | {"background", "backdrop", "solid", "flat", "coloured",
                                                          "colored", "in", "on", "with", "the", "a", "an", "of"}
_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def natural_params(seed: int) -> dict:
    """sample_params(seed) with half of the backgrounds plain (the data set for natural captions: those without
    a texture word need plain backgrounds)."""
    p = sample_params(seed)
    rng = np.random.default_rng([seed, 15485863])
    if rng.random() < 0.5:
        p["texture"] = "plain"
    return p


def _pick(rng: np.random.Generator, train: list, held: list, use_held: bool) -> str:
    return held[rng.integers(len(held))] if use_held else train[rng.integers(len(train))]


def natural_template(rng: np.random.Generator, held_out: bool = False) -> str:
    """A random caption template (a pattern with the slots above): from the training parts only, or (held_out)
    with at least one held-out part."""
    parts = ["prefix", "fg", "conn", "bg", "suffix", "filler"]
    forced = parts[rng.integers(len(parts))] if held_out else None
    held = {k: held_out and (k == forced or rng.random() < 0.15) for k in parts}
    bg_first = rng.random() < 0.3
    fg = _pick(rng, FG_FORMS, HELD_OUT_FG_FORMS, held["fg"])
    if held["filler"] and "{f}" not in fg:
        fg = "{a} {f}{fg} {shape}"
    if bg_first:
        conn = _pick(rng, BG_FIRST, HELD_OUT_BG_FIRST, held["conn"])
        bg = _pick(rng, BG_FORMS, HELD_OUT_BG_FORMS, held["bg"])
        body = bg + conn + fg
    else:
        conn = _pick(rng, FG_FIRST, HELD_OUT_FG_FIRST, held["conn"])
        bare = (conn in BARE_OK or conn in HELD_OUT_FG_FIRST) and not held["bg"] and rng.random() < 0.25
        bg = BARE_BG_FORMS[rng.integers(len(BARE_BG_FORMS))] if bare else _pick(rng, BG_FORMS, HELD_OUT_BG_FORMS, held["bg"])
        body = fg + conn + bg
    prefix = _pick(rng, PREFIXES, HELD_OUT_PREFIXES, held["prefix"])
    suffix = _pick(rng, SUFFIXES, HELD_OUT_SUFFIXES, held["suffix"])
    if "{f}" in body:
        use_filler = held["filler"] or rng.random() < 0.3
        f = _pick(rng, FILLERS, HELD_OUT_FILLERS, held["filler"]) if use_filler else ""
        body = body.replace("{f}", f, 1).replace("{f}", "")
    if not held_out and rng.random() < 0.08:  # a made-up word before or after it all
        return ("{w} " + prefix + body + suffix) if rng.random() < 0.5 else (prefix + body + suffix + " {w}")
    return prefix + body + suffix


def _pseudo_word(rng: np.random.Generator) -> str:
    """A made-up word (a filler no vocabulary has), never a word the captions give a meaning to."""
    while True:
        w = "".join(_LETTERS[i] for i in rng.integers(0, 26, int(rng.integers(3, 9))))
        if w not in KEY_WORDS and w not in HELD_OUT_WORDS:
            return w


def fill_template(template: str, p: dict, rng: np.random.Generator) -> str:
    """The caption of p in the template: colour, shape and texture words, articles that agree, a random case."""
    tex = p["texture"]
    words = TEXTURE_WORDS[tex]
    if tex == "plain":
        t = words[rng.integers(len(words))] if rng.random() < 0.3 else ""
    else:
        t = words[rng.integers(len(words))]
    s = template.replace("{fg}", p["fg"]).replace("{bg}", p["bg"]).replace("{shape}", p["shape"]).replace("{tex}", t)
    while "{w}" in s:
        s = s.replace("{w}", _pseudo_word(rng), 1)
    s = re.sub(r"\{a\} (\w)", lambda m: ("an " if m.group(1) in "aeiou" else "a ") + m.group(1), s)
    s = re.sub(r"\s+", " ", s).strip()
    r = rng.random()
    if r < 0.2:
        s = s[0].upper() + s[1:]
    elif r < 0.3:
        s = s.title()
    elif r < 0.35:
        s = s.upper()
    return s


def natural_caption(p: dict, rng: np.random.Generator, held_out: bool = False) -> str:
    """A caption of p as people write it, from a random training template (or held-out template)."""
    return fill_template(natural_template(rng, held_out), p, rng)


def placed_polygon(p: dict, size: int) -> np.ndarray:
    """The shape's outline in pixel coordinates at the given image size."""
    r = p["radius"] * size
    c, s = math.cos(p["angle"]), math.sin(p["angle"])
    pts = polygon(p["shape"]) @ np.array([[c, s], [-s, c]]) * r
    margin = r + 0.06 * size
    centre = np.array([size / 2 + p["cx"] * (size / 2 - margin), size / 2 + p["cy"] * (size / 2 - margin)])
    return pts + centre


def render(p: dict, size: int = 64):
    """Returns (image uint8 HxWx3, edge map uint8 HxW with edges 255 on 0) for the parameters p."""
    poly = placed_polygon(p, size)
    sd = signed_distance(poly, size)
    rng = np.random.default_rng(p["tex_seed"])
    img = _background(rng, np.array(COLOURS[p["bg"]], dtype=np.float64), p["texture"], size)
    cover = np.clip(0.5 - sd, 0, 1)[..., None]
    img = img * (1 - cover) + np.array(COLOURS[p["fg"]], dtype=np.float64)[None, None] * cover
    edges = (np.abs(sd) < EDGE_WIDTH / 2 * size / 64).astype(np.uint8) * 255
    return np.clip(img + 0.5, 0, 255).astype(np.uint8), edges


def sample(seed: int, size: int = 64):
    """Sample `seed` of the data set: (image, edge map, caption, params)."""
    p = sample_params(seed)
    img, edges = render(p, size)
    return img, edges, caption(p), p


def _polyline_dist(px: np.ndarray, pts: np.ndarray, keep: np.ndarray) -> np.ndarray:
    a, b = pts[:-1][keep], pts[1:][keep]
    if len(a) == 0:
        return np.full(len(px), np.inf)
    return _seg_dist(px, a, b).min(1)


def sketch(p: dict, style: str, seed: int, size: int = 64) -> np.ndarray:
    """A hand-drawn-style sketch of the shape in p (strokes 255 on 0), in a style the training edges never have."""
    rng = np.random.default_rng([seed, 104729])
    poly = placed_polygon(p, size)
    closed = np.concatenate([poly, poly[:1]], 0)
    seg = np.sqrt(((closed[1:] - closed[:-1]) ** 2).sum(1))
    s = np.concatenate([[0], np.cumsum(seg)])
    n = max(int(s[-1] / 0.7), 16)
    t = np.linspace(0, s[-1], n)
    pts = np.stack([np.interp(t, s, closed[:, 0]), np.interp(t, s, closed[:, 1])], 1)
    px = _grid(size)
    scale = size / 64

    def wobble(amp: float) -> np.ndarray:
        k = np.arange(1, 6)
        ph = rng.uniform(0, 2 * math.pi, (2, 5))
        am = rng.normal(0, amp, (2, 5)) / k
        u = t / s[-1] * 2 * math.pi
        off = np.stack([(am[i][None] * np.sin(k[None] * u[:, None] * (1 + 0.15 * i) + ph[i][None])).sum(1) for i in range(2)], 1)
        return pts + off * scale

    keep = np.ones(n - 1, dtype=bool)
    if style == "wobbly":
        d = _polyline_dist(px, wobble(1.6), keep)
        width = 1.4
    elif style == "thick":
        d = _polyline_dist(px, wobble(0.6), keep)
        width = rng.uniform(3.0, 4.0)
    elif style == "broken":
        gap_every = rng.uniform(9, 14) * scale
        phase = rng.uniform(0, gap_every)
        keep = ((t[:-1] + phase) % gap_every) > rng.uniform(3, 4.5) * scale
        d = _polyline_dist(px, wobble(0.8), keep)
        width = 1.6
    elif style == "sketchy":
        d = np.minimum(_polyline_dist(px, wobble(1.2), keep), _polyline_dist(px, wobble(1.2), keep))
        width = 1.0
    else:
        raise ValueError("unknown sketch style %r" % style)
    return ((d < width * scale / 2).reshape(size, size)).astype(np.uint8) * 255


def guidance_cases(size: int = 64):
    """The fixed guided-against-unguided cases of the edge tests (tests/server/test_cli.py on the C engine,
    tests/tools/test_bundled_model.py on the reference): each shape twice (12), a prompt of one set of parameters
    and a sketch (SKETCH_STYLES in turn, strokes 255 on 0) of the same shape placed by another set, so that the
    sketch sits away from where the prompt alone would put it. Returns a list of (prompt, sketch) pairs."""
    out = []
    for i, shape in enumerate(["square", "triangle", "circle", "cross", "heart", "star"] * 2):
        prompt = caption(dict(sample_params(777 + i), shape=shape))
        out.append((prompt, sketch(dict(sample_params(888 + i), shape=shape), SKETCH_STYLES[i % 4], i, size)))
    return out


def write_pairs(folder: str, first: int, n: int, size: int = 64) -> None:
    """Writes n samples (seeds first, first + 1, ...) as an LGP training directory: NAME.png (image), NAME.txt
    (caption), NAME.edges.png (exact edge map), the layout that train_lgp.py --data and `sketchguide train-lgp` read."""
    from PIL import Image
    os.makedirs(folder, exist_ok=True)
    for i in range(n):
        img, edges, cap, _ = sample(first + i, size)
        stem = os.path.join(folder, "%08d" % (first + i))
        Image.fromarray(img).save(stem + ".png")
        Image.fromarray(edges).save(stem + ".edges.png")
        with open(stem + ".txt", "w", encoding="utf-8") as f:
            f.write(cap + "\n")


if __name__ == "__main__":
    import argparse
    ap = argparse.ArgumentParser(description="Writes procedural shapes as (image, caption, edge map) files.")
    ap.add_argument("--out", required=True)
    ap.add_argument("--first", type=int, default=5_000_000, help="first seed (train_lgp.py's training set: 5000000, "
                    "its held-out set: 6000000)")
    ap.add_argument("-n", type=int, default=4000)
    ap.add_argument("--size", type=int, default=64)
    a = ap.parse_args()
    write_pairs(a.out, a.first, a.n, a.size)
