"""Tests of tools/export.py on a small random-weight model: TorchScript equals eager, manifest, dtypes, errors."""
import json
import os

import pytest
import torch

import clip_tokenizer
import export
import sdmodels
from conftest import random_checkpoint, tiny_config


def eager(cfg, ckpt):
    sd = export.load_checkpoint(ckpt)[0]
    unet, vae, text = sdmodels.build(cfg)
    for m, part in zip((unet, vae, text), sdmodels.split_checkpoint(sd)):
        m.load_state_dict(part)
        m.eval()
    return unet, vae, text


def test_round_trip_equals_eager(tiny_model):
    out, cfg, ckpt = tiny_model
    unet, vae, text = eager(cfg, ckpt)
    ids = torch.randint(0, cfg["text"]["vocab_size"], (2, 77))
    ts = {n: torch.jit.load(os.path.join(out, f)) for n, f in export.MODULES.items()}
    with torch.no_grad():
        ctx = text(ids)
        assert torch.equal(ts["text_encoder"](ids), ctx)
        z = torch.randn(2, 4, 8, 8)
        t = torch.tensor([999, 1])
        a, b = ts["unet"](z, t, ctx), unet(z, t, ctx)
        assert len(a) == len(b) == 1 + len(unet.tap_info())
        for x, y in zip(a, b):
            assert torch.equal(x, y)
        x = torch.rand(1, 3, 32, 32) * 2 - 1
        mean, logvar = ts["vae_encoder"](x)
        m2, l2 = vae.encode_moments(x)
        assert torch.equal(mean, m2) and torch.equal(logvar, l2)
        assert torch.equal(ts["vae_decoder"](mean), vae.decode(mean))


def test_manifest(tiny_model):
    out, cfg, _ = tiny_model
    with open(os.path.join(out, "model.json")) as f:
        m = json.load(f)
    assert m["format"] == "sketchguide-model" and m["image_size"] == 32 and m["downscale"] == 2
    assert m["latent_size"] == 16 and m["latent_channels"] == 4 and m["scaling_factor"] == 0.5
    assert m["prediction_type"] == "epsilon" and m["schedule"]["beta_schedule"] == "scaled_linear"
    assert m["dtype"] == "float32" and m["torch_version"] == torch.__version__
    assert m["unet_outputs"][0] == "eps" and m["unet_outputs"][1:] == [t["name"] for t in m["taps"]]
    assert [t["channels"] for t in m["taps"]] == [32, 64, 64, 64, 64, 64, 32]
    assert [t["resolution"] for t in m["taps"]] == [16, 8, 8, 8, 8, 16, 16]
    assert m["tap_channels"] == 384
    tk = m["tokenizer"]
    tok = clip_tokenizer.Tokenizer.from_files(os.path.join(out, tk["merges"]), tk["merges_count"])
    assert tok.vocab_size == tk["vocab_size"] == cfg["text"]["vocab_size"]
    assert (tk["sot_id"], tk["eot_id"], tk["pad_id"]) == (tok.sot_id, tok.eot_id, tok.eot_id)
    assert m["lgp"]["file"] == "lgp.pt" and m["lgp"]["time_encoding"]["type"] == "sinusoidal"
    assert m["lgp"]["in_channels"] == m["tap_channels"]


def test_taps_shapes_follow_manifest(tiny_model):
    out, _, _ = tiny_model
    with open(os.path.join(out, "model.json")) as f:
        m = json.load(f)
    unet = torch.jit.load(os.path.join(out, "unet.pt"))
    with torch.no_grad():
        outs = unet(torch.randn(1, 4, 16, 16), torch.tensor([500]), torch.randn(1, 77, 32))
    assert tuple(outs[0].shape) == (1, 4, 16, 16)
    for t, x in zip(m["taps"], outs[1:]):
        assert tuple(x.shape) == (1, t["channels"], t["resolution"], t["resolution"])


@pytest.mark.parametrize("dtype,tdt", [("float16", torch.float16), ("bfloat16", torch.bfloat16)])
def test_half_precision_export(tmp_path, tiny_model, tiny_vocab, dtype, tdt):
    _, cfg, ckpt = tiny_model
    m = export.export(ckpt, str(tmp_path / dtype), vocab=tiny_vocab, dtype=dtype)
    assert m["dtype"] == dtype
    unet = torch.jit.load(str(tmp_path / dtype / "unet.pt"))
    assert all(p.dtype == tdt for p in unet.parameters())
    if dtype == "bfloat16":  # bf16 runs on this CPU; fp16 convolutions need a GPU
        with torch.no_grad():
            eps = unet(torch.randn(1, 4, 16, 16), torch.tensor([10]), torch.randn(1, 77, 32))[0]
        assert eps.dtype == torch.bfloat16 and torch.isfinite(eps.float()).all()


def test_fp16_checkpoint_loads_as_fp32(tmp_path, tiny_vocab):
    cfg = tiny_config(clip_tokenizer.Tokenizer.from_files(tiny_vocab).vocab_size)
    ck = str(tmp_path / "h.safetensors")
    sd = random_checkpoint(cfg, ck, seed=3, dtype=torch.float16)
    export.export(ck, str(tmp_path / "out"), vocab=tiny_vocab)
    text = torch.jit.load(str(tmp_path / "out" / "text_encoder.pt"))
    w = text.embeddings.token_embedding.weight
    assert w.dtype == torch.float32
    assert torch.equal(w, sd[sdmodels.PREFIX_TEXT + "embeddings.token_embedding.weight"].float())


def test_ckpt_format(tmp_path, tiny_model, tiny_vocab):
    _, cfg, ckpt = tiny_model
    sd = export.load_checkpoint(ckpt)[0]
    p = str(tmp_path / "m.ckpt")
    torch.save({"state_dict": dict(sd, betas=torch.zeros(1000))}, p)
    cfg_path = tmp_path / "cfg.json"
    cfg_path.write_text(json.dumps(cfg))
    m = export.export(p, str(tmp_path / "out"), vocab=tiny_vocab, config=str(cfg_path))
    assert m["tap_channels"] == 384


def test_errors(tmp_path, tiny_model, tiny_vocab):
    _, cfg, ckpt = tiny_model
    with pytest.raises(export.ExportError, match="no such file"):
        export.export(str(tmp_path / "missing.safetensors"), str(tmp_path / "o"), vocab=tiny_vocab)
    with pytest.raises(export.ExportError, match="--vocab"):
        export.export(ckpt, str(tmp_path / "o"))
    sd = export.load_checkpoint(ckpt)[0]
    broken = dict(sd)
    del broken[sdmodels.PREFIX_UNET + "out.2.weight"]
    p = str(tmp_path / "broken.safetensors")
    import safetensors_io
    safetensors_io.save(broken, p, {"sketchguide_config": json.dumps(cfg)})
    with pytest.raises(export.ExportError, match=r"U-Net: 1 missing key: model\.diffusion_model\.out\.2\.weight$"):
        export.export(p, str(tmp_path / "o"), vocab=tiny_vocab)
    wrong = dict(cfg, unet=dict(cfg["unet"], model_channels=64))
    safetensors_io.save(sd, p, {"sketchguide_config": json.dumps(wrong)})
    with pytest.raises(export.ExportError, match="do not fit"):
        export.export(p, str(tmp_path / "o"), vocab=tiny_vocab)
    safetensors_io.save({"x": torch.zeros(1)}, p)
    with pytest.raises(export.ExportError, match="configuration"):
        export.export(p, str(tmp_path / "o"), vocab=tiny_vocab)
