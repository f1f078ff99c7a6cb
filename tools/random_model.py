#!/usr/bin/python3
"""Random-weight Stable Diffusion 1.5 models for tests and benchmarks: a checkpoint with every SD 1.5 key and shape
(or a reduced-width variant of the same layout), exported with a random LGP, for measuring speed without real weights.

Usage: /usr/bin/python3 tools/random_model.py --out DIR [--reduced] [--dtype float16] [--vocab FILE]
"""
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import json
import sys
import tempfile

import torch

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


def write_random(cfg: dict, path: str, seed: int = 0, with_config: bool = True, dtype=torch.float32) -> dict:
    """A random-weight checkpoint of any configuration with LDM key names (weights drawn at a scale that keeps
    activations finite), with the configuration in its metadata unless with_config is false. Returns its state
    dict."""
    torch.manual_seed(seed)
    unet, vae, text = sdmodels.build(cfg)
    with torch.no_grad():
        for m in (unet, vae, text):
            for p in m.parameters():
                p.normal_(0, 0.2 if p.dim() > 1 else 0.05)
    sd = {k: v.to(dtype) if v.is_floating_point() else v for k, v in sdmodels.to_checkpoint(unet, vae, text).items()}
    safetensors_io.save(sd, path, {"sketchguide_config": json.dumps(cfg)} if with_config else None)
    return sd


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="model directory to write")
    ap.add_argument("--reduced", action="store_true", help="reduced width (same layout, 512x512) instead of full size")
    ap.add_argument("--dtype", default="float32", choices=sorted(export.DTYPES))
    ap.add_argument("--vocab", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared",
                                                    "clip", "bpe_simple_vocab_16e6.txt.gz"))
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = os.path.join(tmp, "random.safetensors")
        if a.reduced:
            write_random(reduced_sd15(), ckpt, a.seed)
        else:
            write_random_sd15(ckpt, a.seed)
        name = "sd15-reduced-random" if a.reduced else "sd15-random"
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
