"""The command line through the real binary: every subcommand's help and errors, tokenize against the Python
tokenizer and CLIP's vectors, info, edges against tools/edges.py, and generate: the golden image, beta 0 equal to
unguided, parity with the Python reference sampler, PNG text chunks, several seeds, and edge fidelity."""
import json
import os

import numpy as np
import pytest
from PIL import Image

import clip_tokenizer
import edges
import sample as ref
import shapes
from conftest import BUNDLED, ROOT, SHARED

COMMANDS = ["generate", "train-lgp", "edges", "info", "tokenize"]
GOLDEN = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools", "golden")


@pytest.fixture(scope="module")
def model():
    return ref.Model(BUNDLED)


def png(path):
    return np.asarray(Image.open(path).convert("RGB"))


# --- help and argument errors ---------------------------------------------------------------------------------

def test_help(sg):
    r = sg("--help")
    assert r.returncode == 0 and all(c in r.stdout for c in COMMANDS)
    for c in COMMANDS:
        r = sg(c, "--help")
        assert r.returncode == 0 and r.stdout.startswith("usage: sketchguide " + c), c


def test_unknown_command_and_options(sg):
    r = sg("paint")
    assert r.returncode == 2 and "unknown command 'paint'" in r.stderr
    for c in COMMANDS:
        r = sg(c, "--frobnicate", "1")
        assert r.returncode == 2 and "unknown option '--frobnicate'" in r.stderr, (c, r.stderr)


@pytest.mark.parametrize("args,needle", [
    (["--prompt", "x", "--beta", "abc"], "--beta: 'abc' is not a number"),
    (["--prompt", "x", "--beta", "-1"], "--beta: -1 is out of range"),
    (["--prompt", "x", "--steps", "0"], "--steps: 0 is out of range"),
    (["--prompt", "x", "--steps", "2000"], "--steps"),
    (["--prompt", "x", "--images", "65"], "--images: 65 is out of range"),
    (["--prompt", "x", "--sampler", "plms"], "--sampler: 'plms'"),
    (["--prompt", "x", "--invert", "maybe"], "--invert: 'maybe'"),
    (["--prompt", "x", "--seed", "-5"], "--seed: -5 is out of range"),
    (["--prompt", "x", "--seeds", "1,x"], "--seeds: 'x' is not an integer"),
    (["--prompt", "x", "--stop", "0.5", "--stop-step", "3"], "--stop and --stop-step"),
    (["--prompt", "x", "--stop-step", "60", "--sketch", "docs/examples/star.png"], "--stop-step"),
    (["--prompt"], "--prompt needs a value"),
    ([], "--prompt is required"),
    (["--prompt", "x", "--sketch", "/nonexistent.png"], "--sketch /nonexistent.png"),
    (["--prompt", "x", "--model", "/nonexistent"], "--model /nonexistent"),
    (["--prompt", "x", "--device", "tpu"], "tpu"),
])
def test_generate_argument_errors(sg, tmp_path, args, needle):
    r = sg("generate", "--output", tmp_path / "x.png", "--quiet", *args, cwd=ROOT)
    assert r.returncode in (1, 2), r
    assert needle in r.stderr, r.stderr
    assert not (tmp_path / "x.png").exists()


def test_generate_rejects_bad_sketch_files(sg, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 10)
    text = tmp_path / "text.png"
    text.write_text("not an image")
    for f, needle in ((bad, "PNG"), (text, "not a PNG or JPEG")):
        r = sg("generate", "--prompt", "x", "--sketch", f, "--output", tmp_path / "o.png", "--steps", "2")
        assert r.returncode == 2 and needle in r.stderr, r.stderr
        assert not (tmp_path / "o.png").exists()


# --- tokenize ------------------------------------------------------------------------------------------------

def test_tokenize_matches_python(sg, model):
    prompts = ["a red star on a plain blue background", "A  GREEN heart,on striped &amp; dotted purple", ""]
    r = sg("tokenize", *prompts)
    assert r.returncode == 0, r.stderr
    lines = [json.loads(l) for l in r.stdout.splitlines()]
    assert len(lines) == 3
    for p, o in zip(prompts, lines):
        want = model.tokenizer.input_ids(p)
        assert o["input_ids"] == want and len(o["input_ids"]) == 77
        assert o["tokens"] == len(model.tokenizer.encode(p)) and o["max_tokens"] == 75 and not o["truncated"]


def test_tokenize_stdin_and_vocab(sg):
    vectors = json.load(open(os.path.join(SHARED, "clip", "vectors.json")))
    cases = vectors if isinstance(vectors, list) else vectors.get("cases", vectors.get("vectors"))
    texts = [c["text"] for c in cases if "\n" not in c["text"] and "\r" not in c["text"]][:20]
    vocab = os.path.join(SHARED, "clip", "bpe_simple_vocab_16e6.txt.gz")
    r = sg("tokenize", "--vocab", vocab, input="".join(t + "\n" for t in texts))
    assert r.returncode == 0, r.stderr
    out = [json.loads(l) for l in r.stdout.splitlines()]
    assert len(out) == len(texts)
    tok = clip_tokenizer.Tokenizer.from_files(vocab)
    for t, o in zip(texts, out):
        assert o["input_ids"] == tok.input_ids(t), t
        assert o["truncated"] == (len(tok.encode(t)) > 75)


def test_tokenize_long_prompt_and_errors(sg):
    r = sg("tokenize", " ".join(["star"] * 100))
    o = json.loads(r.stdout)
    assert o["tokens"] == 100 and o["truncated"] and len(o["input_ids"]) == 77
    r = sg("tokenize", "--vocab", "/nonexistent.txt", "x")
    assert r.returncode == 2 and "--vocab /nonexistent.txt" in r.stderr
    r = sg("tokenize", "--model", BUNDLED, "--vocab", "y", "x")
    assert r.returncode == 2 and "give one of them" in r.stderr
    r = sg("tokenize", input="caf\xe9 \udcff\n".encode("utf-8", "surrogateescape"), text=False)
    assert r.returncode == 0 and json.loads(r.stdout)["prompt"].startswith("caf")


# --- info ------------------------------------------------------------------------------------------------------

def test_info(sg):
    r = sg("info", "--model", BUNDLED)
    assert r.returncode == 0, r.stderr
    assert "model shapes" in r.stdout and "LGP: lgp.pt" in r.stdout and "held-out loss" in r.stdout
    j = json.loads(sg("info", BUNDLED, "--json").stdout)
    assert j["name"] == "shapes" and j["files"]["unet.pt"] > 1e6 and "config" not in j
    r = sg("info", "--model", BUNDLED, "--check")
    assert r.returncode == 0 and "every module loaded" in r.stderr
    r = sg("info", "--model", "/nonexistent")
    assert r.returncode == 2 and "--model /nonexistent" in r.stderr


# --- edges -----------------------------------------------------------------------------------------------------

def test_edges_matches_python(sg, tmp_path):
    img = shapes.sample(4321, 64)[0]
    src = tmp_path / "img.png"
    Image.fromarray(img).save(src)
    r = sg("edges", src, tmp_path / "e.png")
    assert r.returncode == 0, r.stderr
    got = np.asarray(Image.open(tmp_path / "e.png"))
    assert got.shape == (64, 64) and (got == edges.detect(img)).all()
    r = sg("edges", src, tmp_path / "e2.png", "--low", "0.3", "--high", "0.1")
    assert r.returncode == 2 and "--low" in r.stderr


# --- generate --------------------------------------------------------------------------------------------------

def golden_sketch(model, tmp_path):
    p = dict(shapes.sample_params(4242), shape="star", radius=0.34, cx=0.3, cy=-0.2)
    path = tmp_path / "golden_sketch.png"
    Image.fromarray(shapes.sketch(p, "wobbly", 1, model.size).astype(np.uint8)).save(path)
    return path


def test_golden_image(sg, model, tmp_path):
    """The same fixed-seed case as the Python golden test (tests/tools/golden), through the C engine."""
    out = tmp_path / "g.png"
    r = sg("generate", "--prompt", "a yellow star on a plain blue background", "--sketch", golden_sketch(model, tmp_path),
           "--beta", "1.6", "--stop", "0.5", "--steps", "20", "--seed", "1234", "--threads", "1", "--output", out)
    assert r.returncode == 0, r.stderr
    want = png(os.path.join(GOLDEN, "shapes_star_seed1234.png"))
    assert np.abs(png(out).astype(int) - want.astype(int)).max() <= 1


def test_text_chunks_and_beta0_equals_unguided(sg, tmp_path):
    sketch = os.path.join(ROOT, "docs", "examples", "star.png")
    common = ["--prompt", "a red star on a plain blue background", "--steps", "12", "--seed", "7", "--threads", "1"]
    r0 = sg("generate", *common, "--sketch", sketch, "--beta", "0", "--output", tmp_path / "b0.png")
    ru = sg("generate", *common, "--output", tmp_path / "u.png")
    rg = sg("generate", *common, "--sketch", sketch, "--beta", "1.6", "--negative", "green",
            "--output", tmp_path / "g.png")
    assert r0.returncode == ru.returncode == rg.returncode == 0, (r0.stderr, ru.stderr, rg.stderr)
    assert (png(tmp_path / "b0.png") == png(tmp_path / "u.png")).all()
    assert (png(tmp_path / "g.png") != png(tmp_path / "u.png")).any()
    t = Image.open(tmp_path / "g.png").text
    assert t["prompt"] == "a red star on a plain blue background" and t["negative_prompt"] == "green"
    assert t["seed"] == "7" and t["beta"] == "1.6" and t["stop"] == "0.5" and t["steps"] == "12"
    assert t["cfg"] == "8" and t["sampler"] == "ddim" and t["model"] == "shapes" and t["guided_steps"] == "6"


def test_parity_with_python_reference(sg, model, tmp_path):
    """The same sketch file, prompt, seed and parameters through sample.py and the C command: within 1 level."""
    sketch = golden_sketch(model, tmp_path)
    args = dict(prompt="a green heart on a dotted red background", seed=3, steps=30, stop=0.2)
    r = sg("generate", "--prompt", args["prompt"], "--sketch", sketch, "--seed", 3, "--steps", 30, "--stop", 0.2,
           "--threads", 1, "--output", tmp_path / "c.png")
    assert r.returncode == 0, r.stderr
    import torch
    torch.set_num_threads(1)
    target = ref.edge_target(model, ref.load_sketch(str(sketch), model.size))
    z = ref.sample(model, args["prompt"], target, beta=1.6, stop=0.2, steps=30, cfg=8.0, seed=3)
    py = model.decode(z)[0]
    assert np.abs(png(tmp_path / "c.png").astype(int) - py.astype(int)).max() <= 1


def test_several_seeds_and_images(sg, tmp_path):
    r = sg("generate", "--prompt", "a blue circle on a plain white background", "--steps", "4", "--seeds", "5,9",
           "--images", "2", "--output", tmp_path / "s{seed}.png", "--json")
    assert r.returncode == 0, r.stderr
    lines = [json.loads(l) for l in r.stdout.splitlines()]
    assert [l["seed"] for l in lines] == [5, 6, 9, 10]
    for s in (5, 6, 9, 10):
        assert Image.open(tmp_path / ("s%d.png" % s)).text["seed"] == str(s)
    # image k of a run equals a run of one image at seed + k
    r = sg("generate", "--prompt", "a blue circle on a plain white background", "--steps", "4", "--seed", "6",
           "--output", tmp_path / "one.png")
    assert r.returncode == 0 and (png(tmp_path / "one.png") == png(tmp_path / "s6.png")).all()
    r = sg("generate", "--prompt", "a blue circle on a plain white background", "--steps", "2", "--images", "2",
           "--output", tmp_path / "n.png")
    assert r.returncode == 0 and (tmp_path / "n-0.png").exists() and (tmp_path / "n-1.png").exists()


def test_guided_edge_fidelity_beats_unguided(sg, model, tmp_path):
    """Guided (beta 1.6, stop 0.5) edge F1 beats unguided by a clear margin on fixed out-of-domain sketches."""
    f_u, f_g = [], []
    for i, shape in enumerate(["square", "triangle", "circle", "cross", "heart", "star"]):
        prompt = shapes.caption(dict(shapes.sample_params(777 + i), shape=shape))
        sk = shapes.sketch(dict(shapes.sample_params(888 + i), shape=shape), shapes.SKETCH_STYLES[i % 4], i, model.size)
        path = tmp_path / ("sk%d.png" % i)
        Image.fromarray(sk.astype(np.uint8)).save(path)
        for beta, acc in (("0", f_u), ("1.6", f_g)):
            out = tmp_path / ("o%d_%s.png" % (i, beta))
            r = sg("generate", "--prompt", prompt, "--sketch", path, "--beta", beta, "--steps", "25", "--seed", i,
                   "--output", out)
            assert r.returncode == 0, r.stderr
            acc.append(edges.f1(edges.detect(png(out)), sk))
    assert np.mean(f_g) > np.mean(f_u) + 0.15, (f_u, f_g)
