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


@pytest.fixture(scope="module")
def ddim_reference():
    """The model, the cases, the cfg and ddim's background variance at beta 1.6 on them (25 steps, 4 cases)."""
    model = ref.Model(BUNDLED)
    cfg = model.manifest.get("defaults", {}).get("cfg", 7.5)
    cs = background.cases(4, model.size)
    v_ddim, _ = background.measure(model, cs, "ddim", 1.6, 25, 0.5, cfg)
    return model, cs, cfg, float(np.mean(v_ddim))


@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "euler_a"])
def test_backgrounds_stay_clean_at_beta_3(ddim_reference, sampler):
    """At beta 3, every sampler's backgrounds are about as clean as ddim's at beta 1.6 (docs/guidance.md). Measured
    here at 25 steps on these 4 cases, against ddim beta 1.6's 36.9: with each push capped at PUSH_CAP x the next
    input's noise, ddim 35.5, ddpm 41.2, euler_a 39.3 (at most 1.12 x); without the cap ddim 79.5 (2.15 x) and
    ddpm 59.7 (1.62 x); before the move was normalised without the ancestral noise (50 steps, 10 cases) ddpm 1351
    and euler_a 1710, and before euler_a's move was measured in the U-Net's input coordinates euler_a 166. The
    bound is 1.5 x ddim's figure on the same cases here."""
    model, cs, cfg, v_ddim = ddim_reference
    bound = 1.5 * max(v_ddim, 10.0)
    v, _ = background.measure(model, cs, sampler, 3.0, 25, 0.5, cfg)
    assert np.mean(v) < bound, (sampler, np.mean(v), v_ddim)


def test_beta_beyond_the_cap_changes_nothing(ddim_reference):
    """The cap makes a large beta saturate rather than paint noise: at beta 12 and 40 every guided push is the cap
    (uncapped, ddim's pushes at beta 3 are 0.15 to 0.46 x the next input's noise, against a cap of 0.2), so both give
    the same image, bit for bit, and a clean background. Measured here on these 2 cases: 28.4 at both; without the
    cap 2077.9 at beta 12 and 1614.5 at beta 40 (coloured noise)."""
    model, cs, cfg, v_ddim = ddim_reference
    v12, im12 = background.measure(model, cs[:2], "ddim", 12.0, 25, 0.5, cfg)
    v40, im40 = background.measure(model, cs[:2], "ddim", 40.0, 25, 0.5, cfg)
    assert np.array_equal(im12, im40)
    assert np.mean(v12) < 1.5 * max(v_ddim, 10.0), (np.mean(v12), v_ddim)
