#!/usr/bin/python3
"""Exports an original single-file Stable Diffusion checkpoint (.safetensors or .ckpt) to a sketchguide model directory.

Usage: /usr/bin/python3 tools/export.py CHECKPOINT --out models/NAME [--vocab FILE|DIR] [--dtype float16] [--lgp lgp.pt]

The directory gets TorchScript modules (text_encoder.pt, unet.pt, vae_encoder.pt, vae_decoder.pt), the CLIP
tokenizer files and model.json, the manifest that the C engine and tools/sample.py read.
"""
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import json
import shutil
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import clip_tokenizer  # noqa: E402
import safetensors_io  # noqa: E402
import sdmodels  # noqa: E402

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
MODULES = {"text_encoder": "text_encoder.pt", "unet": "unet.pt", "vae_encoder": "vae_encoder.pt", "vae_decoder": "vae_decoder.pt"}
FORMAT_VERSION = 1
# generation defaults written into the manifest (the paper's beta, stop and cfg); a config's "defaults" override them
DEFAULTS = {"steps": 50, "cfg": 8.0, "beta": 1.6, "stop": 0.5, "sampler": "ddim", "eta": 0.0}


class ExportError(Exception):
    pass


def load_checkpoint(path: str):
    """Returns (state dict, metadata dict) of a .safetensors or a pickled .ckpt/.pt checkpoint."""
    if not os.path.isfile(path):
        raise ExportError("%s: no such file" % path)
    if path.endswith(".safetensors"):
        try:
            return safetensors_io.load(path, with_metadata=True)
        except ValueError as e:
            raise ExportError(str(e))
    try:
        obj = torch.load(path, map_location="cpu")
    except Exception as e:  # noqa: BLE001 - torch.load raises many kinds
        raise ExportError("%s: cannot read as a torch checkpoint: %s" % (path, e))
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ExportError("%s: not a state dict" % path)
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}, {}


def infer_config(sd: dict, meta: dict, given: str = None) -> dict:
    """The model configuration: --config (a JSON file or 'sd15'), else the checkpoint's own, else SD 1.x by shapes."""
    if given:
        if given == "sd15":
            return json.loads(json.dumps(sdmodels.SD15))
        with open(given) as f:
            return json.load(f)
    if "sketchguide_config" in meta:
        return json.loads(meta["sketchguide_config"])
    w = sd.get(sdmodels.PREFIX_UNET + "input_blocks.0.0.weight")
    k = sd.get(sdmodels.PREFIX_UNET + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight")
    if w is not None and tuple(w.shape) == (320, 4, 3, 3) and k is not None and k.shape[1] == 768:
        return json.loads(json.dumps(sdmodels.SD15))
    raise ExportError("cannot tell this checkpoint's configuration (not SD 1.x); pass --config FILE")


def load_part(module: torch.nn.Module, sd: dict, what: str) -> None:
    try:
        missing, unexpected = module.load_state_dict(sd, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise ExportError("%s: weights do not fit the configuration: %s" % (what, str(e).splitlines()[-1].strip()))
    if missing or unexpected:
        raise ExportError("%s: %d missing keys (first: %s), %d unexpected keys (first: %s)" % (
            what, len(missing), missing[:3], len(unexpected), unexpected[:3]))


def copy_tokenizer(vocab: str, out: str, cfg: dict) -> dict:
    """Copies CLIP tokenizer files into out; returns the manifest's tokenizer section."""
    if os.path.isdir(vocab):
        src = [os.path.join(vocab, f) for f in ("vocab.json", "merges.txt") if os.path.exists(os.path.join(vocab, f))]
        if not any(s.endswith("merges.txt") for s in src):
            raise ExportError("%s: no merges.txt" % vocab)
    else:
        if not os.path.isfile(vocab):
            raise ExportError("%s: no such tokenizer file" % vocab)
        src = [vocab]
        if vocab.endswith("merges.txt") and os.path.exists(os.path.join(os.path.dirname(vocab), "vocab.json")):
            src.append(os.path.join(os.path.dirname(vocab), "vocab.json"))
    for s in src:
        shutil.copyfile(s, os.path.join(out, os.path.basename(s)))
    names = [os.path.basename(s) for s in src]
    merges_file = next(n for n in names if n != "vocab.json")
    tok = clip_tokenizer.Tokenizer.from_files(os.path.join(out, merges_file))
    if tok.vocab_size != cfg["text"]["vocab_size"]:
        raise ExportError("tokenizer has %d tokens, the text encoder %d" % (tok.vocab_size, cfg["text"]["vocab_size"]))
    sec = {"type": "clip-bpe", "merges": merges_file, "merges_count": len(tok.merges), "vocab_size": tok.vocab_size,
           "max_length": cfg["text"]["max_positions"], "sot_id": tok.sot_id, "eot_id": tok.eot_id, "pad_id": tok.pad_id}
    if "vocab.json" in names:
        sec["vocab"] = "vocab.json"
    return sec


def lgp_section(path: str) -> dict:
    """Reads the LGP's own description (an extra file inside its TorchScript archive)."""
    files = {"lgp.json": ""}
    torch.jit.load(path, map_location="cpu", _extra_files=files)
    if not files["lgp.json"]:
        raise ExportError("%s: not an LGP saved by tools/train_lgp.py (no lgp.json inside)" % path)
    sec = json.loads(files["lgp.json"])
    sec["file"] = "lgp.pt"
    return sec


def export(checkpoint: str, out: str, vocab: str = None, dtype: str = "float32", config: str = None,
           lgp: str = None, name: str = None) -> dict:
    """Writes the model directory. Returns the manifest."""
    sd, meta = load_checkpoint(checkpoint)
    cfg = infer_config(sd, meta, config)
    if dtype not in DTYPES:
        raise ExportError("unknown dtype %r (float32, float16, bfloat16)" % dtype)
    if vocab is None:
        raise ExportError("the checkpoint holds no tokenizer: pass --vocab (a bpe_simple_vocab file or a folder "
                          "with vocab.json and merges.txt)")
    parts = sdmodels.split_checkpoint(sd)
    with sdmodels.no_init():
        unet, vae, text = sdmodels.build(cfg)
    for module, part, what in ((unet, parts[0], "U-Net"), (vae, parts[1], "VAE"), (text, parts[2], "text encoder")):
        load_part(module, part, what)
        module.eval().requires_grad_(False)
    del sd, parts
    os.makedirs(out, exist_ok=True)
    tok = copy_tokenizer(vocab, out, cfg)
    tdt = DTYPES[dtype]
    scripted = {
        "text_encoder": torch.jit.script(text.to(tdt)),
        "unet": torch.jit.script(unet.to(tdt)),
        "vae_encoder": torch.jit.script(sdmodels.VAEEncoderExport(vae.to(tdt))),
        "vae_decoder": torch.jit.script(sdmodels.VAEDecoderExport(vae)),
    }
    for key, m in scripted.items():
        torch.jit.save(m, os.path.join(out, MODULES[key]))
    down = 2 ** (len(cfg["vae"]["ch_mult"]) - 1)
    size = int(cfg.get("image_size", 512))
    taps = unet.tap_info()
    for t in taps:
        t["resolution"] = size // down // t["downsample"]
    manifest = {
        "format": "sketchguide-model", "format_version": FORMAT_VERSION,
        "name": name or cfg.get("name") or os.path.basename(os.path.normpath(out)),
        "image_size": size, "latent_channels": cfg["vae"]["embed_dim"], "downscale": down, "latent_size": size // down,
        "scaling_factor": cfg["vae"]["scaling_factor"],
        "schedule": cfg["schedule"], "prediction_type": cfg["schedule"].get("prediction_type", "epsilon"),
        "defaults": dict(DEFAULTS, **cfg.get("defaults", {})),
        "context_dim": cfg["text"]["width"], "context_length": cfg["text"]["max_positions"],
        "modules": dict(MODULES),
        "unet_outputs": ["eps"] + [t["name"] for t in taps],
        "taps": taps, "tap_channels": sum(t["channels"] for t in taps),
        "tokenizer": tok,
        "lgp": lgp_section(lgp) if lgp else None,
        "dtype": dtype, "torch_version": torch.__version__,
        "source": {"checkpoint": os.path.basename(checkpoint), "train_steps": meta.get("train_steps")},
        "config": cfg,
    }
    if lgp:
        shutil.copyfile(lgp, os.path.join(out, "lgp.pt"))
    elif os.path.exists(os.path.join(out, "model.json")):
        with open(os.path.join(out, "model.json")) as f:  # keep an LGP trained for this directory earlier
            old = json.load(f)
        if old.get("lgp") and os.path.exists(os.path.join(out, old["lgp"]["file"])):
            manifest["lgp"] = old["lgp"]
    write_manifest(out, manifest)
    return manifest


def write_manifest(out: str, manifest: dict) -> None:
    with open(os.path.join(out, "model.json.tmp"), "w") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")
    os.replace(os.path.join(out, "model.json.tmp"), os.path.join(out, "model.json"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", help="original single-file checkpoint (.safetensors, .ckpt)")
    ap.add_argument("--out", required=True, help="model directory to write")
    ap.add_argument("--vocab", help="CLIP tokenizer: bpe_simple_vocab_16e6.txt[.gz], merges.txt, or a folder with vocab.json + merges.txt")
    ap.add_argument("--dtype", default="float32", choices=sorted(DTYPES), help="weights' dtype (float16/bfloat16 for GPUs)")
    ap.add_argument("--config", help="model configuration JSON, or 'sd15' (default: from the checkpoint)")
    ap.add_argument("--lgp", help="a trained LGP (lgp.pt from tools/train_lgp.py) to include")
    ap.add_argument("--name", help="model name in model.json")
    a = ap.parse_args()
    torch.set_num_threads(os.cpu_count())
    try:
        m = export(a.checkpoint, a.out, a.vocab, a.dtype, a.config, a.lgp, a.name)
    except ExportError as e:
        print("export: %s" % e, file=sys.stderr)
        return 2
    print("exported %s to %s: %dx%d images, %d taps (%d channels), %s" % (
        m["name"], a.out, m["image_size"], m["image_size"], len(m["taps"]), m["tap_channels"], m["dtype"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
