"""Tests of tools/export.py on untrusted checkpoints: no pickle runs code, Lightning files load without
pytorch_lightning, the format is told by content, key conventions, errors that name checkpoint keys, other families
refused."""
import json
import os
import pickle
import re
import sys
import types

import pytest
import torch

import export
import safetensors_io
import sdmodels
from conftest import random_checkpoint, tiny_config

FORMATS = [  # torch.save variants: the zip format (protocols 2 and 4) and the legacy format
    pytest.param({}, id="zip"), pytest.param({"pickle_protocol": 4}, id="zip-protocol4"),
    pytest.param({"_use_new_zipfile_serialization": False}, id="legacy")]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(config, state dict, safetensors path, config JSON path) of a random-weight tiny model."""
    work = tmp_path_factory.mktemp("safety")
    cfg = tiny_config(64)
    ckpt = str(work / "tiny.safetensors")
    sd = random_checkpoint(cfg, ckpt, seed=5)
    cfg_path = str(work / "cfg.json")
    with open(cfg_path, "w") as f:
        json.dump(cfg, f)
    return cfg, sd, ckpt, cfg_path


def touch_marker(path):
    """What a hostile pickle calls: an importable function with a visible effect."""
    with open(path, "w") as f:
        f.write("ran")
    return 0


class CallsOsSystem:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, ("touch '%s'" % self.marker,)


class CallsFunction:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return touch_marker, (self.marker,)


def save_ckpt(obj, path, **kw):
    torch.save(obj, path, **kw)
    return path


def error_of(fn, *args, **kw) -> str:
    with pytest.raises(export.ExportError) as e:
        fn(*args, **kw)
    return str(e.value)


@pytest.mark.parametrize("kw", FORMATS)
def test_pickle_calling_os_system_is_refused(tmp_path, tiny, kw):
    _, sd, _, _ = tiny
    marker = tmp_path / "marker"
    p = save_ckpt({"state_dict": sd, "x": CallsOsSystem(str(marker))}, str(tmp_path / "evil.ckpt"), **kw)
    msg = error_of(export.load_checkpoint, p)
    assert "refused" in msg and "posix.system" in msg and "nothing in it was run" in msg
    assert not marker.exists()


def test_bare_pickle_calling_os_system_is_refused(tmp_path):
    marker = tmp_path / "marker"
    p = str(tmp_path / "evil.pt")
    with open(p, "wb") as f:
        pickle.dump(CallsOsSystem(str(marker)), f, protocol=2)
    assert "posix.system" in error_of(export.load_checkpoint, p)
    assert not marker.exists()


@pytest.mark.parametrize("kw", FORMATS)
def test_pickled_call_of_another_function_is_not_run(tmp_path, tiny, kw):
    """A call of an importable function outside the allow list becomes an inert placeholder and is named in a
    note; the state dict still loads."""
    _, sd, _, _ = tiny
    marker = tmp_path / "marker"
    p = save_ckpt({"state_dict": sd, "x": [CallsFunction(str(marker))]}, str(tmp_path / "evil.ckpt"), **kw)
    notes = []
    got, _ = export.load_checkpoint(p, notes)
    assert not marker.exists()
    assert set(got) == set(sd) and all(torch.equal(got[k], sd[k]) for k in sd)
    assert len(notes) == 1 and "%s.touch_marker" % touch_marker.__module__ in notes[0]
    assert "nothing in them was run" in notes[0]
    # the same call as the whole file: no state dict, and still nothing run
    with open(p, "wb") as f:
        pickle.dump(CallsFunction(str(marker)), f, protocol=2)
    assert "not a PyTorch checkpoint" in error_of(export.load_checkpoint, p)
    assert not marker.exists()


def fake_lightning():
    """Classes as pytorch_lightning pickles them into a checkpoint, in modules that exist only while saving."""
    names = ["pytorch_lightning", "pytorch_lightning.callbacks", "pytorch_lightning.callbacks.model_checkpoint",
             "pytorch_lightning.utilities", "pytorch_lightning.utilities.parsing"]
    mods = {n: types.ModuleType(n) for n in names}

    class ModelCheckpoint:
        pass

    class AttributeDict(dict):
        pass

    for cls, mod in ((ModelCheckpoint, names[2]), (AttributeDict, names[4])):
        cls.__module__, cls.__qualname__ = mod, cls.__name__
        setattr(mods[mod], cls.__name__, cls)
    return mods, ModelCheckpoint, AttributeDict


@pytest.mark.parametrize("kw", FORMATS)
def test_lightning_checkpoint_loads_without_pytorch_lightning(tmp_path, tiny, kw):
    cfg, sd, _, cfg_path = tiny
    mods, ModelCheckpoint, AttributeDict = fake_lightning()
    hp = AttributeDict(base_learning_rate=1e-4, monitor="val/loss")
    half = {k: v.half() for k, v in sd.items()}
    ck = {"epoch": 6, "global_step": 470000, "pytorch-lightning_version": "1.4.2", "state_dict": half,
          "callbacks": {ModelCheckpoint: {"monitor": None, "best_model_score": torch.tensor(0.25),
                                          "best_model_path": "logs/last.ckpt"}},
          "optimizer_states": [{"state": {0: {"exp_avg": torch.ones(3)}}, "param_groups": [{"lr": 1e-4}]}],
          "lr_schedulers": [{"last_epoch": 3, "base_lrs": [1e-4]}], "hparams": hp}
    p = str(tmp_path / "lightning.ckpt")
    sys.modules.update(mods)
    try:
        torch.save(ck, p, **kw)
    finally:
        for n in mods:
            del sys.modules[n]
    notes = []
    got, _ = export.load_checkpoint(p, notes)
    assert "pytorch_lightning" not in sys.modules
    assert set(got) == set(sd)
    assert all(got[k].dtype == torch.float16 and torch.equal(got[k], half[k]) for k in sd)
    assert len(notes) == 1
    assert "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint" in notes[0]
    assert "pytorch_lightning.utilities.parsing.AttributeDict" in notes[0]
    _, _, unet, vae, text = export.load_models(p, cfg_path)
    w = unet.state_dict()["out.2.weight"]
    assert torch.equal(w, half[sdmodels.PREFIX_UNET + "out.2.weight"].float())


def test_format_is_told_by_content(tmp_path, tiny):
    _, sd, ckpt, _ = tiny
    named_ckpt = str(tmp_path / "really-safetensors.ckpt")
    with open(ckpt, "rb") as a, open(named_ckpt, "wb") as b:
        b.write(a.read())
    got, meta = export.load_checkpoint(named_ckpt)
    assert set(got) == set(sd) and all(torch.equal(got[k], sd[k]) for k in sd) and "sketchguide_config" in meta
    named_st = save_ckpt({"state_dict": sd}, str(tmp_path / "really-pickle.safetensors"))
    got, _ = export.load_checkpoint(named_st)
    assert set(got) == set(sd) and all(torch.equal(got[k], sd[k]) for k in sd)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"GIF89a" + bytes(100))
    assert "neither a safetensors file nor a PyTorch checkpoint" in error_of(export.load_checkpoint, str(junk))


def test_torchscript_archive_is_refused(tmp_path):
    p = str(tmp_path / "model.ckpt")
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), p)
    assert "TorchScript archive" in error_of(export.load_checkpoint, p)


def short_text_keys(sd: dict) -> dict:
    """The checkpoint as older transformers versions saved it: text-encoder keys without `text_model.`."""
    return {(k.replace(sdmodels.PREFIX_TEXT, export.TEXT_SHORT) if k.startswith(sdmodels.PREFIX_TEXT) else k): v
            for k, v in sd.items()}


def test_text_encoder_keys_without_text_model(tmp_path, tiny):
    cfg, sd, _, cfg_path = tiny
    short = short_text_keys(sd)
    key = "embeddings.token_embedding.weight"
    assert export.TEXT_SHORT + key in short and sdmodels.PREFIX_TEXT + key not in short
    p = str(tmp_path / "short.safetensors")
    safetensors_io.save(short, p)
    _, _, _, _, text = export.load_models(p, cfg_path)
    ts = text.state_dict()
    assert all(torch.equal(ts[k[len(sdmodels.PREFIX_TEXT):]], v) for k, v in sd.items()
               if k.startswith(sdmodels.PREFIX_TEXT))
    # a key missing from such a file is named as that file would name it
    gone = export.TEXT_SHORT + "final_layer_norm.weight"
    safetensors_io.save({k: v for k, v in short.items() if k != gone}, p)
    msg = error_of(export.load_models, p, cfg_path)
    assert re.search(r"text encoder: 1 missing key: %s$" % re.escape(gone), msg, re.M), msg
    # both conventions at once: refused, naming both
    safetensors_io.save(dict(sd, **{gone: sd[sdmodels.PREFIX_TEXT + "final_layer_norm.weight"]}), p)
    msg = error_of(export.load_models, p, cfg_path)
    assert gone in msg and sdmodels.PREFIX_TEXT + "final_layer_norm.weight" in msg


def test_missing_decoder_key_named_as_in_checkpoint(tmp_path, tiny):
    """The decoder holds its levels in reverse order internally; the error names the checkpoint's key."""
    _, sd, _, cfg_path = tiny
    gone = sdmodels.PREFIX_VAE + "decoder.up.0.block.0.conv1.weight"
    assert gone in sd
    p = str(tmp_path / "broken.safetensors")
    safetensors_io.save({k: v for k, v in sd.items() if k != gone}, p)
    msg = error_of(export.load_models, p, cfg_path)
    assert re.search(r"^  VAE: 1 missing key: %s$" % re.escape(gone), msg, re.M), msg
    assert "up.1" not in msg


def test_every_mismatch_named_with_checkpoint_names(tmp_path, tiny):
    _, sd, _, cfg_path = tiny
    bad = dict(sd)
    u = sdmodels.PREFIX_UNET + "input_blocks.0.0.weight"
    d = sdmodels.PREFIX_VAE + "decoder.up.0.block.0.conv1.weight"
    t = sdmodels.PREFIX_TEXT + "embeddings.token_embedding.weight"
    extra = sdmodels.PREFIX_UNET + "input_blocks.0.1.weight"
    bad[u] = torch.zeros(32, 5, 3, 3)
    bad[d] = torch.zeros(list(sd[d].shape)[:-1] + [1])
    bad[t] = torch.zeros(65, 32)
    bad[extra] = torch.zeros(1)
    del bad[sdmodels.PREFIX_UNET + "out.2.bias"]
    p = str(tmp_path / "bad.safetensors")
    safetensors_io.save(bad, p)
    msg = error_of(export.load_models, p, cfg_path)
    lines = msg.splitlines()
    assert lines[0] == "the checkpoint's weights do not fit the configuration:"
    assert "  U-Net: 1 missing key: %sout.2.bias" % sdmodels.PREFIX_UNET in lines
    assert "  U-Net: 1 size mismatch: %s is [32, 5, 3, 3] in the checkpoint, [32, 4, 3, 3] in the configuration" % u \
        in lines
    assert "  U-Net: 1 unexpected key: %s" % extra in lines
    assert "  VAE: 1 size mismatch: %s is %s in the checkpoint, %s in the configuration" % (
        d, list(bad[d].shape), list(sd[d].shape)) in lines
    assert "  text encoder: 1 size mismatch: %s is [65, 32] in the checkpoint, [64, 32] in the configuration" % t \
        in lines
    assert len(lines) == 6


def family_file(tmp_path, tensors: dict) -> str:
    """A file with the few tensors that tell a family apart, at their real shapes (float16 zeros)."""
    p = str(tmp_path / "family.safetensors")
    safetensors_io.save({k: torch.zeros(s, dtype=torch.float16) for k, s in tensors.items()}, p)
    return p


CONV_IN = sdmodels.PREFIX_UNET + "input_blocks.0.0.weight"
TO_K = sdmodels.PREFIX_UNET + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"


def test_sd2_checkpoint_refused_with_what_was_found(tmp_path):
    p = family_file(tmp_path, {CONV_IN: (320, 4, 3, 3), TO_K: (320, 1024),
                               "cond_stage_model.model.token_embedding.weight": (8, 1024)})
    msg = error_of(export.load_models, p)
    assert msg.startswith("refused: an SD 2.x checkpoint: U-Net cross-attention context 1024 wide (SD 1.x: 768)")
    assert "OpenCLIP" in msg


def test_inpainting_checkpoint_refused_with_what_was_found(tmp_path):
    p = family_file(tmp_path, {CONV_IN: (320, 9, 3, 3), TO_K: (320, 768)})
    msg = error_of(export.load_models, p)
    assert msg.startswith("refused: an inpainting checkpoint: U-Net input 9 channels")


def test_family_named_when_config_is_given(tmp_path, tiny):
    """With --config the weights are checked against it, and the error also says what the file is."""
    _, _, _, cfg_path = tiny
    p = family_file(tmp_path, {CONV_IN: (320, 9, 3, 3), TO_K: (320, 768)})
    msg = error_of(export.load_models, p, cfg_path)
    assert "(the file is an inpainting checkpoint" in msg
    assert "%s is [320, 9, 3, 3] in the checkpoint, [32, 4, 3, 3] in the configuration" % CONV_IN in msg


def test_sd1_layout_recognised(tmp_path):
    assert export.checkpoint_family({CONV_IN: torch.zeros(320, 4, 3, 3), TO_K: torch.zeros(320, 768)})[0] is None
    assert export.checkpoint_family({"conditioner.embedders.0.transformer.x": torch.zeros(1)})[0] == "sdxl"
