"""Tests of tools/sample.py, the reference sampler: schedule numbers, determinism, beta 0, sketch preprocessing."""

import os

import numpy as np
import pytest
import torch
from PIL import Image

import sample as ref


@pytest.fixture(scope="module")
def model(tiny_model):
    return ref.Model(tiny_model[0])


@pytest.fixture(scope="module")
def target(model):
    sk = np.zeros((32, 32), np.float32)
    sk[8:24, 8] = sk[8:24, 23] = sk[8, 8:24] = sk[23, 8:24] = 1
    return ref.edge_target(model, sk)


def test_schedule_constants(model):
    abar = model.abar
    assert abs(abar[0].item() - 0.99915) < 1e-6
    assert abs(abar[999].item() - 0.0046601) < 1e-7
    sigma = ((1 - abar) / abar).sqrt()
    assert abs(sigma[0].item() - 0.029167) < 1e-6 and abs(sigma[999].item() - 14.614641) < 1e-5


def test_ddim_timesteps():
    ts = ref.timesteps(1000, 50)
    assert ts[:3] == [981, 961, 941] and ts[-1] == 1 and len(ts) == 50
    assert ref.timesteps(1000, 4) == [751, 501, 251, 1]


def test_guided_step_count():
    assert ref.guided_steps(50, 0.5, None) == 25
    assert ref.guided_steps(50, 0.3, None) == 15
    assert ref.guided_steps(10, 0.25, None) == 3
    assert ref.guided_steps(50, 0.5, 7) == 7
    assert ref.guided_steps(50, 0.0, None) == 0


def test_deterministic_for_a_seed(model, target):
    a = ref.sample(model, "a red star", target, beta=1.6, steps=6, cfg=4, seed=11)
    b = ref.sample(model, "a red star", target, beta=1.6, steps=6, cfg=4, seed=11)
    c = ref.sample(model, "a red star", target, beta=1.6, steps=6, cfg=4, seed=12)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert np.array_equal(model.decode(a), model.decode(b))


def test_seeds_per_image(model, target):
    two = ref.sample(model, "a red star", target, steps=4, cfg=3, seed=5, n=2)
    one = ref.sample(model, "a red star", target, steps=4, cfg=3, seed=6)
    assert torch.allclose(two[1], one[0], atol=1e-5)


@pytest.mark.parametrize("sampler,eta", [("ddim", 0.0), ("ddim", 1.0), ("ddpm", 0.0)])
def test_beta_zero_is_exactly_unguided(model, target, sampler, eta):
    kw = dict(steps=6, cfg=5, seed=3, sampler=sampler, eta=eta)
    plain = ref.sample(model, "a blue circle", None, **kw)
    assert torch.equal(ref.sample(model, "a blue circle", target, beta=0.0, **kw), plain)
    assert torch.equal(ref.sample(model, "a blue circle", target, beta=1.6, stop=0.0, **kw), plain)
    guided = ref.sample(model, "a blue circle", target, beta=1.6, stop=0.5, **kw)
    assert not torch.equal(guided, plain)


def test_guidance_moves_by_beta_times_the_step(model, target):
    """Over one guided step the guidance move has norm beta x the denoising move (METHOD.md's alpha; without the
    push cap, which a 4-step schedule reaches)."""
    trace_u, trace_g = [], []
    ref.sample(model, "a star", None, steps=4, cfg=3, seed=9, trace=trace_u)
    ref.sample(model, "a star", target, beta=0.7, stop_step=1, steps=4, cfg=3, seed=9, trace=trace_g, push_cap=None)
    z0 = torch.randn([4, 16, 16], generator=torch.Generator().manual_seed(9))[None]
    step_move = (z0 - trace_u[0]).norm()
    guide_move = (trace_g[0] - trace_u[0]).norm()
    assert abs(guide_move.item() - 0.7 * step_move.item()) < 1e-3 * step_move.item()


@pytest.fixture(scope="module")
def bundled():
    from conftest import BUNDLED
    if not os.path.exists(os.path.join(BUNDLED, "model.json")):
        pytest.skip("no bundled model")
    m = ref.Model(BUNDLED)
    sk = np.zeros((64, 64), np.float32)
    sk[16:48, 16] = sk[16:48, 47] = sk[16, 16:48] = sk[47, 16:48] = 1
    return m, ref.edge_target(m, sk)


@pytest.mark.parametrize("sampler,eta", [("ddpm", 0.0), ("ddim", 1.0), ("euler_a", 0.0)])
def test_ancestral_guidance_moves_by_beta_times_the_mean_step(bundled, sampler, eta):
    """With fresh noise in the step, the guidance move is beta x the step's deterministic move (the step without
    its noise), not beta x a move that counts the noise (docs/guidance.md): over one guided step, the guided and
    unguided trajectories (same noise) differ by beta x || z_T - (z_1 - sigma noise) ||; for euler_a that move is
    the noise-free step's to s1, measured in the U-Net's input coordinates (z / sqrt(sigma^2 + 1)), and the push is
    scaled back to sigma-space by sqrt(s1^2 + 1)."""
    model, target = bundled  # a trained model: a random one's noise prediction can dwarf the step's noise
    kw = dict(steps=4, cfg=3, seed=9, sampler=sampler, eta=eta)
    trace_u, trace_g = [], []
    ref.sample(model, "a star", None, trace=trace_u, **kw)
    ref.sample(model, "a star", target, beta=0.7, stop_step=1, trace=trace_g, push_cap=None, **kw)
    gen = torch.Generator().manual_seed(9)
    z0 = torch.randn([4, 16, 16], generator=gen)[None]
    noise = torch.randn([4, 16, 16], generator=gen)[None]
    abar = model.abar
    if sampler == "euler_a":  # the mean goes to sigma_down: the move is measured as the noise-free step's, to s1
        s0, s1 = ref.t_to_sigma(abar, 999.0), ref.t_to_sigma(abar, 999.0 * 2 / 3)
        z0 = z0 * s0
        sigma = min(s1, (s1 * s1 * (s0 * s0 - s1 * s1) / (s0 * s0)) ** 0.5)
        ratio = (s0 - s1) / (s0 - (s1 * s1 - sigma * sigma) ** 0.5)
        mean = trace_u[0] - sigma * noise
        ode = z0 + (mean - z0) * ratio
        want = 0.7 * (z0 / (s0 * s0 + 1) ** 0.5 - ode / (s1 * s1 + 1) ** 0.5).norm().item() * (s1 * s1 + 1) ** 0.5
        sigma_space = 0.7 * (z0 - ode).norm().item()  # the rule measured in sigma-space: several times larger
        assert sigma_space > 1.5 * want, (sigma_space, want)
    else:
        a_t, a_p = abar[751].item(), abar[501].item()
        sigma = ((1 - a_p) / (1 - a_t) * (1 - a_t / a_p)) ** 0.5 * (eta if sampler == "ddim" else 1.0)
        want = 0.7 * (z0 - (trace_u[0] - sigma * noise)).norm().item()
    noisy_move = (z0 - trace_u[0]).norm().item()
    guide_move = (trace_g[0] - trace_u[0]).norm().item()
    assert abs(0.7 * noisy_move - want) > 0.05 * want  # METHOD.md's rule, counting the noise, differs here
    assert abs(guide_move - want) < 2e-3 * want, (guide_move, want, 0.7 * noisy_move)


@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "euler_a"])
def test_push_is_capped(bundled, sampler):
    """With the cap (docs/guidance.md), the push of a 4-step schedule's guided step, which beta 0.7 would make
    larger, is PUSH_CAP x the noise in the next step's U-Net input, root mean square per value: 0.2 sqrt(1 - abar)
    at timestep 501 for ddim and ddpm; for euler_a 0.2 s1 / sqrt(s1^2 + 1) in the U-Net's coordinates, so
    0.2 s1 once scaled back to sigma-space. Without the cap it is beta x the step's move (the tests above)."""
    model, target = bundled
    kw = dict(steps=4, cfg=3, seed=9, sampler=sampler)
    trace_u, trace_g, trace_n = [], [], []
    ref.sample(model, "a star", None, trace=trace_u, **kw)
    ref.sample(model, "a star", target, beta=0.7, stop_step=1, trace=trace_g, **kw)
    ref.sample(model, "a star", target, beta=0.7, stop_step=1, trace=trace_n, push_cap=None, **kw)
    root_len = trace_u[0][0].numel() ** 0.5
    if sampler == "euler_a":
        cap = ref.PUSH_CAP * ref.t_to_sigma(model.abar, 999.0 * 2 / 3) * root_len
    else:
        cap = ref.PUSH_CAP * (1 - model.abar[501].item()) ** 0.5 * root_len
    capped = (trace_g[0] - trace_u[0]).norm().item()
    uncapped = (trace_n[0] - trace_u[0]).norm().item()
    assert uncapped > 1.5 * cap, (uncapped, cap)  # the cap binds here
    assert abs(capped - cap) < 2e-3 * cap, (capped, cap, uncapped)


def test_ddpm_and_eta_add_noise(model):
    a = ref.sample(model, "x", None, steps=4, cfg=1, seed=1, sampler="ddim", eta=0.0)
    b = ref.sample(model, "x", None, steps=4, cfg=1, seed=1, sampler="ddim", eta=1.0)
    c = ref.sample(model, "x", None, steps=4, cfg=1, seed=1, sampler="ddpm")
    assert not torch.equal(a, b) and torch.isfinite(c).all()
    with pytest.raises(ValueError):
        ref.sample(model, "x", None, steps=4, sampler="euler")


def test_load_sketch(tmp_path):
    im = np.full((64, 64), 255, np.uint8)
    im[10:50, 30:33] = 0  # dark stroke on white
    Image.fromarray(im).save(tmp_path / "dark.png")
    s = ref.load_sketch(str(tmp_path / "dark.png"), 32)
    # thresholded at 64, then every 2 x 2 box with a stroke pixel is a stroke: columns 15 and 16 of rows 5 to 24
    assert s.shape == (32, 32) and s[5:25, 15:17].all() and s.sum() == 40
    # not inverted, the white page is one filled region: as drawn (filled false) it is all strokes, else its outline
    assert ref.load_sketch(str(tmp_path / "dark.png"), 32, invert="false", filled="false").sum() > 900
    assert ref.load_sketch(str(tmp_path / "dark.png"), 32, invert="false").sum() < 300
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[20:40, 20:22] = (0, 0, 0, 255)  # black stroke on a transparent background: flattened onto white
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    a = ref.load_sketch(str(tmp_path / "alpha.png"), 64)
    assert a[25, 20] == 1 and a.sum() == 40
    Image.fromarray(np.stack([255 - im] * 3, -1)).save(tmp_path / "light.jpg", quality=95)
    assert abs(ref.load_sketch(str(tmp_path / "light.jpg"), 32).sum() - s.sum()) <= 4


def test_cli_writes_png(tiny_model, tmp_path):
    import subprocess
    import sys
    sk = np.zeros((32, 32), np.uint8)
    sk[5:25, 5] = 255
    Image.fromarray(sk).save(tmp_path / "s.png")
    out = tmp_path / "o.png"
    subprocess.run([sys.executable, ref.__file__, tiny_model[0], "--prompt", "a red star", "--sketch",
                    str(tmp_path / "s.png"), "--steps", "3", "--out", str(out), "--seed", "4"], check=True)
    im = Image.open(out)
    assert im.size == (32, 32) and im.mode == "RGB"
