"""Tests of tools/lgp.py and tools/train_lgp.py: the predictor's layout, TorchScript parity, and training."""
import json
import os
import subprocess
import sys

import torch

import lgp as lgpmod
import sample as ref


def test_features_and_shapes():
    taps = [torch.randn(2, 3, 4, 4), torch.randn(2, 5, 8, 8), torch.randn(2, 2, 2, 2)]
    f = lgpmod.tap_features(taps, [8, 8])
    assert f.shape == (2, 10, 8, 8)
    assert torch.equal(f[:, 3:8], taps[1])
    net = lgpmod.LGP(10, 8).eval()
    out = net(taps, torch.tensor([10, 900]))
    assert out.shape == (2, 4, 8, 8)
    # per pixel: changing one pixel's features changes only that pixel's prediction
    taps2 = [t.clone() for t in taps]
    taps2[1][:, :, 3, 5] += 1.0
    d = (net(taps2, torch.tensor([10, 900])) - out).abs().sum(dim=(0, 1))
    assert d[3, 5] > 0 and d.sum() == d[3, 5]


def test_script_matches_eager(tmp_path):
    net = lgpmod.LGP(6, 4, time_dim=8).eval()
    p = str(tmp_path / "l.pt")
    man = {"taps": [{"name": "a"}]}
    lgpmod.save(net, p, lgpmod.describe(net, man))
    files = {"lgp.json": ""}
    s = torch.jit.load(p, _extra_files=files)
    taps = [torch.randn(1, 6, 4, 4)]
    assert torch.equal(s(taps, torch.tensor([3])), net(taps, torch.tensor([3])))
    assert json.loads(files["lgp.json"])["time_encoding"]["dim"] == 8


def test_trainer_learns_and_updates_manifest(tiny_model, tmp_path):
    import shutil
    model_dir = str(tmp_path / "m")
    shutil.copytree(tiny_model[0], model_dir)
    tool = os.path.join(os.path.dirname(lgpmod.__file__), "train_lgp.py")
    r = subprocess.run([sys.executable, tool, model_dir, "--shapes", "64", "--held-out", "32", "--steps", "60",
                        "--batch", "8", "--lr", "1e-3"], check=True, capture_output=True, text=True)
    losses = [float(l.split("loss ")[1].split()[0]) for l in r.stdout.splitlines() if l.startswith("step ")]
    assert len(losses) == 1
    with open(os.path.join(model_dir, "model.json")) as f:
        m = json.load(f)
    held = m["lgp"]["trained"]["held_out_loss"]
    assert set(held) == {"50", "250", "500", "750", "950"}
    model = ref.Model(model_dir)
    assert model.lgp is not None and not model.lgp.training
    # resuming a finished run does no more steps; a longer run continues from the checkpoint
    r2 = subprocess.run([sys.executable, tool, model_dir, "--shapes", "64", "--held-out", "32", "--steps", "100",
                         "--batch", "8", "--lr", "1e-3"], check=True, capture_output=True, text=True)
    assert "resumed at step 60" in r2.stdout and "step 100/100" in r2.stdout
