"""Tests of the bundled model (models/shapes): size targets, manifest, golden output for a fixed seed, and guidance
that follows a sketch."""
import json
import os

import numpy as np
import pytest
from PIL import Image

import edges
import sample as ref
import shapes
from conftest import BUNDLED

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden")
pytestmark = pytest.mark.skipif(not os.path.exists(os.path.join(BUNDLED, "model.json")), reason="no bundled model")


@pytest.fixture(scope="module")
def model():
    return ref.Model(BUNDLED)


def test_size_targets():
    total = sum(os.path.getsize(os.path.join(BUNDLED, f)) for f in os.listdir(BUNDLED))
    assert total < 25 * 1024 * 1024
    with open(os.path.join(BUNDLED, "model.json")) as f:
        m = json.load(f)
    assert m["image_size"] >= 64 and m["latent_size"] >= 16
    assert m["lgp"] and os.path.exists(os.path.join(BUNDLED, m["lgp"]["file"]))
    assert m["torch_version"].startswith("1.13") and m["dtype"] == "float32"
    assert m["tap_channels"] == sum(t["channels"] for t in m["taps"]) == m["lgp"]["in_channels"]


def golden_case(model):
    # unguided: a guided trajectory is chaotic (another CPU's kernels move its pixels by several levels), an
    # unguided one is not (its latents agree to 1e-5 across CPUs), so only an unguided image can be stored
    z = ref.sample(model, "a yellow star on a plain blue background", None, steps=20,
                   cfg=model.manifest.get("defaults", {}).get("cfg", 7.5), seed=1234)
    return model.decode(z)[0]


def test_golden_image(model):
    """A fixed seed on the bundled model reproduces the stored image (unguided) to within one level per pixel."""
    img = golden_case(model)
    path = os.path.join(GOLDEN, "shapes_star_seed1234.png")
    if os.environ.get("SKETCHGUIDE_REGEN_GOLDEN"):
        os.makedirs(GOLDEN, exist_ok=True)
        Image.fromarray(img).save(path)
    want = np.asarray(Image.open(path).convert("RGB"))
    assert np.abs(img.astype(int) - want.astype(int)).max() <= 1


def test_guidance_follows_sketches(model):
    """Guided edge F1 beats unguided on a fixed set of out-of-domain sketches placed away from the prompt's shape,
    each shape twice (12 cases). Measured (both computed here; the guided images differ by up to 17 levels between
    kernels): with the first 6 alone, f_u 0.2958, f_g 0.4574 with AVX-512 OpenBLAS/oneDNN kernels, 0.4586 with
    AVX2 ones (OPENBLAS_CORETYPE=Haswell ONEDNN_MAX_CPU_ISA=AVX2) on an earlier model; on another AVX-512 machine
    0.2684 / 0.4367 for d88d949's model and 0.2923 / 0.4521 for the committed one (margins 0.168 and 0.160, 4 of the
    6 on checkered or striped backgrounds). Over the 12: 0.2892 / 0.5289 and 0.3139 / 0.5571 (margins 0.240 and
    0.243): 0.09 over the bar of 0.15, 75 times the 0.0012 seen between kernels on the first 6 (the spread over
    the 12 was not measured on an AVX2 machine)."""
    cases = shapes.guidance_cases(model.size)
    prompts = [c[0] for c in cases]
    sk = np.stack([c[1] for c in cases])
    target = ref.edge_target(model, sk / 255.0)
    kw = dict(steps=25, cfg=model.manifest.get("defaults", {}).get("cfg", 7.5), seeds=list(range(len(cases))))
    gu = model.decode(ref.sample(model, prompts, None, **kw))
    gg = model.decode(ref.sample(model, prompts, target, beta=1.6, stop=0.5, **kw))
    f_u = np.mean([edges.f1(edges.detect(im), s) for im, s in zip(gu, sk)])
    f_g = np.mean([edges.f1(edges.detect(im), s) for im, s in zip(gg, sk)])
    assert f_g > f_u + 0.15, (f_u, f_g)


@pytest.mark.parametrize("group", ["train", "held_out"])
def test_natural_prompts_adherence(model, group):
    """Captions as people write them ("a blue background with a red star", "A Red Star, black background.", no
    texture word for a plain background), from the training templates and from held-out templates training never
    saw, 40 prompts at 20 steps, read by tools/evaluate.py's classifier: both colours right in at least 80% and the
    shape from the text alone in at least 72.5% (29 of 40; chance is 1/6). Measured here (train / held out), both
    colours and shape, by the classifier of 1187de4 and before: the model before any training on natural captions
    0.025 / 0.025 and 0.225 / 0.125; with 07c3097's text encoder (500 steps through the frozen U-Net) 0.175 / 0.15
    and 0.35 / 0.425; with 86af8df's (2000 steps against the original encoder's reading of the template caption,
    train_model.py --text-teach) 1.0 / 0.975 and 0.7 / 0.6; d88d949's model (U-Net and text encoder
    2000 more steps) 0.975 / 0.975 and 0.825 / 0.825. By the classifier trained with decoder-like degradations
    (evaluate._augment): the model before natural captions 0.05 / 0.05 and 0.175 / 0.15, d88d949's 1.0 / 0.975 and
    0.825 / 0.80, the committed model (2000 more U-Net steps, train_steps 9500) 1.0 / 0.975 and 0.925 / 0.925."""
    import evaluate
    res = evaluate.adherence(evaluate.Engine(model), evaluate.load_classifier(), group, 40, model.size, 0.0, 0.0,
                             20, model.manifest.get("defaults", {}).get("cfg", 7.5), guided=False,
                             first_seed=evaluate.EVAL_SEED + 700_000)
    print(group, res["unguided"])
    assert res["unguided"]["fg_and_bg"] >= 0.8, res
    assert res["unguided"]["shape"] >= 0.725, res
