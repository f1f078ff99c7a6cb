"""Shared fixtures for the toolchain tests: small random-weight models exported once per session."""
import os
import sys

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tools"))

import clip_tokenizer  # noqa: E402
import export  # noqa: E402
import random_model  # noqa: E402
import lgp as lgpmod  # noqa: E402
import sdmodels  # noqa: E402
import shapes  # noqa: E402

SHARED = os.environ.get("SKETCHGUIDE_SHARED", os.path.join(os.path.dirname(ROOT), "shared"))
CLIP_VOCAB = os.path.join(SHARED, "clip", "bpe_simple_vocab_16e6.txt.gz")
BUNDLED = os.path.join(ROOT, "models", "shapes")

torch.set_num_threads(os.cpu_count() or 1)


def tiny_config(vocab_size: int) -> dict:
    """The bundled model's layout at a smaller width, for fast tests."""
    return {
        "name": "tiny", "image_size": 32,
        "unet": {"in_channels": 4, "out_channels": 4, "model_channels": 32, "channel_mult": [1, 2],
                 "num_res_blocks": 1, "attention_resolutions": [1, 2], "num_heads": 2, "transformer_depth": 1,
                 "context_dim": 32, "taps": {"input": [1, 3], "middle": [0, 1, 2], "output": [1, 3]}},
        "vae": {"ch": 32, "ch_mult": [1, 1], "num_res_blocks": 1, "z_channels": 4, "embed_dim": 4,
                "in_channels": 3, "out_ch": 3, "scaling_factor": 0.5},
        "text": {"vocab_size": vocab_size, "width": 32, "layers": 1, "heads": 2, "mlp": 64, "max_positions": 77},
        "schedule": dict(sdmodels.SD15["schedule"]),
    }


def random_checkpoint(cfg: dict, path: str, seed: int = 0, with_config: bool = True, dtype=torch.float32) -> dict:
    """Writes a random-weight single-file checkpoint with LDM key names; returns its state dict."""
    return random_model.write_random(cfg, path, seed, with_config, dtype)


@pytest.fixture(scope="session")
def tiny_vocab(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("vocab"))
    caps = [shapes.caption(shapes.sample_params(i)) for i in range(300)]
    clip_tokenizer.learn(caps).write(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, tiny_vocab):
    """A random-weight tiny model exported with a random (untrained) LGP: (model dir, config, checkpoint path)."""
    work = tmp_path_factory.mktemp("tiny")
    tok = clip_tokenizer.Tokenizer.from_files(tiny_vocab)
    cfg = tiny_config(tok.vocab_size)
    ckpt = str(work / "tiny.safetensors")
    random_checkpoint(cfg, ckpt)
    out = str(work / "model")
    manifest = export.export(ckpt, out, vocab=tiny_vocab)
    torch.manual_seed(1)
    net = lgpmod.LGP(manifest["tap_channels"], manifest["latent_size"])
    with torch.no_grad():  # give the batch norms non-trivial statistics
        for mod in net.modules():
            if isinstance(mod, torch.nn.BatchNorm1d):
                mod.running_var.uniform_(0.5, 2.0)
                mod.running_mean.normal_(0, 0.1)
    lgpmod.save(net, os.path.join(out, "lgp.pt"), lgpmod.describe(net, manifest))
    manifest["lgp"] = dict(lgpmod.describe(net, manifest), file="lgp.pt")
    export.write_manifest(out, manifest)
    return out, cfg, ckpt
