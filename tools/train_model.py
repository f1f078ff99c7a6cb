#!/usr/bin/python3
"""Trains the bundled shapes model from nothing (data set, VAE, U-Net + text encoder), resumable, then writes its checkpoint.

Usage: /usr/bin/python3 tools/train_model.py --work DIR [--unet-steps N] [--out models/shapes]
Every stage is skipped when its result exists in DIR, and the U-Net and LGP stages resume from their last
checkpoints, so the same command can be run again (in the background, across sessions) until the step counts
are reached. With --out, the result is exported there and its LGP trained (tools/train_lgp.py).
"""
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # torch runs its own thread pool; two pools fight

import argparse
import json
import math
import shutil
import subprocess
import sys
import time
from multiprocessing import Pool

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import clip_tokenizer  # noqa: E402
import safetensors_io  # noqa: E402
import sdmodels  # noqa: E402
import shapes  # noqa: E402

SHAPES_CONFIG = {
    "name": "shapes",
    "image_size": 64,
    "unet": {
        "in_channels": 4, "out_channels": 4, "model_channels": 64, "channel_mult": [1, 1, 2],
        "num_res_blocks": 1, "attention_resolutions": [2], "num_heads": 4, "transformer_depth": 1,
        "context_dim": 128,
        "taps": {"input": [1, 3, 5], "middle": [0, 1, 2], "output": [1, 3, 5]},
    },
    # 8 normalisation groups (SD: 32): with 32 channels, 32 groups would normalise each channel on its own and
    # wash out flat colours
    "vae": {"ch": 32, "ch_mult": [1, 2, 2], "num_res_blocks": 1, "z_channels": 4, "embed_dim": 4,
            "in_channels": 3, "out_ch": 3, "scaling_factor": 1.0, "norm_groups": 8},
    "text": {"vocab_size": 0, "width": 128, "layers": 2, "heads": 4, "mlp": 512, "max_positions": 77},
    "schedule": dict(sdmodels.SD15["schedule"]),
}


def log(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, flush=True)


def _gen(seed: int):
    p = shapes.natural_params(seed)  # half plain: captions without a texture word need plain backgrounds
    img, edges = shapes.render(p)
    return (img, edges, shapes.caption(p), shapes.SHAPES.index(p["shape"]), shapes.COLOUR_NAMES.index(p["fg"]),
            shapes.COLOUR_NAMES.index(p["bg"]), shapes.TEXTURES.index(p["texture"]))


def make_data(path: str, n: int, first_seed: int = 0, workers: int = 2) -> None:
    """Writes n samples (seeds first_seed..) as an .npz: images, edges, template captions, labels (shape, fg, bg,
    texture), from which train_unet draws a natural caption for every sample it takes."""
    with Pool(workers) as pool:
        rows = pool.map(_gen, range(first_seed, first_seed + n), chunksize=256)
    np.savez(path + ".tmp.npz",
             images=np.stack([r[0] for r in rows]), edges=np.stack([r[1] for r in rows]),
             captions=np.array([r[2] for r in rows]), shape=np.array([r[3] for r in rows]),
             fg=np.array([r[4] for r in rows]), bg=np.array([r[5] for r in rows]),
             texture=np.array([r[6] for r in rows]))
    os.replace(path + ".tmp.npz", path)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 NHWC (or NHW for edge maps) -> float NCHW in [-1, 1]."""
    x = torch.from_numpy(images).float() / 127.5 - 1
    return x[:, None].expand(-1, 3, -1, -1) if x.dim() == 3 else x.permute(0, 3, 1, 2)


def _thicken(edges: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Edge maps with random extra width, so that the VAE also sees strokes like users' sketches."""
    e = torch.from_numpy(edges).float()[:, None] / 255
    k = int(rng.integers(1, 3)) * 2 + 1
    return (F.max_pool2d(e, k, 1, k // 2)[:, 0] * 255).to(torch.uint8).numpy()


def train_vae(work: str, cfg: dict, data: dict, steps: int, batch: int = 8) -> None:
    path = os.path.join(work, "vae.pt")
    if os.path.exists(path):
        return
    torch.manual_seed(1)
    rng = np.random.default_rng(1)
    vae = sdmodels.AutoencoderKL(cfg["vae"])
    opt = torch.optim.AdamW(vae.parameters(), 1e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 1e-3, total_steps=steps, pct_start=0.05)
    n = len(data["images"])
    t0 = time.time()
    for step in range(steps):
        idx = rng.integers(0, n, batch)
        ne = batch // 4
        x = torch.cat([to_tensor(data["images"][idx[ne:]]),
                       to_tensor(data["edges"][idx[: ne // 2]]),
                       to_tensor(_thicken(data["edges"][idx[ne // 2: ne]], rng))])
        mean, logvar = vae.encode_moments(x)
        z = mean + torch.randn_like(mean) * (0.5 * logvar).exp()
        rec = vae.decode(z)
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).sum(dim=(1, 2, 3)).mean()
        loss = (rec - x).abs().mean() + (rec - x).pow(2).mean() + 1e-6 * kl
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 200 == 0 or step == steps - 1:
            psnr = 10 * math.log10(4 / max((rec - x).pow(2).mean().item(), 1e-10))
            log("vae step %d/%d loss %.4f psnr %.1f dB kl %.1f (%.0f s)" % (step, steps, loss.item(), psnr, kl.item(), time.time() - t0))
    torch.save(vae.state_dict(), path)


@torch.no_grad()
def encode_latents(work: str, cfg: dict, data: dict, scaling_factor: float = None) -> None:
    """Encodes the data set with DIR/vae.pt; the scaling factor is 1/std of the latents unless given (a model
    continued from keeps its own: its U-Net was trained on latents scaled by it)."""
    path = os.path.join(work, "latents.pt")
    if os.path.exists(path):
        return
    vae = sdmodels.AutoencoderKL(cfg["vae"])
    vae.load_state_dict(torch.load(os.path.join(work, "vae.pt")))
    vae.eval()
    out = []
    for i in range(0, len(data["images"]), 512):
        out.append(vae.encode_moments(to_tensor(data["images"][i:i + 512]))[0])
    lat = torch.cat(out)
    x = to_tensor(data["images"][:512])
    psnr = 10 * math.log10(4 / (vae.decode(lat[:512]) - x).pow(2).mean().item())
    log("latents %s, std %.4f, reconstruction psnr %.1f dB" % (tuple(lat.shape), lat.std().item(), psnr))
    torch.save({"latents": lat, "scaling_factor": scaling_factor or 1.0 / lat.std().item()}, path)


def alphas_cumprod(sched: dict) -> torch.Tensor:
    n = sched["num_train_timesteps"]
    betas = torch.linspace(sched["beta_start"] ** 0.5, sched["beta_end"] ** 0.5, n, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0)


def batch_captions(data: dict, idx, rng: np.random.Generator, template_share: float = 0.1) -> list:
    """Captions for the samples idx: a random natural caption from the training templates (shapes.natural_caption)
    for each, the data set's template caption for template_share of them; the template captions alone when the
    data set has no texture labels (an older data.npz)."""
    if "texture" not in data:
        return [str(data["captions"][i]) for i in idx]
    out = []
    for i in idx:
        if rng.random() < template_share:
            out.append(str(data["captions"][i]))
            continue
        p = {"shape": shapes.SHAPES[data["shape"][i]], "fg": shapes.COLOUR_NAMES[data["fg"][i]],
             "bg": shapes.COLOUR_NAMES[data["bg"][i]], "texture": shapes.TEXTURES[data["texture"][i]]}
        out.append(shapes.natural_caption(p, rng))
    return out


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, ids_s: torch.Tensor, ids_t: torch.Tensor,
                 eot: int) -> torch.Tensor:
    """Mean squared difference of two text encodings [B, 77, W] at the positions from the later of the two
    captions' end tokens on: there a causal encoder has read the whole caption, so the student reading a natural
    caption can say what the teacher says reading the template caption of the same picture."""
    start = torch.maximum((ids_s != eot).sum(1), (ids_t != eot).sum(1))
    mask = (torch.arange(ids_s.shape[1])[None] >= start[:, None]).to(student.dtype)[..., None]
    return ((student - teacher).pow(2) * mask).sum() / (mask.sum() * student.shape[-1]).clamp_min(1)


def distill_text(work: str, cfg: dict, steps: int, batch: int = 48, lr: float = 1e-3) -> None:
    """Trains the text encoder of DIR/unet.pt alone (the U-Net, VAE and so the LGP stay as they are), cheaply:
    distill_loss of its reading of natural captions (shapes.natural_caption of shapes.natural_params) against the
    starting encoder's (DIR/teacher_text.pt) reading of the template caption of the same picture. Warm-up over
    100 steps, cosine decay to a tenth; the result replaces both the text weights and their EMA; resumable (the
    step it reached is kept in the checkpoint as text_distill_step)."""
    path = os.path.join(work, "unet.pt")
    ck = torch.load(path)
    done = int(ck.get("text_distill_step", 0))
    if done >= steps:
        return
    tok = clip_tokenizer.Tokenizer.from_files(os.path.join(work, "tokenizer"))
    text, teacher = sdmodels.CLIPTextModel(cfg["text"]), sdmodels.CLIPTextModel(cfg["text"])
    text.load_state_dict(ck["text"])
    teacher.load_state_dict(torch.load(os.path.join(work, "teacher_text.pt")))
    teacher.eval().requires_grad_(False)
    opt = torch.optim.AdamW(text.parameters(), lr, weight_decay=0.0)
    if ck.get("text_distill_opt") is not None:
        opt.load_state_dict(ck["text_distill_opt"])
    n_unet = len(list(sdmodels.UNetModel(cfg["unet"]).parameters()))
    t0, run = time.time(), 0.0
    for step in range(done + 1, steps + 1):
        rng = np.random.default_rng([step, 271828])
        ps = [shapes.natural_params(int(x)) for x in rng.integers(0, 10 ** 7, batch)]
        ids_s = torch.tensor([tok.input_ids(shapes.natural_caption(p, rng)) for p in ps])
        ids_t = torch.tensor([tok.input_ids(shapes.caption(p)) for p in ps])
        with torch.no_grad():
            tgt = teacher(ids_t)
        loss = distill_loss(text(ids_s), tgt, ids_s, ids_t, tok.eot_id)
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, step / 100) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / steps)))
        opt.zero_grad()
        loss.backward()
        opt.step()
        run += loss.item()
        if step % 50 == 0:
            log("text distill step %d/%d loss %.4f (%.2f s/step)" % (step, steps, run / 50, (time.time() - t0) / 50))
            t0, run = time.time(), 0.0
        if step % 200 == 0 or step == steps:
            ck["text"] = text.state_dict()
            ck["ema"] = ck["ema"][:n_unet] + [p.detach().clone() for p in text.parameters()]
            ck["text_distill_step"], ck["text_distill_opt"] = step, opt.state_dict()
            torch.save(ck, path + ".tmp")
            os.replace(path + ".tmp", path)


def train_text(work: str, cfg: dict, steps: int, batch: int = 24, lr: float = 1e-3, teach: float = 0.0,
               template_share: float = 0.0) -> None:
    """Trains the text encoder of DIR/unet.pt alone with the diffusion loss through the frozen U-Net (the U-Net,
    VAE and so the LGP stay the starting model's): pictures drawn and encoded as needed (shapes.natural_params,
    DIR/vae.pt), each with a natural caption (template_share of them the template caption; a tenth empty, so that
    classifier-free guidance's unconditional reading stays the U-Net's); min-SNR-5 weighting, warm-up over 50
    steps, cosine decay to a tenth. With teach > 0 and DIR/teacher_text.pt, the loss adds teach x the mean squared
    difference between the U-Net's prediction on the student's reading of the caption and its prediction on the
    teacher encoder's reading of the template caption of the same picture (the empty caption for the empty ones),
    at the same noisy latent and timestep: a target without the diffusion loss's noise, so that a natural caption
    comes to act on the U-Net as the template caption acts through the teacher. The result replaces the text weights
    and their EMA; resumable (text_step in the checkpoint)."""
    path = os.path.join(work, "unet.pt")
    ck = torch.load(path)
    done = int(ck.get("text_step", 0))
    if done >= steps:
        return
    tok = clip_tokenizer.Tokenizer.from_files(os.path.join(work, "tokenizer"))
    unet, text = sdmodels.UNetModel(cfg["unet"]), sdmodels.CLIPTextModel(cfg["text"])
    n_unet = len(list(unet.parameters()))
    with torch.no_grad():  # the exported (EMA) U-Net is the one to read
        unet.load_state_dict(ck["unet"])
        for p, e in zip(unet.parameters(), ck["ema"][:n_unet]):
            p.copy_(e)
    unet.requires_grad_(False)
    text.load_state_dict(ck["text"])
    vae = sdmodels.AutoencoderKL(cfg["vae"])
    vae.load_state_dict(torch.load(os.path.join(work, "vae.pt")))
    vae.eval().requires_grad_(False)
    opt = torch.optim.AdamW(text.parameters(), lr, weight_decay=0.0)
    if ck.get("text_opt") is not None:
        opt.load_state_dict(ck["text_opt"])
    abar = alphas_cumprod(cfg["schedule"]).float()
    snr = abar / (1 - abar)
    weight = torch.clamp(snr, max=5.0) / snr
    empty = tok.input_ids("")
    teacher = None
    if teach > 0:
        teacher = sdmodels.CLIPTextModel(cfg["text"])
        teacher.load_state_dict(torch.load(os.path.join(work, "teacher_text.pt")))
        teacher.eval().requires_grad_(False)
    t0, run, run_teach = time.time(), 0.0, 0.0
    for step in range(done + 1, steps + 1):
        rng = np.random.default_rng([step, 161803])
        gen = torch.Generator().manual_seed(step)
        ps = [shapes.natural_params(int(x)) for x in rng.integers(0, 10 ** 7, batch)]
        with torch.no_grad():
            z0 = vae.encode_moments(to_tensor(np.stack([shapes.render(p)[0] for p in ps])))[0] * cfg["vae"]["scaling_factor"]
        cond, tmpl = [], []
        for p in ps:
            r = rng.random()
            if r < 0.1:
                cond.append(empty)
                tmpl.append(empty)
                continue
            tmpl.append(tok.input_ids(shapes.caption(p)))
            cond.append(tmpl[-1] if r < 0.1 + template_share else tok.input_ids(shapes.natural_caption(p, rng)))
        cond, tmpl = torch.tensor(cond), torch.tensor(tmpl)
        t = torch.randint(0, abar.numel(), (batch,), generator=gen)
        noise = torch.randn(z0.shape, generator=gen)
        a_t = abar[t][:, None, None, None]
        zt = a_t.sqrt() * z0 + (1 - a_t).sqrt() * noise
        eps = unet(zt, t, text(cond))[0]
        loss = ((eps - noise).pow(2).mean(dim=(1, 2, 3)) * weight[t]).mean()
        if teacher is not None:
            with torch.no_grad():
                target = unet(zt, t, teacher(tmpl))[0]
            tl = (eps - target).pow(2).mean()
            run_teach += tl.item()
            loss = loss + teach * tl
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, step / 50) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / steps)))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(text.parameters(), 1.0)
        opt.step()
        run += loss.item()
        if step % 25 == 0:
            log("text step %d/%d loss %.4f teacher %.5f (%.2f s/step)" % (step, steps, run / 25, run_teach / 25,
                                                                           (time.time() - t0) / 25))
            t0, run, run_teach = time.time(), 0.0, 0.0
        if step % 50 == 0 or step == steps:
            ck["text"] = text.state_dict()
            ck["ema"] = ck["ema"][:n_unet] + [p.detach().clone() for p in text.parameters()]
            ck["text_step"], ck["text_opt"] = step, opt.state_dict()
            torch.save(ck, path + ".tmp")
            os.replace(path + ".tmp", path)


def train_unet(work: str, cfg: dict, data: dict, steps: int, batch: int = 32, lr: float = 4e-4,
               ema_decay: float = 0.999, distill: float = 0.0) -> None:
    """Trains (or continues) the U-Net and text encoder to `steps`: warm-up over 500 steps (a tenth of the run
    when shorter) from wherever it starts (a fresh optimiser), then cosine decay to a tenth of lr at `steps`.
    With distill > 0 and DIR/teacher_text.pt (written by init_from), the loss adds distill x distill_loss of the
    text encoder on the natural captions against the starting text encoder on the template captions."""
    path = os.path.join(work, "unet.pt")
    lat = torch.load(os.path.join(work, "latents.pt"))
    latents = lat["latents"] * lat["scaling_factor"]
    tok = clip_tokenizer.Tokenizer.from_files(os.path.join(work, "tokenizer"))
    empty = torch.tensor(tok.input_ids(""))
    unet, text = sdmodels.UNetModel(cfg["unet"]), sdmodels.CLIPTextModel(cfg["text"])
    params = list(unet.parameters()) + list(text.parameters())
    opt = torch.optim.AdamW(params, lr, weight_decay=0.01)
    ema = [p.detach().clone() for p in params]
    step = 0
    if os.path.exists(path):
        ck = torch.load(path)
        unet.load_state_dict(ck["unet"])
        text.load_state_dict(ck["text"])
        if ck.get("opt") is not None:
            opt.load_state_dict(ck["opt"])
        ema = ck["ema"]
        step = ck["step"]
        log("resumed at step %d" % step)
    if step >= steps:
        return
    start = run_start(path)
    teacher = None
    if distill > 0 and os.path.exists(os.path.join(work, "teacher_text.pt")):
        teacher = sdmodels.CLIPTextModel(cfg["text"])
        teacher.load_state_dict(torch.load(os.path.join(work, "teacher_text.pt")))
        teacher.eval().requires_grad_(False)
    warmup = max(1, min(500, (steps - start) // 10))
    save_every = 100 if start else 500
    abar = alphas_cumprod(cfg["schedule"]).float()
    snr = abar / (1 - abar)
    weight = torch.clamp(snr, max=5.0) / snr  # min-SNR-5 weighting for epsilon prediction
    gen = torch.Generator().manual_seed(1000 + step)
    n = len(latents)
    t0, run_loss, run_distill = time.time(), 0.0, 0.0
    while step < steps:
        warm = min(1.0, (step - start + 1) / warmup)
        decay = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - start) / max(steps - start, 1))))
        for g in opt.param_groups:
            g["lr"] = lr * warm * decay
        idx = torch.randint(0, n, (batch,), generator=gen)
        z0 = latents[idx]
        crng = np.random.default_rng([step, 31337])
        cond = torch.tensor([tok.input_ids(c) for c in batch_captions(data, idx.tolist(), crng)])
        template = torch.tensor([tok.input_ids(str(data["captions"][i])) for i in idx.tolist()])
        drop = torch.rand(batch, generator=gen) < 0.1
        cond[drop] = empty
        t = torch.randint(0, abar.numel(), (batch,), generator=gen)
        noise = torch.randn(z0.shape, generator=gen)
        a = abar[t][:, None, None, None]
        zt = a.sqrt() * z0 + (1 - a).sqrt() * noise
        ctx = text(cond)
        eps = unet(zt, t, ctx)[0]
        loss = ((eps - noise).pow(2).mean(dim=(1, 2, 3)) * weight[t]).mean()
        if teacher is not None:
            keep = ~drop
            with torch.no_grad():
                tgt = teacher(template[keep])
            dl = distill_loss(ctx[keep], tgt, cond[keep], template[keep], tok.eot_id)
            run_distill += dl.item()
            loss = loss + distill * dl
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        decay = min(ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(ema, params):
                e.mul_(decay).add_(p.detach(), alpha=1 - decay)
        run_loss += loss.item()
        if step % 50 == 0:
            log("unet step %d/%d loss %.4f distill %.4f lr %.2g (%.2f s/step)" % (
                step, steps, run_loss / 50, run_distill / 50, opt.param_groups[0]["lr"], (time.time() - t0) / 50))
            t0, run_loss, run_distill = time.time(), 0.0, 0.0
        if step % save_every == 0 or step == steps:
            torch.save({"unet": unet.state_dict(), "text": text.state_dict(), "opt": opt.state_dict(),
                        "ema": ema, "step": step}, path + ".tmp")
            os.replace(path + ".tmp", path)
            write_checkpoint(work, cfg)


def run_start(path: str) -> int:
    """The step this run's learning-rate schedule starts at: 0 from nothing; for a checkpoint seeded by init_from
    (no optimiser state), its step, recorded in DIR/start_step the first time so that a resumed run keeps it."""
    marker = os.path.join(os.path.dirname(path), "start_step")
    if os.path.exists(marker):
        with open(marker) as f:
            return int(f.read())
    if not os.path.exists(path) or torch.load(path).get("opt") is not None:
        return 0
    step = int(torch.load(path)["step"])
    with open(marker, "w") as f:
        f.write("%d\n" % step)
    return step


def init_from(work: str, cfg: dict, model_dir: str, teacher_dir: str = None) -> None:
    """Seeds DIR with the weights of an exported shapes model (its TorchScript modules hold LDM key names), so that
    a session without the earlier work folder continues training from the committed model (Adam starts afresh);
    the teacher text encoder (DIR/teacher_text.pt) is teacher_dir's (same tokenizer), else the model's own."""
    with open(os.path.join(model_dir, "model.json")) as f:
        man = json.load(f)
    mods = {k: torch.jit.load(os.path.join(model_dir, v)).state_dict() for k, v in man["modules"].items()}
    vae = sdmodels.AutoencoderKL(cfg["vae"])
    dec = {k: v for k, v in mods["vae_decoder"].items() if k.startswith("decoder.")}
    sdmodels._swap_up_keys(dec, "decoder.", len(cfg["vae"]["ch_mult"]))  # TorchScript keeps processing order
    vae_sd = dict(mods["vae_encoder"], **dec, **{k: v for k, v in mods["vae_decoder"].items() if k.startswith("post_quant")})
    vae.load_state_dict(vae_sd)
    torch.save(vae.state_dict(), os.path.join(work, "vae.pt"))
    unet, text = sdmodels.UNetModel(cfg["unet"]), sdmodels.CLIPTextModel(cfg["text"])
    unet.load_state_dict(mods["unet"])
    text.load_state_dict(mods["text_encoder"])
    teacher = text.state_dict()
    if teacher_dir:
        with open(os.path.join(teacher_dir, "model.json")) as f:
            tman = json.load(f)
        teacher = torch.jit.load(os.path.join(teacher_dir, tman["modules"]["text_encoder"])).state_dict()
        sdmodels.CLIPTextModel(cfg["text"]).load_state_dict(teacher)  # the same layout, or a clear error
    torch.save(teacher, os.path.join(work, "teacher_text.pt"))  # for train_unet's distill and train_text's teacher
    step = int(man.get("source", {}).get("train_steps") or 0)
    torch.save({"unet": unet.state_dict(), "text": text.state_dict(), "opt": None, "step": step,
                "ema": [p.detach().clone() for p in list(unet.parameters()) + list(text.parameters())]},
               os.path.join(work, "unet.pt"))
    log("initialised from %s at step %d" % (model_dir, step))


def _manifest_steps(model_dir: str) -> int:
    with open(os.path.join(model_dir, "model.json")) as f:
        return int(json.load(f).get("source", {}).get("train_steps") or 0)


def write_checkpoint(work: str, cfg: dict) -> str:
    """Writes DIR/shapes.safetensors: EMA U-Net and text encoder, VAE, LDM key names, config in the metadata."""
    ck = torch.load(os.path.join(work, "unet.pt"))
    unet, text = sdmodels.UNetModel(cfg["unet"]), sdmodels.CLIPTextModel(cfg["text"])
    unet.load_state_dict(ck["unet"])
    text.load_state_dict(ck["text"])
    with torch.no_grad():
        for p, e in zip(list(unet.parameters()) + list(text.parameters()), ck["ema"]):
            p.copy_(e)
    vae = sdmodels.AutoencoderKL(cfg["vae"])
    vae.load_state_dict(torch.load(os.path.join(work, "vae.pt")))
    sd = sdmodels.to_checkpoint(unet, vae, text)
    meta = {"sketchguide_config": json.dumps(cfg), "train_steps": str(ck["step"])}
    out = os.path.join(work, "shapes.safetensors")
    safetensors_io.save(sd, out + ".tmp", meta)
    os.replace(out + ".tmp", out)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", required=True, help="folder for the data set, checkpoints and logs")
    ap.add_argument("--samples", type=int, default=100000, help="training images (default 100000)")
    ap.add_argument("--vae-steps", type=int, default=2500)
    ap.add_argument("--unet-steps", type=int, default=30000)
    ap.add_argument("--lr", type=float, default=4e-4, help="U-Net and text encoder peak learning rate")
    ap.add_argument("--ema", type=float, default=0.999, help="EMA decay of the exported weights (a short "
                    "fine-tune wants less, e.g. 0.995, or the EMA keeps much of the starting model)")
    ap.add_argument("--distill", type=float, default=0.0, help="weight of the text-encoder distillation loss "
                    "(with --init-from: natural captions read like the starting model reads the template caption)")
    ap.add_argument("--text-distill-steps", type=int, default=0, help="with --init-from: first train the text "
                    "encoder alone this many steps (distill_text: cheap, no data set; the U-Net and LGP are kept "
                    "when --unet-steps is not above the starting model's steps)")
    ap.add_argument("--text-steps", type=int, default=0, help="with --init-from: train the text encoder alone "
                    "through the frozen U-Net this many steps (train_text; no data set needed)")
    ap.add_argument("--text-lr", type=float, default=1e-3)
    ap.add_argument("--text-teach", type=float, default=0.0, help="with --text-steps: weight of the teacher loss "
                    "(the U-Net's prediction on the new encoder's reading of a natural caption against its prediction "
                    "on the teacher encoder's reading of the template caption)")
    ap.add_argument("--text-template-share", type=float, default=0.0, help="with --text-steps: the share of "
                    "captions that are the template caption")
    ap.add_argument("--teacher-from", help="with --init-from: the model directory whose text encoder is the "
                    "teacher (default: --init-from's)")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--lgp-steps", type=int, default=2000)
    ap.add_argument("--init-from", help="an exported shapes model to continue from when DIR has no checkpoint "
                                        "(e.g. models/shapes)")
    ap.add_argument("--out", help="when done: export to this model directory and train its LGP there")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    os.makedirs(a.work, exist_ok=True)
    cfg = json.loads(json.dumps(SHAPES_CONFIG))
    tok_dir = os.path.join(a.work, "tokenizer")
    scale = None
    if a.init_from:  # the model continued from keeps its tokenizer (its embedding rows) and latent scale
        with open(os.path.join(a.init_from, "model.json")) as f:
            scale = float(json.load(f)["scaling_factor"])
        if not os.path.exists(os.path.join(tok_dir, "merges.txt")):
            clip_tokenizer.Tokenizer.from_files(a.init_from).write(tok_dir)
    unet_path = os.path.join(a.work, "unet.pt")
    if os.path.exists(unet_path):
        unet_done = bool(a.init_from) and torch.load(unet_path)["step"] >= a.unet_steps
    else:  # init_from will seed it at the model's steps
        unet_done = bool(a.init_from) and int(_manifest_steps(a.init_from)) >= a.unet_steps
    data = None
    if not unet_done:
        data_path = os.path.join(a.work, "data.npz")
        if not os.path.exists(data_path):
            log("generating %d samples" % a.samples)
            make_data(data_path, a.samples)
        data = dict(np.load(data_path))
    if not os.path.exists(os.path.join(tok_dir, "merges.txt")):
        clip_tokenizer.learn(list(data["captions"])).write(tok_dir)
    cfg["text"]["vocab_size"] = clip_tokenizer.Tokenizer.from_files(tok_dir).vocab_size
    if a.init_from and not os.path.exists(unet_path):
        init_from(a.work, cfg, a.init_from, a.teacher_from)
    if a.text_distill_steps:
        distill_text(a.work, cfg, a.text_distill_steps)
    if a.text_steps:
        cfg["vae"]["scaling_factor"] = scale
        train_text(a.work, cfg, a.text_steps, lr=a.text_lr, teach=a.text_teach, template_share=a.text_template_share)
    unet_trained = torch.load(unet_path)["step"] < a.unet_steps if os.path.exists(unet_path) else True
    if a.init_from and not unet_trained:  # the U-Net (and so the VAE, latents and LGP) stay the starting model's
        cfg["vae"]["scaling_factor"] = scale
    else:
        if data is None:
            data = dict(np.load(os.path.join(a.work, "data.npz")))
        train_vae(a.work, cfg, data, a.vae_steps)
        encode_latents(a.work, cfg, data, scale)
        cfg["vae"]["scaling_factor"] = round(torch.load(os.path.join(a.work, "latents.pt"))["scaling_factor"], 5)
        train_unet(a.work, cfg, data, a.unet_steps, lr=a.lr, ema_decay=a.ema, distill=a.distill)
    ckpt = write_checkpoint(a.work, cfg)
    log("checkpoint %s" % ckpt)
    if a.out and a.init_from and not unet_trained:  # same U-Net: export over a copy of the starting model, LGP kept
        here = os.path.dirname(os.path.abspath(__file__))
        if os.path.abspath(a.out) != os.path.abspath(a.init_from):
            os.makedirs(a.out, exist_ok=True)
            for f in ("model.json", "lgp.pt"):
                shutil.copyfile(os.path.join(a.init_from, f), os.path.join(a.out, f))
        subprocess.check_call([sys.executable, os.path.join(here, "export.py"), ckpt, "--out", a.out, "--vocab", tok_dir])
    elif a.out:
        here = os.path.dirname(os.path.abspath(__file__))
        subprocess.check_call([sys.executable, os.path.join(here, "export.py"), ckpt, "--out", a.out, "--vocab", tok_dir])
        steps = torch.load(os.path.join(a.work, "unet.pt"))["step"]
        subprocess.check_call([sys.executable, os.path.join(here, "train_lgp.py"), a.out, "--steps", str(a.lgp_steps),
                               "--checkpoint", os.path.join(a.work, "lgp-unet%d.ckpt" % steps)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
