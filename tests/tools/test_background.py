"""Tests of tools/background.py on the bundled model: with ddpm and euler_a at beta 3, guided backgrounds stay about as
clean as ddim's at beta 1.6 (the guidance move is normalised by the step's deterministic move, docs/guidance.md).
Every figure is computed here, on the machine that runs the test."""
import os

import numpy as np
import pytest

import background
import sample as ref
from conftest import BUNDLED

pytestmark = pytest.mark.skipif(not os.path.exists(os.path.join(BUNDLED, "model.json")), reason="no bundled model")


def test_variance_counts_background_pixels_only():
    img = np.zeros((64, 64, 3), np.uint8)
    img[:] = (35, 80, 215)
    mask = np.zeros((64, 64), bool)
    mask[:, 32:] = True
    img[:, :32] = (215, 35, 35)  # the shape's side: not background
    fg, bg = np.array([215.0, 35, 35]), np.array([35.0, 80, 215])
    assert background.variance(img, mask, fg, bg) == 0.0
    rng = np.random.default_rng(0)
    img[:, 32:] = np.clip(np.array([35, 80, 215]) + rng.normal(0, 20, (64, 32, 3)), 0, 255).astype(np.uint8)
    assert 200 < background.variance(img, mask, fg, bg) < 500


@pytest.mark.parametrize("sampler", ["ddpm", "euler_a"])
def test_ancestral_samplers_keep_backgrounds_clean(sampler):
    """Measured at 50 steps, 10 cases (docs/guidance.md): ddim beta 1.6 34; before the fix ddpm beta 3 1351 and
    euler_a beta 3 1710 (40 to 50 times ddim's), after it 30 and about as low for euler_a. Here, at 25 steps on 4
    cases: ddim beta 1.6 48; euler_a beta 3 166 (3.5 x) while its move was measured in sigma-space, 31 since it is
    measured in the U-Net's input coordinates. The bound, 3 x ddim's figure on the same cases here, is far from
    both."""
    model = ref.Model(BUNDLED)
    cfg = model.manifest.get("defaults", {}).get("cfg", 7.5)
    cs = background.cases(4, model.size)
    v_ddim, _ = background.measure(model, cs, "ddim", 1.6, 25, 0.5, cfg)
    bound = 3 * max(np.mean(v_ddim), 10.0)
    v, _ = background.measure(model, cs, sampler, 3.0, 25, 0.5, cfg)
    assert np.mean(v) < bound, (sampler, np.mean(v), np.mean(v_ddim))
