#!/usr/bin/python3
"""Random-weight Stable Diffusion 1.5 models for tests and benchmarks: a checkpoint with every SD 1.5 key and shape
(or a reduced-width variant of the same layout), exported with a random LGP, for measuring speed without real weights;
and a legible variant (legible()), whose latents mean an image, for testing that guidance follows a sketch.

Usage: /usr/bin/python3 tools/random_model.py --out DIR [--reduced [--legible]] [--dtype float16] [--vocab FILE]
"""
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import json
import sys
import tempfile

import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import export  # noqa: E402
import lgp as lgpmod  # noqa: E402
import safetensors_io  # noqa: E402
import sdmodels  # noqa: E402

REDUCED = {"unet": {"model_channels": 32, "context_dim": 64}, "vae": {"ch": 32},
           "text": {"width": 64, "layers": 2, "heads": 2, "mlp": 128}}


def reduced_sd15() -> dict:
    """The SD 1.5 configuration (4 levels, 9 taps, 512x512) at a reduced width."""
    cfg = json.loads(json.dumps(sdmodels.SD15))
    for part, upd in REDUCED.items():
        cfg[part].update(upd)
    return cfg


def write_random_sd15(path: str, seed: int = 0) -> int:
    """Random float16 tensors under every SD 1.5 key (no model weights are initialised, so it is quick). Returns the
    number of tensors written."""
    with sdmodels.no_init():
        unet, vae, text = sdmodels.build(sdmodels.SD15)
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, v in sdmodels.to_checkpoint(unet, vae, text).items():
        scale = 0.02 if v.dim() > 1 else 0.0
        sd[k] = (torch.randn(v.shape, generator=g) * scale + (1.0 if k.endswith("weight") and v.dim() == 1 else 0.0)).half()
    del unet, vae, text
    # tensors that real checkpoints carry and the exporter ignores
    sd["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(77)[None].float()
    sd["betas"] = torch.zeros(1000)
    safetensors_io.save(sd, path)
    return len(sd)


# legible(): the decoder's contour sharpness (the slope of the clamp on a standardised channel) and its threshold
# (in standard deviations: a channel above it is a coloured blob, below it the dark background)
LEGIBLE_SLOPE = 3.0
LEGIBLE_THRESHOLD = 1.0
LEGIBLE_UNET_STD = 0.02  # the rest of the U-Net: small random weights (not 0.2), which leave its taps near linear
LEGIBLE_SILU_SCALE = 20.0  # clamp(y) ~ (silu(s (y + 1)) - silu(s (y - 1))) / s - 1, within 0.3 / s
_SMOOTH = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16.0
_OFFSETS = [(0, 0), (-1, 0), (1, 0), (0, -1), (0, 1), (-1, -1), (-1, 1), (1, 1)]  # the latent pixel, 7 neighbours


def legible(unet: nn.Module, vae: nn.Module) -> None:
    """Rebuilds random SD 1.5-layout weights (the reduced width: a VAE of 32 channels, so that its last GroupNorm
    standardises each channel alone; a U-Net of at least 32; 3 image channels, 4 latent channels) in place so that
    guidance has something to steer, which random weights do not give (their encoder is no inverse of their decoder,
    and their taps say nothing about the latent):
    - the VAE decodes each latent channel c < 3, standardised over the image, smoothly upsampled, into colour c:
      dark below LEGIBLE_THRESHOLD, a bright blob above it, so images are blobs on black with sharp contours; its
      encoder averages 8 x 8 pixels and standardises them, so E(D(z)) follows z (correlation about 0.8);
    - the U-Net's first block copies the latent pixel and 7 of its neighbours into its 32 channels, and the two
      blocks after it are the identity (their residual branches zeroed), so tap input_blocks.2 is that
      neighbourhood; all other weights stay small random ones.
    Nothing is trained: with an LGP trained on such a model's images, guidance can move its contours. Raises
    ValueError for other widths."""
    if vae.decoder.conv_out.weight.shape[1] != 32 or unet.input_blocks[0][0].weight.shape[0] < 32:
        raise ValueError("legible() needs a VAE of 32 channels and a U-Net of at least 32 (the reduced width)")
    with torch.no_grad():
        for p in vae.parameters():
            p.zero_()
        for m in vae.modules():
            if isinstance(m, nn.GroupNorm):
                m.weight.fill_(1.0)

        def copy(conv: nn.Conv2d, n: int, kernel: torch.Tensor = None) -> None:
            c = conv.weight.shape[-1] // 2
            for i in range(n):
                if kernel is None:
                    conv.weight[i, i, c, c] = 1.0
                else:
                    conv.weight[i, i] = kernel

        enc, dec = vae.encoder, vae.decoder
        off = 8.0  # a GroupNorm offset that keeps the next SiLU in its linear range (silu(8 + x) ~ 8 + x, |x| < 3)
        copy(enc.conv_in, 3)
        for lvl in enc.down:
            for b in lvl.block:
                if isinstance(b.nin_shortcut, nn.Conv2d):
                    copy(b.nin_shortcut, 3)
            if isinstance(lvl.downsample, sdmodels.EncDownsample):
                for i in range(3):
                    lvl.downsample.conv.weight[i, i, 0:2, 0:2] = 0.25
        enc.norm_out.bias[0:3] = off
        sf = vae.scaling_factor
        for i in range(3):
            enc.conv_out.weight[i, i, 1, 1] = 1.0 / sf
            enc.conv_out.bias[i] = -off / sf
        enc.conv_out.bias[4:8] = -30.0  # log-variance: a deterministic encoder
        for i in range(vae.quant_conv.weight.shape[0]):
            vae.quant_conv.weight[i, i] = 1.0
        for i in range(vae.post_quant_conv.weight.shape[0]):
            vae.post_quant_conv.weight[i, i] = 1.0
        # decoder: channel c and a copy, c + 3, to build the clamp from two SiLUs at the end
        for i in range(3):
            dec.conv_in.weight[i, i, 1, 1] = 1.0
            dec.conv_in.weight[i + 3, i, 1, 1] = 1.0
        for lvl in dec.up:
            for b in lvl.block:
                if isinstance(b.nin_shortcut, nn.Conv2d):
                    copy(b.nin_shortcut, 6)
            if isinstance(lvl.upsample, sdmodels.DecUpsample):
                copy(lvl.upsample.conv, 6, _SMOOTH)
        s, k, th = LEGIBLE_SILU_SCALE, LEGIBLE_SLOPE, LEGIBLE_THRESHOLD
        dec.norm_out.weight[0:6] = s * k
        dec.norm_out.bias[0:3] = s * (1 - k * th)
        dec.norm_out.bias[3:6] = s * (-1 - k * th)
        for i in range(3):
            dec.conv_out.weight[i, i, 1, 1] = 0.9 / s
            dec.conv_out.weight[i, i + 3, 1, 1] = -0.9 / s
            dec.conv_out.bias[i] = -0.9

        conv_in = unet.input_blocks[0][0]
        conv_in.weight.zero_()
        conv_in.bias.zero_()
        for j, (dy, dx) in enumerate(_OFFSETS):
            for c in range(4):
                conv_in.weight[4 * j + c, c, 1 + dy, 1 + dx] = 1.0
        for b in (1, 2):
            for layer in unet.input_blocks[b]:
                last = layer.out_layers[-1] if isinstance(layer, sdmodels.ResBlock) else layer.proj_out
                last.weight.zero_()
                last.bias.zero_()


def build_random(cfg: dict, seed: int = 0, legible_weights: bool = False):
    """(unet, vae, text) of any configuration with random weights drawn at a scale that keeps activations finite;
    with legible_weights, rebuilt by legible() (the U-Net's drawn smaller first)."""
    torch.manual_seed(seed)
    unet, vae, text = sdmodels.build(cfg)
    with torch.no_grad():
        for m in (unet, vae, text):
            std = LEGIBLE_UNET_STD if legible_weights and m is unet else 0.2
            for p in m.parameters():
                p.normal_(0, std if p.dim() > 1 else 0.05)
    if legible_weights:
        legible(unet, vae)
    return unet, vae, text


def write_random(cfg: dict, path: str, seed: int = 0, with_config: bool = True, dtype=torch.float32,
                 legible_weights: bool = False) -> dict:
    """build_random()'s checkpoint with LDM key names, with the configuration in its metadata unless with_config is
    false. Returns its state dict."""
    unet, vae, text = build_random(cfg, seed, legible_weights)
    sd = {k: v.to(dtype) if v.is_floating_point() else v for k, v in sdmodels.to_checkpoint(unet, vae, text).items()}
    safetensors_io.save(sd, path, {"sketchguide_config": json.dumps(cfg)} if with_config else None)
    return sd


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="model directory to write")
    ap.add_argument("--reduced", action="store_true", help="reduced width (same layout, 512x512) instead of full size")
    ap.add_argument("--legible", action="store_true", help="with --reduced: weights rebuilt so that guidance can "
                    "follow a sketch once an LGP is trained (legible())")
    ap.add_argument("--dtype", default="float32", choices=sorted(export.DTYPES))
    ap.add_argument("--vocab", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared",
                                                    "clip", "bpe_simple_vocab_16e6.txt.gz"))
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    if a.legible and not a.reduced:
        ap.error("--legible needs --reduced")
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = os.path.join(tmp, "random.safetensors")
        if a.reduced:
            write_random(reduced_sd15(), ckpt, a.seed, legible_weights=a.legible)
        else:
            write_random_sd15(ckpt, a.seed)
        name = ("sd15-reduced-legible" if a.legible else "sd15-reduced-random") if a.reduced else "sd15-random"
        m = export.export(ckpt, a.out, vocab=a.vocab, dtype=a.dtype, name=name)
    torch.manual_seed(a.seed)
    net = lgpmod.LGP(m["tap_channels"], m["latent_size"]).eval()
    desc = lgpmod.describe(net, m, {"trained": None})
    lgpmod.save(net, os.path.join(a.out, "lgp.pt"), desc)
    m["lgp"] = dict(desc, file="lgp.pt")
    export.write_manifest(a.out, m)
    print("wrote %s (%s, %s, random weights and LGP)" % (a.out, name, a.dtype))
    return 0


if __name__ == "__main__":
    sys.exit(main())
