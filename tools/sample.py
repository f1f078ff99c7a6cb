#!/usr/bin/python3
"""Python reference sampler: sketch-guided generation (METHOD.md) over an exported model directory; the oracle for the C engine.

Usage: /usr/bin/python3 tools/sample.py MODEL_DIR --prompt TEXT --sketch FILE --out OUT.png
           [--beta B] [--stop S | --stop-step N] [--steps N] [--cfg W] [--seed 0] [--sampler ddim|ddpm]
           [--eta E] [--negative TEXT] [--n 1] [--invert auto|true|false] [--latents OUT.pt]
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


def load_sketch(path: str, size: int, invert: str = "auto") -> np.ndarray:
    """Sketch file -> binary map (size x size, strokes 1 on 0): alpha flattened onto white, grayscale, inverted when
    strokes are dark on light (auto: mean brightness above 0.5), resized (bilinear), thresholded at 0.5."""
    im = Image.open(path)
    im.load()
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(bg, im)
    g = np.asarray(im.convert("L"), dtype=np.float32) / 255.0
    if invert == "true" or (invert == "auto" and g.mean() > 0.5):
        g = 1.0 - g
    if g.shape != (size, size):
        t = torch.from_numpy(g)[None, None]
        g = torch.nn.functional.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)[0, 0].numpy()
    return (g > 0.5).astype(np.float32)


def edge_target(model: Model, edges: np.ndarray) -> torch.Tensor:
    """Binary edge/sketch map(s) [H, W] or [B, H, W] (1 = stroke) -> E(edge map) [B, 4, h, w]."""
    e = torch.from_numpy(np.asarray(edges, dtype=np.float32))
    if e.dim() == 2:
        e = e[None]
    x = (e[:, None].expand(-1, 3, -1, -1) * 2 - 1)
    return model.encode_image(x)


def timesteps(n_train: int, steps: int) -> List[int]:
    """'leading' spacing with offset 1: arange(steps) * (n_train // steps) + 1, reversed."""
    k = n_train // steps
    return [i * k + 1 for i in range(steps)][::-1]


def guided_steps(steps: int, stop: float, stop_step: Optional[int]) -> int:
    """How many of the first steps are guided: stop_step if given, else ceil(stop x steps)."""
    if stop_step is not None:
        return max(0, min(steps, stop_step))
    return max(0, min(steps, math.ceil(stop * steps - 1e-9)))


def sample(model: Model, prompt: Union[str, List[str]], target: Optional[torch.Tensor], beta: float = 1.6,
           stop: float = 0.5, stop_step: Optional[int] = None, steps: int = 50, cfg: float = 8.0, seed: int = 0,
           sampler: str = "ddim", eta: float = 0.0, negative: str = "", n: int = 1,
           seeds: Optional[List[int]] = None, trace: Optional[list] = None,
           teacher: Optional[List[torch.Tensor]] = None) -> torch.Tensor:
    """METHOD.md's guided sampling of n images (or one per prompt when `prompt` is a list). Image k uses its own
    generator seeded with seeds[k] (default seed + k) for the initial noise, then the sampler's noise; target is
    one encoded sketch for all images or one per image. Returns the final scaled latents [n, C, h, w]; trace, if
    given, gets z after every step. teacher, if given, forces the latents entering step i > 0 to teacher[i - 1]
    (the noise streams are consumed as without it): one step of this sampler from another engine's trajectory."""
    if sampler not in ("ddim", "ddpm"):
        raise ValueError("sampler must be ddim or ddpm")
    prompts = [prompt] * n if isinstance(prompt, str) else list(prompt)
    n = len(prompts)
    seeds = list(seeds) if seeds is not None else [seed + i for i in range(n)]
    abar = model.abar
    ts = timesteps(abar.numel(), steps)
    k = abar.numel() // steps
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    z = torch.stack([torch.randn(model.latent_shape, generator=g) for g in gens]).to(model.device)
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
        tt = torch.full((n,), t, dtype=torch.long, device=model.device)
        guided = i < n_guided
        with torch.no_grad():
            eps_u = model.unet(z.to(model.dtype), tt, ctx_u.to(model.dtype))[0].float() if cfg != 1.0 else None
        if guided:
            z_in = z.detach().clone().requires_grad_(True)
            outs = model.unet(z_in.to(model.dtype), tt, ctx_c.to(model.dtype))
            eps_c = outs[0].float()
        else:
            with torch.no_grad():
                eps_c = model.unet(z.to(model.dtype), tt, ctx_c.to(model.dtype))[0].float()
        eps = eps_c.detach() if eps_u is None else eps_u + cfg * (eps_c.detach() - eps_u)
        a_t = abar[t].item()
        a_p = abar[t - k].item() if t - k >= 0 else abar[0].item()
        x0 = (z - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
        if sampler == "ddim":
            sigma = eta * math.sqrt((1 - a_p) / (1 - a_t)) * math.sqrt(1 - a_t / a_p)
            z_prev = math.sqrt(a_p) * x0 + math.sqrt(max(1 - a_p - sigma ** 2, 0.0)) * eps
        else:
            b = 1 - a_t / a_p
            z_prev = (math.sqrt(a_p) * b / (1 - a_t)) * x0 + (math.sqrt(1 - b) * (1 - a_p) / (1 - a_t)) * z
            sigma = math.sqrt((1 - a_p) / (1 - a_t) * b) if i < steps - 1 else 0.0
        if sigma > 0:
            z_prev = z_prev + sigma * torch.stack([torch.randn(model.latent_shape, generator=g) for g in gens]).to(model.device)
        if guided:
            pred = model.lgp(list(outs[1:]), tt).float()
            loss = (pred - target).pow(2).sum()
            g = torch.autograd.grad(loss, z_in)[0]
            with torch.no_grad():
                move = (z - z_prev).flatten(1).norm(dim=1)
                gn = g.flatten(1).norm(dim=1)
                alpha = torch.where(gn > 0, beta * move / gn.clamp_min(1e-30), torch.zeros_like(gn))
                z_prev = z_prev - alpha[:, None, None, None] * g
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
    ap.add_argument("--beta", type=float, default=None)
    ap.add_argument("--stop", type=float, default=None, help="fraction of the steps that are guided")
    ap.add_argument("--stop-step", type=int, help="number of guided steps (overrides --stop)")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--cfg", type=float, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sampler", default=None, choices=["ddim", "ddpm"])
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
    target = edge_target(model, load_sketch(a.sketch, model.size, a.invert)) if a.sketch else None
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
