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
