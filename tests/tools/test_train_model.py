"""Tests of tools/train_model.py: continuing from an exported model restores exactly its checkpoint's weights."""
import os

import torch

import export
import sdmodels
import train_model


def test_init_from_exported_model(tiny_model, tmp_path):
    out, cfg, ckpt = tiny_model
    work = str(tmp_path)
    train_model.init_from(work, cfg, out)
    u, v, t = sdmodels.split_checkpoint(export.load_checkpoint(ckpt)[0])
    vae = torch.load(os.path.join(work, "vae.pt"))
    ck = torch.load(os.path.join(work, "unet.pt"))
    assert set(vae) == set(v) and all(torch.equal(vae[k], v[k]) for k in v)
    assert all(torch.equal(ck["unet"][k], u[k]) for k in u)
    assert all(torch.equal(ck["text"][k], t[k]) for k in t)
    assert ck["opt"] is None and ck["step"] == 0


def test_init_from_keeps_the_starting_text_encoder_as_teacher(tiny_model, tmp_path):
    out, cfg, ckpt = tiny_model
    train_model.init_from(str(tmp_path), cfg, out)
    t = sdmodels.split_checkpoint(export.load_checkpoint(ckpt)[0])[2]
    teacher = torch.load(os.path.join(str(tmp_path), "teacher_text.pt"))
    assert set(teacher) == set(t) and all(torch.equal(teacher[k], t[k]) for k in t)


def _data():
    import numpy as np
    import shapes
    params = [shapes.natural_params(i) for i in range(64)]
    return {"captions": np.array([shapes.caption(p) for p in params]),
            "shape": np.array([shapes.SHAPES.index(p["shape"]) for p in params]),
            "fg": np.array([shapes.COLOUR_NAMES.index(p["fg"]) for p in params]),
            "bg": np.array([shapes.COLOUR_NAMES.index(p["bg"]) for p in params]),
            "texture": np.array([shapes.TEXTURES.index(p["texture"]) for p in params])}, params


def test_batch_captions_are_natural_and_name_what_is_drawn():
    import re
    import numpy as np
    data, params = _data()
    rng = np.random.default_rng(0)
    idx = list(range(64)) * 4
    caps = train_model.batch_captions(data, idx, rng)
    assert len(caps) == len(idx)
    template = sum(c == str(data["captions"][i]) for c, i in zip(caps, idx))
    assert 5 <= template <= 60  # about a tenth are the data set's template caption
    for c, i in zip(caps, idx):
        w = set(re.findall(r"[a-z]+", c.lower()))
        p = params[i]
        assert {p["shape"], p["fg"], p["bg"]} <= w, c
        if p["texture"] != "plain":
            assert p["texture"] in w, c
    # an older data set (no texture labels) trains on its template captions
    old = {k: v for k, v in data.items() if k != "texture"}
    assert train_model.batch_captions(old, [3, 5], rng) == [str(data["captions"][3]), str(data["captions"][5])]


def test_distill_loss_reads_only_positions_after_both_captions():
    eot = 9
    ids_s = torch.tensor([[8, 1, 2, 3, 4, eot, eot, eot]])
    ids_t = torch.tensor([[8, 5, 6, eot, eot, eot, eot, eot]])
    a = torch.randn(1, 8, 4)
    b = a.clone()
    b[:, :5] += 1.0  # content positions differ: not compared
    assert train_model.distill_loss(a, b, ids_s, ids_t, eot).item() == 0.0
    b[:, 6] += 2.0
    assert abs(train_model.distill_loss(a, b, ids_s, ids_t, eot).item() - 4.0 * 4 / (3 * 4)) < 1e-6


def test_run_start_is_kept_across_resumes(tmp_path):
    path = str(tmp_path / "unet.pt")
    assert train_model.run_start(path) == 0  # from nothing
    torch.save({"step": 700, "opt": None}, path)
    assert train_model.run_start(path) == 700  # seeded by init_from: the schedule starts here
    torch.save({"step": 900, "opt": {"state": {}}}, path)
    assert train_model.run_start(path) == 700  # resumed: still the recorded start
    os.remove(str(tmp_path / "start_step"))
    assert train_model.run_start(path) == 0  # a run trained from nothing, resumed
