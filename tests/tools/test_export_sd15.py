"""Full-size SD 1.5: a random-weight checkpoint with the exact key names and shapes is exported, loaded and its
taps checked against SD15.md's table; a reduced-width variant of the same layout runs end to end at 512x512."""
import os

import numpy as np
import pytest
import torch

import export
import lgp as lgpmod
import sample as ref
from conftest import CLIP_VOCAB, random_checkpoint
from random_model import reduced_sd15, write_random_sd15

TABLE = [("input_blocks.2", 320, 64), ("input_blocks.4", 640, 32), ("input_blocks.8", 1280, 16),
         ("middle_block.0", 1280, 8), ("middle_block.1", 1280, 8), ("middle_block.2", 1280, 8),
         ("output_blocks.2", 1280, 16), ("output_blocks.4", 1280, 16), ("output_blocks.8", 640, 64)]


@pytest.fixture(scope="module")
def sd15_dir(tmp_path_factory):
    work = tmp_path_factory.mktemp("sd15")
    ckpt = str(work / "v1-5-random.safetensors")
    write_random_sd15(ckpt)
    out = str(work / "sd15")
    m = export.export(ckpt, out, vocab=CLIP_VOCAB)
    os.remove(ckpt)
    return out, m


def test_sd15_export_manifest(sd15_dir):
    out, m = sd15_dir
    assert m["image_size"] == 512 and m["latent_size"] == 64 and m["downscale"] == 8
    assert m["scaling_factor"] == 0.18215 and m["context_dim"] == 768
    assert [(t["name"], t["channels"], t["resolution"]) for t in m["taps"]] == TABLE
    assert m["tap_channels"] == 9280
    tk = m["tokenizer"]
    assert tk["vocab_size"] == 49408 and tk["merges_count"] == 48894 and tk["pad_id"] == 49407
    assert os.path.exists(os.path.join(out, "bpe_simple_vocab_16e6.txt.gz"))


def test_sd15_modules_load_and_taps(sd15_dir):
    out, _ = sd15_dir
    unet = torch.jit.load(os.path.join(out, "unet.pt"))
    assert sum(p.numel() for p in unet.parameters()) == 859_520_964
    text = torch.jit.load(os.path.join(out, "text_encoder.pt"))
    assert sum(p.numel() for p in text.parameters()) == 123_060_480
    enc = torch.jit.load(os.path.join(out, "vae_encoder.pt"))
    dec = torch.jit.load(os.path.join(out, "vae_decoder.pt"))
    assert sum(p.numel() for p in enc.parameters()) + sum(p.numel() for p in dec.parameters()) == 83_653_863
    import clip_tokenizer
    ids = torch.tensor([clip_tokenizer.Tokenizer.from_files(CLIP_VOCAB).input_ids("a photo of a cat")])
    with torch.no_grad():
        ctx = text(ids)
        assert ctx.shape == (1, 77, 768) and torch.isfinite(ctx).all()
        outs = unet(torch.randn(1, 4, 64, 64), torch.tensor([981]), ctx)
        assert outs[0].shape == (1, 4, 64, 64) and torch.isfinite(outs[0]).all()
        got = [(x.shape[1], x.shape[2], x.shape[3]) for x in outs[1:]]
        assert got == [(c, r, r) for _, c, r in TABLE]
        mean, logvar = enc(torch.rand(1, 3, 64, 64) * 2 - 1)
        assert mean.shape == (1, 4, 8, 8) and dec(mean).shape == (1, 3, 64, 64)


def test_reduced_width_sd15_end_to_end(tmp_path):
    """The SD 1.5 layout (4 levels, 9 taps, CLIP vocabulary, 512x512) at a reduced width: export, LGP, guided sampling."""
    cfg = reduced_sd15()
    ckpt = str(tmp_path / "small.safetensors")
    random_checkpoint(cfg, ckpt, seed=2)
    out = str(tmp_path / "small")
    m = export.export(ckpt, out, vocab=CLIP_VOCAB, name="sd15-reduced")
    assert [t["resolution"] for t in m["taps"]] == [r for _, _, r in TABLE]
    assert m["tap_channels"] == 9280 // 10
    net = lgpmod.LGP(m["tap_channels"], m["latent_size"]).eval()
    lgpmod.save(net, str(tmp_path / "lgp.pt"), lgpmod.describe(net, m))
    m = export.export(ckpt, out, vocab=CLIP_VOCAB, lgp=str(tmp_path / "lgp.pt"))
    model = ref.Model(out)
    sketch = np.zeros((512, 512), np.float32)
    sketch[100:400, 250:256] = 1
    target = ref.edge_target(model, sketch)
    assert target.shape == (1, 4, 64, 64)
    z = ref.sample(model, "a photo of a cat", target, beta=1.6, stop=0.5, steps=2, cfg=7.5, seed=0)
    img = model.decode(z)
    assert img.shape == (1, 512, 512, 3) and img.dtype == np.uint8
