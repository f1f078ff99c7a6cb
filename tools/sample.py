#!/usr/bin/python3
"""Python reference sampler: sketch-guided generation (METHOD.md) over an exported model directory; the oracle for the C engine.

Usage: /usr/bin/python3 tools/sample.py MODEL_DIR --prompt TEXT --sketch FILE --out OUT.png
           [--beta B] [--stop S | --stop-step N] [--steps N] [--cfg W] [--seed 0] [--sampler ddim|ddpm|euler_a]
           [--eta E] [--negative TEXT] [--n 1] [--invert auto|true|false] [--filled auto|true|false]
           [--latents OUT.pt]
Parameters not given take the model's defaults (model.json "defaults": the paper's beta 1.6, stop 0.5).
DDIM follows SD15.md; DDPM is the posterior q(z_prev | z_t, x0) between consecutive timesteps of the same
"leading" schedule (abar_prev = abar_0 after the last step), with no noise added on the last step.
"""
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import json
import math
import sys
from typing import List, Optional, Union

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import clip_tokenizer  # noqa: E402


class Model:
    """An exported model directory: manifest, TorchScript modules (frozen), tokenizer and LGP (if any)."""

    def __init__(self, folder: str, device: str = "cpu"):
        with open(os.path.join(folder, "model.json")) as f:
            self.manifest = m = json.load(f)
        self.folder = folder
        self.device = torch.device(device)

        def load(name):
            mod = torch.jit.load(os.path.join(folder, name), map_location=self.device)
            mod.eval()
            for p in mod.parameters():
                p.requires_grad_(False)
            return mod

        self.text_encoder = load(m["modules"]["text_encoder"])
        self.unet = load(m["modules"]["unet"])
        self.vae_encoder = load(m["modules"]["vae_encoder"])
        self.vae_decoder = load(m["modules"]["vae_decoder"])
        self.lgp = load(m["lgp"]["file"]) if m.get("lgp") else None
        tk = m["tokenizer"]
        self.tokenizer = clip_tokenizer.Tokenizer.from_files(os.path.join(folder, tk["merges"]), tk["merges_count"],
                                                             pad_id=tk["pad_id"], max_length=tk["max_length"])
        self.size = m["image_size"]
        self.latent_shape = [m["latent_channels"], m["latent_size"], m["latent_size"]]
        self.scaling_factor = m["scaling_factor"]
        self.dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[m["dtype"]]
        s = m["schedule"]
        betas = torch.linspace(s["beta_start"] ** 0.5, s["beta_end"] ** 0.5, s["num_train_timesteps"], dtype=torch.float64) ** 2
        self.abar = torch.cumprod(1 - betas, 0)

    @torch.no_grad()
    def encode_text(self, prompts: List[str]) -> torch.Tensor:
        ids = torch.tensor([self.tokenizer.input_ids(p) for p in prompts], device=self.device)
        return self.text_encoder(ids).float()

    @torch.no_grad()
    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        """Image batch in [-1, 1] -> scaled latent mean (E(.) of METHOD.md)."""
        return self.vae_encoder(x.to(self.device, self.dtype))[0].float() * self.scaling_factor

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> np.ndarray:
        """Scaled latents -> uint8 images [B, H, W, 3]."""
        x = self.vae_decoder((z / self.scaling_factor).to(self.dtype)).float()
        x = ((x + 1) / 2).clamp(0, 1)
        return (x.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)


FILLED_RADIUS = 3  # at a 64 x 64 map: a region holding a 7 x 7 square of strokes is filled, not a stroke
FILLED_SHARE = 0.10  # ... when at least this share of its pixels are such interior pixels
WIDE_SHARE = 0.10  # a region is a wide stroke when this share of its pixels have a 3 x 3 square of strokes around them
SPECK_DIVISOR = 40  # a mark whose bounding box is under 1/40 of the sketch's larger side is noise, not a stroke


def _components(m: np.ndarray) -> np.ndarray:
    """8-connected components of a boolean map: int32 labels 1..K in raster order of each component's first
    pixel, 0 for background."""
    h, w = m.shape
    lab = np.zeros((h, w), dtype=np.int32)
    ys, xs = np.nonzero(m)
    k = 0
    for y0, x0 in zip(ys.tolist(), xs.tolist()):
        if lab[y0, x0]:
            continue
        k += 1
        lab[y0, x0] = k
        stack = [(y0, x0)]
        while stack:
            y, x = stack.pop()
            for yy in (y - 1, y, y + 1):
                if 0 <= yy < h:
                    for xx in (x - 1, x, x + 1):
                        if 0 <= xx < w and m[yy, xx] and not lab[yy, xx]:
                            lab[yy, xx] = k
                            stack.append((yy, xx))
    return lab


def despeckle(m: np.ndarray) -> np.ndarray:
    """Drops marks (8-connected components) whose bounding box's larger side is under 1/SPECK_DIVISOR of the
    map's larger side (JPEG blocks, grain, dust); strokes and their dashes are longer."""
    lab = _components(m)
    k = int(lab.max())
    if k == 0:
        return m
    ys, xs = np.nonzero(lab)
    ids = lab[ys, xs]
    big = max(m.shape)
    keep = np.zeros(k + 1, dtype=bool)
    y_lo = np.full(k + 1, 1 << 30); y_hi = np.full(k + 1, -1); x_lo = np.full(k + 1, 1 << 30); x_hi = np.full(k + 1, -1)
    np.minimum.at(y_lo, ids, ys); np.maximum.at(y_hi, ids, ys); np.minimum.at(x_lo, ids, xs); np.maximum.at(x_hi, ids, xs)
    extent = np.maximum(y_hi - y_lo, x_hi - x_lo) + 1
    keep[1:] = extent[1:] * SPECK_DIVISOR >= big
    return keep[lab]


def box_any(m: np.ndarray, size: int) -> np.ndarray:
    """Downscales a boolean map to size x size (both sides at least size): an output pixel is a stroke when any
    pixel of its source box [floor(i * n / size), floor((i + 1) * n / size)) is, so a stroke thinner than the
    scale still draws a line."""
    h, w = m.shape
    ry = [(i * h) // size for i in range(size + 1)]
    rx = [(i * w) // size for i in range(size + 1)]
    rows = np.logical_or.reduceat(m, ry[:-1], axis=0)
    return np.logical_or.reduceat(rows, rx[:-1], axis=1)


def filled_to_outline(m: np.ndarray, filled: str = "auto"):
    """A filled region means its outline: each 8-connected region of the map that is filled (auto: at least
    FILLED_SHARE of its pixels have a (2r+1)^2 square of strokes around them, r = FILLED_RADIUS at 64 x 64,
    scaled with the map; true: every region; false: none) becomes its boundary, two pixels wide: its pixels with a
    4-neighbour outside it and the outside pixels with a 4-neighbour in it. Returns (map, number of regions
    converted)."""
    if filled == "false" or not m.any():
        return m, 0
    h, w = m.shape
    lab = _components(m)
    k = int(lab.max())
    if filled == "true":
        conv = np.ones(k + 1, dtype=bool)
    else:
        r = max(1, (FILLED_RADIUS * max(h, w) + 32) // 64)
        ii = np.zeros((h + 1, w + 1), dtype=np.int64)
        ii[1:, 1:] = m.astype(np.int64).cumsum(0).cumsum(1)
        side = 2 * r + 1
        interior = np.zeros((h, w), dtype=bool)
        if h >= side and w >= side:
            win = ii[side:, side:] - ii[:-side, side:] - ii[side:, :-side] + ii[:-side, :-side]
            interior[r:h - r, r:w - r] = win == side * side
        count = np.bincount(lab.ravel(), minlength=k + 1)
        inner = np.bincount(lab[interior], minlength=k + 1)
        conv = inner * 100 >= count * int(round(FILLED_SHARE * 100))
        conv &= inner > 0
    conv[0] = False
    region = conv[lab]
    if not region.any():
        return m, 0
    pad = np.pad(region, 1)
    nb_out = ~pad[:-2, 1:-1] | ~pad[2:, 1:-1] | ~pad[1:-1, :-2] | ~pad[1:-1, 2:]
    nb_in = pad[:-2, 1:-1] | pad[2:, 1:-1] | pad[1:-1, :-2] | pad[1:-1, 2:]
    out = (m & ~region) | (region & nb_out) | (~m & nb_in)
    return out, int(conv.sum())


def _zhang_suen(m: np.ndarray) -> np.ndarray:
    """Zhang-Suen thinning of a boolean map to one-pixel-wide 8-connected lines (both sub-iterations delete
    simultaneously, off-map neighbours are background), until nothing changes."""
    m = m.astype(np.uint8).copy()
    while True:
        changed = False
        for step in (0, 1):
            p = np.pad(m, 1)
            nb = [p[:-2, 1:-1], p[:-2, 2:], p[1:-1, 2:], p[2:, 2:], p[2:, 1:-1], p[2:, :-2], p[1:-1, :-2], p[:-2, :-2]]
            b = sum(x.astype(np.int32) for x in nb)
            a = sum(((nb[i] == 0) & (nb[(i + 1) % 8] == 1)).astype(np.int32) for i in range(8))
            p2, p4, p6, p8 = nb[0], nb[2], nb[4], nb[6]
            c = ((p2 & p4 & p6) == 0) & ((p4 & p6 & p8) == 0) if step == 0 else ((p2 & p4 & p8) == 0) & ((p2 & p6 & p8) == 0)
            rm = (m == 1) & (b >= 2) & (b <= 6) & (a == 1) & c
            if rm.any():
                m[rm] = 0
                changed = True
        if not changed:
            return m.astype(bool)


def thin_wide(m: np.ndarray) -> np.ndarray:
    """Wide strokes drawn as lines: each 8-connected region of which at least WIDE_SHARE of the pixels have a 3 x 3
    square of strokes around them (a marker line 3 or more pixels wide) is thinned to its one-pixel skeleton
    (_zhang_suen); thinner strokes are kept as drawn, as the edges the LGP learnt are 1 to 2 pixels wide."""
    if not m.any():
        return m
    lab = _components(m)
    k = int(lab.max())
    p = np.pad(m, 1)
    h, w = m.shape
    inner = m.copy()
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            inner &= p[1 + dy:1 + dy + h, 1 + dx:1 + dx + w]
    count = np.bincount(lab.ravel(), minlength=k + 1)
    wide = np.bincount(lab[inner], minlength=k + 1) * 100 >= count * int(round(WIDE_SHARE * 100))
    wide &= np.bincount(lab[inner], minlength=k + 1) > 0
    wide[0] = False
    region = wide[lab]
    if not region.any():
        return m
    return (m & ~region) | (_zhang_suen(m) & region)


def sketch_map(g: np.ndarray, size: int, invert: str = "auto", filled: str = "auto") -> np.ndarray:
    """Grayscale sketch (float32 in [0, 1]) -> binary map (size x size, strokes 1 on 0), as sg_sketch_map:
    inverted when strokes are dark on light (auto: mean brightness above 0.5); a sketch at least size on both
    sides (and not already size x size) is thresholded at 0.5 at its own resolution, cleared of specks (despeckle)
    and downscaled keeping every stroke (box_any); any other is resized (bilinear) then thresholded at 0.5 and
    cleared of specks; filled regions then become their outlines (filled_to_outline) and wide strokes their
    skeletons (thin_wide), unless filled is "false" (the strokes as drawn)."""
    if invert == "true" or (invert == "auto" and g.mean() > 0.5):
        g = 1.0 - g
    h, w = g.shape
    if h >= size and w >= size and (h, w) != (size, size):
        m = box_any(despeckle(g > 0.5), size)
    else:
        if g.shape != (size, size):
            t = torch.from_numpy(np.ascontiguousarray(g))[None, None]
            g = torch.nn.functional.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)[0, 0].numpy()
        m = despeckle(g > 0.5)
    if filled == "false":  # strokes as drawn: neither outlined nor thinned
        return m.astype(np.float32)
    return thin_wide(filled_to_outline(m, filled)[0]).astype(np.float32)


def load_sketch(path: str, size: int, invert: str = "auto", filled: str = "auto") -> np.ndarray:
    """Sketch file -> binary map (size x size, strokes 1 on 0): alpha flattened onto white, grayscale, then
    sketch_map."""
    im = Image.open(path)
    im.load()
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(bg, im)
    g = np.asarray(im.convert("L"), dtype=np.float32) / 255.0
    return sketch_map(g, size, invert, filled)


def edge_target(model: Model, edges: np.ndarray) -> torch.Tensor:
    """Binary edge/sketch map(s) [H, W] or [B, H, W] (1 = stroke) -> E(edge map) [B, 4, h, w]."""
    e = torch.from_numpy(np.asarray(edges, dtype=np.float32))
    if e.dim() == 2:
        e = e[None]
    x = (e[:, None].expand(-1, 3, -1, -1) * 2 - 1)
    return model.encode_image(x)


# The largest guided push, as a fraction of the noise in the next step's U-Net input (core/generate.c's PUSH_CAP;
# docs/guidance.md): a larger one is more than the remaining steps remove, and stays as texture over plain
# backgrounds (DDIM and DDPM at beta 3, 25 steps). At DDIM 50 steps, beta 1.6, pushes are at most 0.14 of it.
PUSH_CAP = 0.2


def timesteps(n_train: int, steps: int) -> List[int]:
    """'leading' spacing with offset 1: arange(steps) * (n_train // steps) + 1, reversed."""
    k = n_train // steps
    return [i * k + 1 for i in range(steps)][::-1]


def t_to_sigma(abar: torch.Tensor, t: float) -> float:
    """k-diffusion's t_to_sigma: log-sigma interpolated at fractional t (as sampler.c)."""
    n = abar.numel()
    lo = int(math.floor(t))
    hi = lo + 1 if lo + 1 < n else lo
    w = t - lo
    ls = [math.log(math.sqrt((1 - abar[j].item()) / abar[j].item())) for j in (lo, hi)]
    return math.exp((1 - w) * ls[0] + w * ls[1])


def guided_steps(steps: int, stop: float, stop_step: Optional[int]) -> int:
    """How many of the first steps are guided: stop_step if given, else ceil(stop x steps)."""
    if stop_step is not None:
        return max(0, min(steps, stop_step))
    return max(0, min(steps, math.ceil(stop * steps - 1e-9)))


def sample(model: Model, prompt: Union[str, List[str]], target: Optional[torch.Tensor], beta: float = 1.6,
           stop: float = 0.5, stop_step: Optional[int] = None, steps: int = 50, cfg: float = 8.0, seed: int = 0,
           sampler: str = "ddim", eta: float = 0.0, negative: str = "", n: int = 1,
           seeds: Optional[List[int]] = None, trace: Optional[list] = None,
           teacher: Optional[List[torch.Tensor]] = None, push_cap: Optional[float] = PUSH_CAP) -> torch.Tensor:
    """METHOD.md's guided sampling of n images (or one per prompt when `prompt` is a list). Image k uses its own
    generator seeded with seeds[k] (default seed + k) for the initial noise, then the sampler's noise; target is
    one encoded sketch for all images or one per image. Returns the final scaled latents [n, C, h, w]; trace, if
    given, gets z after every step. teacher, if given, forces the latents entering step i > 0 to teacher[i - 1]
    (the noise streams are consumed as without it): one step of this sampler from another engine's trajectory.
    push_cap: each guided push at most this x the next step's input noise (docs/guidance.md; the C engine's);
    None for METHOD.md's rule alone (tests of that rule)."""
    if sampler not in ("ddim", "ddpm", "euler_a"):
        raise ValueError("sampler must be ddim, ddpm or euler_a")
    prompts = [prompt] * n if isinstance(prompt, str) else list(prompt)
    n = len(prompts)
    seeds = list(seeds) if seeds is not None else [seed + i for i in range(n)]
    abar = model.abar
    euler = sampler == "euler_a"
    if euler:  # k-diffusion's sigmas (sampler.c): linspace(T - 1, 0, steps), log-sigma interpolated, then 0
        T = abar.numel()
        ts = [float(T - 1)] if steps == 1 else [(T - 1) * (1.0 - i / (steps - 1)) for i in range(steps)]
        sigmas = [t_to_sigma(abar, t) for t in ts] + [0.0]
    else:
        ts = timesteps(abar.numel(), steps)
    k = abar.numel() // steps
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    z = torch.stack([torch.randn(model.latent_shape, generator=g) for g in gens]).to(model.device)
    if euler:
        z = z * sigmas[0]
    ctx_c = model.encode_text(prompts)
    ctx_u = model.encode_text([negative]).expand(n, -1, -1)
    n_guided = guided_steps(steps, stop, stop_step) if (target is not None and beta != 0) else 0
    if n_guided and model.lgp is None:
        raise ValueError("this model has no LGP: guidance needs one")
    if target is not None and target.shape[0] == 1:
        target = target.expand(n, -1, -1, -1)
    for i, t in enumerate(ts):
        if teacher is not None and i > 0:
            z = teacher[i - 1].to(model.device, torch.float32).clone()
        if euler:
            tt = torch.full((n,), t, dtype=torch.float32, device=model.device)
            zs = z * (1.0 / math.sqrt(sigmas[i] ** 2 + 1.0))
        else:
            tt = torch.full((n,), t, dtype=torch.long, device=model.device)
            zs = z
        guided = i < n_guided
        with torch.no_grad():
            eps_u = model.unet(zs.to(model.dtype), tt, ctx_u.to(model.dtype))[0].float() if cfg != 1.0 else None
        if guided:
            z_in = zs.detach().clone().requires_grad_(True)
            outs = model.unet(z_in.to(model.dtype), tt, ctx_c.to(model.dtype))
            eps_c = outs[0].float()
        else:
            with torch.no_grad():
                eps_c = model.unet(zs.to(model.dtype), tt, ctx_c.to(model.dtype))[0].float()
        eps = eps_c.detach() if eps_u is None else eps_u + cfg * (eps_c.detach() - eps_u)
        # z_prev: the step's mean (deterministic part); sigma: the scale of the fresh noise added to it
        if euler:
            sg, sn = sigmas[i], sigmas[i + 1]
            up = min(sn, math.sqrt(sn * sn * (sg * sg - sn * sn) / (sg * sg))) if sn > 0 else 0.0
            down = math.sqrt(max(sn * sn - up * up, 0.0))
            z_prev = z + eps * (down - sg)
            sigma = up if sn > 0 else 0.0
            # the mean moves to sigma_down, below sigma_next: the move is measured as the ODE step's, to sigma_next
            ratio = (sg - sn) / (sg - down) if sg > down else 1.0
            next_noise = sn / math.sqrt(sn * sn + 1.0)
        else:
            a_t = abar[t].item()
            a_p = abar[t - k].item() if t - k >= 0 else abar[0].item()
            x0 = (z - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
            next_noise = math.sqrt(1 - a_p)
            if sampler == "ddim":
                sigma = eta * math.sqrt((1 - a_p) / (1 - a_t)) * math.sqrt(1 - a_t / a_p)
                z_prev = math.sqrt(a_p) * x0 + math.sqrt(max(1 - a_p - sigma ** 2, 0.0)) * eps
            else:
                b = 1 - a_t / a_p
                z_prev = (math.sqrt(a_p) * b / (1 - a_t)) * x0 + (math.sqrt(1 - b) * (1 - a_p) / (1 - a_t)) * z
                sigma = math.sqrt((1 - a_p) / (1 - a_t) * b) if i < steps - 1 else 0.0
        if guided:
            # the move is beta x the step's deterministic move: the fresh noise is not a move towards the image,
            # and counting it (its norm dominates an ancestral step's early on) made the guided push several
            # times larger with ddpm, euler_a or ddim eta > 0 than with ddim (docs/guidance.md)
            pred = model.lgp(list(outs[1:]), tt).float()
            loss = (pred - target).pow(2).sum()
            g = torch.autograd.grad(loss, z_in)[0]
            with torch.no_grad():
                gn = g.flatten(1).norm(dim=1)
                # the push's norm is at most PUSH_CAP x the noise the next step's U-Net input carries (root mean
                # square per value; docs/guidance.md)
                cap = torch.full_like(gn, math.inf if push_cap is None else
                                      push_cap * next_noise * math.sqrt(g[0].numel()))
                if euler:
                    # METHOD.md's rule in the coordinates it was written for, the U-Net's variance-preserving
                    # input z / sqrt(sigma^2 + 1): the move is the noise-free step's to sigma_next there (DDIM's over
                    # the same interval), the push is made there and scaled back to sigma-space. Measured in
                    # sigma-space the move also counts the shrinking of the noise's scale, which that input does not
                    # see (1.6 to 4 times larger at 25 steps): each push was 0.7 to 0.9 x sigma_next at beta 3, and
                    # backgrounds came out as coloured noise (docs/guidance.md)
                    s_n = 1.0 / math.sqrt(sn * sn + 1.0)
                    ode = (z + (z_prev - z) * ratio) * s_n
                    move = (zs - ode).flatten(1).norm(dim=1)
                    alpha = torch.where(gn > 0, torch.minimum(beta * move, cap) / gn.clamp_min(1e-30),
                                        torch.zeros_like(gn))
                    z_prev = z_prev + ((ode - alpha[:, None, None, None] * g) - ode) * (1.0 / s_n)
                else:
                    move = (z - z_prev).flatten(1).norm(dim=1)
                    alpha = torch.where(gn > 0, torch.minimum(beta * move, cap) / gn.clamp_min(1e-30),
                                        torch.zeros_like(gn))
                    z_prev = z_prev - alpha[:, None, None, None] * g
        if sigma > 0:
            z_prev = z_prev + sigma * torch.stack([torch.randn(model.latent_shape, generator=g) for g in gens]).to(model.device)
        z = z_prev.detach()
        if trace is not None:
            trace.append(z.clone())
    return z


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="model directory (model.json)")
    ap.add_argument("--prompt", required=True)
    ap.add_argument("--negative", default="")
    ap.add_argument("--sketch", help="sketch image (PNG or JPEG); without it, beta is ignored")
    ap.add_argument("--invert", default="auto", choices=["auto", "true", "false"])
    ap.add_argument("--filled", default="auto", choices=["auto", "true", "false"],
                    help="filled regions of the sketch mean their outlines (auto: detected)")
    ap.add_argument("--beta", type=float, default=None)
    ap.add_argument("--stop", type=float, default=None, help="fraction of the steps that are guided")
    ap.add_argument("--stop-step", type=int, help="number of guided steps (overrides --stop)")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--cfg", type=float, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sampler", default=None, choices=["ddim", "ddpm", "euler_a"])
    ap.add_argument("--eta", type=float, default=None)
    ap.add_argument("--n", type=int, default=1, help="images, with seeds seed, seed+1, ...")
    ap.add_argument("--out", required=True, help="output PNG (several images: NAME-K.png)")
    ap.add_argument("--latents", help="also save the final latents (torch.save) here")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    model = Model(a.model)
    for k, v in model.manifest.get("defaults", {}).items():  # the model's defaults for what was not given
        if getattr(a, k, "unset") is None:
            setattr(a, k, v)
    target = edge_target(model, load_sketch(a.sketch, model.size, a.invert, a.filled)) if a.sketch else None
    z = sample(model, a.prompt, target, a.beta, a.stop, a.stop_step, a.steps, a.cfg, a.seed, a.sampler, a.eta,
               a.negative, a.n)
    imgs = model.decode(z)
    for i, im in enumerate(imgs):
        path = a.out if a.n == 1 else "%s-%d%s" % (os.path.splitext(a.out)[0], i, os.path.splitext(a.out)[1])
        Image.fromarray(im).save(path)
    if a.latents:
        torch.save(z, a.latents)
    return 0


if __name__ == "__main__":
    sys.exit(main())
