"""train-lgp --prompts through the real binary: the prompt file's errors, the built-in list, images and predictor
the same for the same seed, resumption of both stages (an interrupted or partial run, run again, ends with the
images and weights of an uninterrupted one), and a predictor trained from prompts alone guiding about as well as
one trained on the procedural data set (guided edge F1 on out-of-domain sketches, tools/evaluate.py's protocol); and
the SD 1.5 quick start's chain on the reduced-width layout, where guided beats unguided on random_model.legible()'s
weights."""
import json
import os
import shutil
import signal
import subprocess

import numpy as np
import pytest
import torch
from PIL import Image

import compare_lgp
import edges
import sample as ref
import shapes
from conftest import BUNDLED, binary, wait_for

TRAIN_STEPS = "80"  # the F1 test's training steps, for both predictors
PROMPTS = [shapes.caption(shapes.sample_params(7_000_000 + i)) for i in range(64)]


def write_prompts(path, lines):
    path.write_text("".join(p + "\n" for p in lines))
    return path


def pixels(path):
    return np.asarray(Image.open(path).convert("RGB"))


def weights(path):
    """The predictor's tensors (TorchScript file) as numpy arrays by name."""
    m = torch.jit.load(str(path))
    return {k: v.detach().numpy().copy() for k, v in m.state_dict().items()}


def same_weights(a, b):
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(np.array_equal(wa[k], wb[k]) for k in wa)


def images_of(work):
    return sorted(f for f in os.listdir(work) if f.endswith(".png") and not f.endswith(".edges.png"))


QUICK = ["--images", "6", "--gen-steps", "3", "--gen-batch", "2", "--steps", "4", "--batch", "3", "--threads", "1",
         "--quiet"]


# --- the prompt file ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("content,needle", [
    (b"", "the file is empty"),
    (b"\n  \n# only a comment\n\r\n", "no prompts: its 4 lines are all blank or comments"),
    (b"a red star\na blue \xff circle\n", "line 2, byte 8: invalid UTF-8"),
    (b"a red star\n\xed\xa0\x80 surrogate\n", "line 2, byte 1: invalid UTF-8"),
    (b"a red star\xc0\xaf overlong\n", "line 1, byte 11: invalid UTF-8"),
    (b"a red\x00star\n", "line 1, byte 6: a NUL byte"),
    (b"a red star\n" + b"x" * 1025 + b"\n", "line 2: a prompt of 1025 bytes, over the limit of 1024"),
    (b"# long\n" + b"a red star " * 30 + b"\n", "line 2: a prompt of 90 tokens, over the text encoder's 75"),
])
def test_prompt_file_errors(sg, tmp_path, content, needle):
    """A bad prompt file is refused before the model loads, naming the line; nothing is written."""
    f = tmp_path / "p.txt"
    f.write_bytes(content)
    r = sg("train-lgp", "--prompts", f, "--output", tmp_path / "lgp.pt", *QUICK)
    assert r.returncode == 2 and needle in r.stderr and "--prompts %s" % f in r.stderr, r.stderr
    assert sorted(os.listdir(tmp_path)) == ["p.txt"]


def test_prompt_arguments(sg, tmp_path):
    f = write_prompts(tmp_path / "p.txt", PROMPTS[:2])
    out = ["--output", tmp_path / "lgp.pt"]
    cases = [(["--prompts", tmp_path / "missing.txt"], "--prompts %s: No such file" % (tmp_path / "missing.txt")),
             (["--prompts", f, "--data", tmp_path], "--data and --prompts: give one of them"),
             (["--data", tmp_path, "--images", "3"], "--images goes with --prompts, not --data"),
             (["--prompts", f, "--images", "0"], "--images: 0 is out of range"),
             (["--prompts", f, "--gen-batch", "65"], "--gen-batch: 65 is out of range"),
             (["--prompts", f, "--edge-sigma", "17"], "--edge-sigma: 17 is out of range"),
             (["--prompts", f, "--edge-thin", "2"], "--edge-thin: 2 is out of range"),
             (["--prompts", f, "--work", BUNDLED], "--work %s: inside the model directory" % BUNDLED),
             (["--prompts", f, "--work", os.path.join(BUNDLED, "w")], "inside the model directory"),
             ([], "give --data DIR (images with captions) or --prompts FILE|builtin")]
    for args, needle in cases:
        r = sg("train-lgp", *args, *out, "--quiet")
        assert r.returncode == 2 and needle in r.stderr, (args, r.stderr)
    assert sorted(os.listdir(tmp_path)) == ["p.txt"]


def test_builtin_prompts(sg, tmp_path):
    """--print-prompts lists the built-in prompts: many, distinct, everyday, each a valid prompt file line."""
    r = sg("train-lgp", "--print-prompts")
    lines = r.stdout.splitlines()
    assert r.returncode == 0 and len(lines) >= 150 and len(set(lines)) == len(lines)
    assert all(0 < len(p) <= 80 and p == p.strip() and not p.startswith("#") for p in lines)
    for word in ("cat", "dog", "car", "tree", "house", "cup"):
        assert any(word in p.split() for p in lines), word


# --- determinism and resumption -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """One uninterrupted run: 3 prompts, 6 images (2 per prompt, batches of 2), 4 training steps."""
    d = tmp_path_factory.mktemp("ref")
    f = write_prompts(d / "p.txt", PROMPTS[:3])
    r = subprocess.run([binary(), "train-lgp", "--prompts", str(f), "--output", str(d / "lgp.pt"), *QUICK],
                       capture_output=True, text=True, env=dict(os.environ, OPENBLAS_NUM_THREADS="1"), timeout=600)
    assert r.returncode == 0, r.stderr
    return d


def test_work_folder_and_description(reference_run):
    work = reference_run / "lgp.pt.work"
    assert images_of(work) == ["%06d.png" % j for j in range(6)]
    for j in range(6):
        assert (work / ("%06d.txt" % j)).read_text() == PROMPTS[j // 2]
        # the edge maps are the detector's with the options for generated images (edges.py, the reference)
        g = edges.generated(4)
        want = edges.detect(pixels(work / ("%06d.png" % j)), g["low"], g["high"], g["sigma"], g["thin"],
                            g["min_length"])
        assert np.array_equal(np.asarray(Image.open(work / ("%06d.edges.png" % j))), want)
        assert Image.open(work / ("%06d.png" % j)).text["seed"] == str(j)
    info = json.loads((work / "work.json").read_text())
    assert info["images"] == 6 and info["per_prompt"] == 2 and info["steps"] == 3 and info["batch"] == 2
    extra = {"lgp.json": ""}
    torch.jit.load(str(reference_run / "lgp.pt"), _extra_files=extra)
    data = json.loads(extra["lgp.json"])["trained"]["data"]
    assert "3 prompts, 6 images" in data and "3 ddim steps" in data and "sigma 2" in data, data


def test_same_seed_same_images_and_predictor(sg, tmp_path, reference_run):
    """Another run with the same settings (another work folder) makes the same images and weights; another
    --gen-seed other images."""
    f = write_prompts(tmp_path / "p.txt", PROMPTS[:3])
    r = sg("train-lgp", "--prompts", f, "--output", tmp_path / "lgp.pt", *QUICK)
    assert r.returncode == 0, r.stderr
    for name in images_of(reference_run / "lgp.pt.work"):
        assert np.array_equal(pixels(tmp_path / "lgp.pt.work" / name), pixels(reference_run / "lgp.pt.work" / name))
    assert same_weights(tmp_path / "lgp.pt", reference_run / "lgp.pt")
    r = sg("train-lgp", "--prompts", f, "--output", tmp_path / "other.pt", "--gen-seed", "1", *QUICK)
    assert r.returncode == 0, r.stderr
    assert not np.array_equal(pixels(tmp_path / "other.pt.work" / "000000.png"),
                              pixels(tmp_path / "lgp.pt.work" / "000000.png"))


def test_partial_work_folder_is_completed_to_the_same_result(sg, tmp_path, reference_run):
    """Images already made are reused; missing ones (a whole batch, half a batch) are made again identical, and
    the predictor equals the uninterrupted run's."""
    work = tmp_path / "lgp.pt.work"
    shutil.copytree(reference_run / "lgp.pt.work", work)
    for j in (1, 4, 5):
        os.unlink(work / ("%06d.png" % j))
    kept = {j: os.stat(work / ("%06d.png" % j)).st_mtime_ns for j in (0, 2, 3)}
    f = write_prompts(tmp_path / "p.txt", PROMPTS[:3])
    r = sg("train-lgp", "--prompts", f, "--output", tmp_path / "lgp.pt", *QUICK[:-1])
    assert r.returncode == 0, r.stderr
    assert "generating 3 of 6 images" in r.stderr and "(3 there already)" in r.stderr, r.stderr
    assert all(os.stat(work / ("%06d.png" % j)).st_mtime_ns == t for j, t in kept.items())
    for name in images_of(reference_run / "lgp.pt.work"):
        assert np.array_equal(pixels(work / name), pixels(reference_run / "lgp.pt.work" / name)), name
    assert same_weights(tmp_path / "lgp.pt", reference_run / "lgp.pt")


def test_work_folder_of_other_settings_is_refused(sg, tmp_path, reference_run):
    work = tmp_path / "w"
    shutil.copytree(reference_run / "lgp.pt.work", work)
    f = write_prompts(tmp_path / "p.txt", PROMPTS[:3])
    g = write_prompts(tmp_path / "q.txt", PROMPTS[1:4])
    for args, needle in (([f, "--gen-steps", "4"], "steps 3 there, 4 now"),
                         ([g], "prompts_hash"),
                         ([f, "--gen-batch", "3"], "batch 2 there, 3 now")):
        q = [a for a in QUICK]
        if "--gen-steps" in args:
            q[q.index("--gen-steps") + 1] = "4"
            args = args[:1]
        if "--gen-batch" in args:
            q[q.index("--gen-batch") + 1] = "3"
            args = args[:1]
        r = sg("train-lgp", "--prompts", *args, "--work", work, "--output", tmp_path / "lgp.pt", *q)
        assert r.returncode == 2 and "--work %s: its images were made with other settings" % work in r.stderr, r.stderr
        assert needle in r.stderr, r.stderr
    assert not (tmp_path / "lgp.pt").exists()
    # a folder that holds other files and no work.json is not taken for a work folder
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "000000.png").write_bytes(b"not ours")
    r = sg("train-lgp", "--prompts", f, "--work", stray, "--output", tmp_path / "lgp.pt", *QUICK)
    assert r.returncode == 2 and "holds files but no work.json" in r.stderr, r.stderr
    assert os.listdir(stray) == ["000000.png"] and not (tmp_path / "lgp.pt").exists()


def run_until(args, cond, tmp_path):
    """Starts the binary with args, sends SIGINT once cond() holds, returns (returncode, stderr)."""
    p = subprocess.Popen([binary(), *map(str, args)], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                         env=dict(os.environ, OPENBLAS_NUM_THREADS="1"))
    try:
        wait_for(lambda: cond() or p.poll() is not None, timeout=300, what="the run to get going")
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
        err = p.communicate(timeout=300)[1]
    finally:
        if p.poll() is None:
            p.kill()
    return p.returncode, err


def test_interrupted_generation_resumes_to_the_same_result(sg, tmp_path, reference_run):
    """Ctrl-C while generating keeps the finished images; the same command again ends with the uninterrupted
    run's images and predictor."""
    f = write_prompts(tmp_path / "p.txt", PROMPTS[:3])
    work = tmp_path / "lgp.pt.work"
    args = ["train-lgp", "--prompts", f, "--output", tmp_path / "lgp.pt", *QUICK[:-1]]
    rc, err = run_until(args, lambda: work.exists() and len(images_of(work)) >= 1, tmp_path)
    if rc == 1:  # interrupted in the generation (else the run had finished it, or was interrupted in training)
        assert "interrupted while generating" in err or "interrupted at step" in err, err
    r = sg(*args)
    assert r.returncode == 0, r.stderr
    for name in images_of(reference_run / "lgp.pt.work"):
        assert np.array_equal(pixels(work / name), pixels(reference_run / "lgp.pt.work" / name)), name
    assert same_weights(tmp_path / "lgp.pt", reference_run / "lgp.pt")


def test_interrupted_training_resumes_to_the_same_result(sg, tmp_path, reference_run):
    """Ctrl-C while training (after the images exist) saves the checkpoint; run again, the predictor equals an
    uninterrupted run's."""
    f = write_prompts(tmp_path / "p.txt", PROMPTS[:3])
    shutil.copytree(reference_run / "lgp.pt.work", tmp_path / "lgp.pt.work")
    q = list(QUICK)
    q[q.index("--steps") + 1] = "40"
    ref_args = ["train-lgp", "--prompts", f, "--output", tmp_path / "ref.pt", "--work", tmp_path / "lgp.pt.work", *q]
    r = sg(*ref_args)
    assert r.returncode == 0, r.stderr
    args = ["train-lgp", "--prompts", f, "--output", tmp_path / "lgp.pt", "--checkpoint-every", "1", *q[:-1]]
    ckpt = tmp_path / "lgp.pt.ckpt"
    rc, err = run_until(args, ckpt.exists, tmp_path)
    assert rc == 0 or "interrupted at step" in err, err
    r = sg(*args)
    assert r.returncode == 0, r.stderr
    assert rc == 0 or "resumed" in r.stdout, r.stdout
    assert same_weights(tmp_path / "lgp.pt", tmp_path / "ref.pt")
    assert not same_weights(tmp_path / "lgp.pt", reference_run / "lgp.pt")  # 40 steps, not 4


# --- item 3: prompts alone against the procedural data set ------------------------------------------------------

def guided_f1(model_dir, n_cases=8, steps=15):
    """Mean edge F1 (tolerance 2) against out-of-domain sketches, guided (beta 1.6, stop 0.5) and unguided, on
    tools/evaluate.py's fidelity cases (its odd, out-of-domain ones; compare_lgp.py), at fewer steps."""
    model = ref.Model(str(model_dir))
    cfg = model.manifest["defaults"]["cfg"]
    prompts, sk, seeds, _ = compare_lgp.fidelity_cases(2 * n_cases, model.size, ood_only=True)
    gg = compare_lgp.generate(model, prompts, sk, seeds, 1.6, 0.5, steps, cfg)
    gu = compare_lgp.generate(model, prompts, None, seeds, 0.0, 0.0, steps, cfg)
    return float(compare_lgp.mean_f1(gg, sk).mean()), float(compare_lgp.mean_f1(gu, sk).mean())


def test_prompts_only_predictor_guides_like_the_data_trained_one(sg, tmp_path):
    """Two predictors for the bundled model with the same step budget, one on 32 procedural pairs (images, exact
    edge maps, captions), one on 32 images the model made from 16 prompts (no data set): guided by either, the
    edge F1 on out-of-domain sketches is above unguided by 0.08, and the prompts-only one within 0.06 of the other.
    A trainer that does not learn leaves guided near unguided, one that learns the wrong pairing (targets of another
    image) only the edge maps' average, which guides a little (+0.06); computed here, for whatever the bundled model
    is."""
    torch.set_num_threads(1)
    pairs = tmp_path / "pairs"
    pairs.mkdir()
    shapes.write_pairs(str(pairs), 5_000_000, 32)
    f = write_prompts(tmp_path / "p.txt", PROMPTS[:16])
    train = ["--steps", TRAIN_STEPS, "--batch", "8", "--lr", "1e-3", "--threads", "1", "--quiet"]
    r = sg("train-lgp", "--model", BUNDLED, "--data", pairs, "--out", tmp_path / "data", *train)
    assert r.returncode == 0, r.stderr
    r = sg("train-lgp", "--model", BUNDLED, "--prompts", f, "--images", "32", "--gen-steps", "5",
           "--out", tmp_path / "prompts", *train)
    assert r.returncode == 0, r.stderr
    fg_data, fu = guided_f1(tmp_path / "data")
    fg_prompts, fu2 = guided_f1(tmp_path / "prompts")
    print("edge F1 out of domain: unguided %.3f, guided by the data-trained LGP %.3f, by the prompts-only LGP %.3f"
          % (fu, fg_data, fg_prompts))
    # measured (bundled model of 49d7d5d, this CPU): unguided 0.271, data-trained 0.366, prompts only 0.380. Broken
    # trainers (scratch builds; docs/train-lgp-prompts.md, "Can the comparison fail"), data / prompts: learning rate
    # 1e-6 of the one set 0.237 / 0.282; each pair trained on the next pair's edge map 0.335 / 0.268; each generated
    # image given the previous image's edge map 0.366 / 0.343. At a margin of 0.05 the last (0.343 > 0.321) and a
    # broken data-trained predictor (0.335) passed; 0.08 fails both, by 0.008 and 0.016 (the working ones pass by
    # 0.015 and 0.029): a narrow gap, which more steps or cases would widen at the cost of time
    assert fu == fu2  # the same unguided images
    assert fg_data > fu + 0.08, (fg_data, fu)
    assert fg_prompts > fu + 0.08, (fg_prompts, fu)
    assert fg_prompts >= fg_data - 0.06, (fg_prompts, fg_data)


# --- item 4: the SD 1.5 path, on the reduced-width SD 1.5 layout -------------------------------------------------

def held_out_by_t(stdout):
    """{t: loss} from train-lgp's 'held-out loss by t: 50: 0.1 250: ...' line."""
    line = next(l for l in stdout.splitlines() if l.startswith("held-out loss by t:"))
    nums = line.split(":", 1)[1].split()
    return {int(nums[i].rstrip(":")): float(nums[i + 1]) for i in range(0, len(nums), 2)}


SD15_SKETCHES = 4  # the F1 check's sketches (sd15_sketches), each at SD15_SEEDS
SD15_SEEDS = "1,2,3"


def sd15_sketches(n):
    """Outline sketches at n x n, white strokes 3 pixels wide on black: a square, a circle, a triangle, a cross."""
    from PIL import ImageDraw
    out = []
    for k in range(SD15_SKETCHES):
        im = Image.new("L", (n, n), 0)
        d = ImageDraw.Draw(im)
        a, b, c = round(n * 0.2), round(n * 0.8), n // 2
        if k == 0:
            d.rectangle([a, a, b, b], outline=255, width=3)
        elif k == 1:
            d.ellipse([a, a, b, b], outline=255, width=3)
        elif k == 2:
            d.polygon([(c, round(n * 0.15)), (round(n * 0.85), b), (round(n * 0.15), b)], outline=255, width=3)
        else:
            d.line([(a, c), (b, c)], fill=255, width=3)
            d.line([(c, a), (c, b)], fill=255, width=3)
        out.append(im)
    return out


def sd15_f1(sg, model, tmp_path, beta):
    """Edge F1 (3 pixels at 128 x 128) of `generate` images on each sd15_sketches sketch and seed, against that
    sketch's map and against the next sketch's (a control: guidance that follows no sketch raises both)."""
    n = 128
    drawn = sd15_sketches(n)
    maps = [ref.sketch_map(np.asarray(im, np.float32) / 255.0, n) * 255 for im in drawn]
    own, other = [], []
    for k, im in enumerate(drawn):
        sp = tmp_path / ("sketch%d.png" % k)
        im.save(sp)
        out = tmp_path / ("%s-beta%s-%d-{seed}.png" % (os.path.basename(str(model)), beta, k))
        r = sg("generate", "--model", model, "--prompt", "a cup of coffee on a saucer", "--sketch", sp, "--beta", beta,
               "--steps", "20", "--seeds", SD15_SEEDS, "--output", out, "--quiet")
        assert r.returncode == 0, r.stderr
        for seed in SD15_SEEDS.split(","):
            e = edges.detect(pixels(str(out).replace("{seed}", seed)))
            own.append(edges.f1(e, maps[k], 3))
            other.append(edges.f1(e, maps[(k + 1) % len(maps)], 3))
    return np.array(own), np.array(other)


def test_sd15_layout_export_train_from_prompts_and_serve(sg, tmp_path):
    """The quick start's chain on the reduced-width SD 1.5 layout (4 levels, 9 taps, the CLIP tokenizer; at 128 x 128
    instead of 512 x 512 so that it takes minutes on a CPU): export the single-file checkpoint, train-lgp --prompts
    builtin into a new model folder, generate guided by sketches, serve it. Random weights give guidance nothing to
    steer, so the checkpoint is random_model.legible()'s: a VAE that autoencodes blobs and a U-Net whose first tap
    holds the latent's neighbourhood, the rest small random weights, nothing trained. Checked: training lowers the
    predictor's loss; guided beats unguided on 4 sketches x 3 seeds, against its own sketch more than against
    another (so it follows the sketch, not merely changes the image); the untrained predictor does neither."""
    import export
    from random_model import reduced_sd15, write_random
    from test_http import Server, clean_env
    vocab = os.path.join(os.environ.get("SKETCHGUIDE_SHARED", os.path.join(os.path.dirname(BUNDLED), "..", "..",
                                                                             "shared")), "clip",
                         "bpe_simple_vocab_16e6.txt.gz")
    if not os.path.exists(vocab):
        pytest.skip("no CLIP vocabulary at %s" % vocab)
    ckpt = str(tmp_path / "reduced.safetensors")
    cfg = reduced_sd15()
    cfg["image_size"] = 128
    write_random(cfg, ckpt, 0, legible_weights=True)
    export.export(ckpt, str(tmp_path / "sd15"), vocab=vocab)
    os.unlink(ckpt)
    work = tmp_path / "work"
    gen = ["--model", tmp_path / "sd15", "--prompts", "builtin", "--images", "64", "--gen-steps", "10", "--gen-batch",
           "8", "--work", work, "--held-out", work, "--batch", "8", "--lr", "1e-3"]
    r = sg("train-lgp", *gen, "--steps", "0", "--out", tmp_path / "fresh")
    assert r.returncode == 0, r.stderr
    assert "generating 64 of 64 images" in r.stderr and "image-steps" in r.stderr, r.stderr
    fresh = held_out_by_t(r.stdout)
    r = sg("train-lgp", *gen, "--steps", "300", "--out", tmp_path / "mine")
    assert r.returncode == 0, r.stderr
    assert "generating" not in r.stderr  # the images were reused
    trained = held_out_by_t(r.stdout)
    assert sum(trained.values()) < 0.5 * sum(fresh.values()), (fresh, trained)
    assert trained[50] < 0.8 * trained[950], trained  # it reads the latent: best where the latent is least noisy
    info = json.loads((tmp_path / "mine" / "model.json").read_text())
    assert info["image_size"] == 128 and info["tap_channels"] == 928 and len(info["taps"]) == 9
    assert info["lgp"]["trained"]["steps"] == 300
    assert "prompts builtin: 166 prompts, 64 images" in info["lgp"]["trained"]["data"]

    unguided, _ = sd15_f1(sg, tmp_path / "mine", tmp_path, "0")
    guided, other = sd15_f1(sg, tmp_path / "mine", tmp_path, "1.6")
    untrained, _ = sd15_f1(sg, tmp_path / "fresh", tmp_path, "1.6")
    report = "F1 unguided %.3f, guided %.3f (against another sketch %.3f), untrained predictor %.3f; wins %d of %d" % (
        unguided.mean(), guided.mean(), other.mean(), untrained.mean(), (guided > unguided).sum(), guided.size)
    print(report)
    assert guided.mean() > unguided.mean() + 0.025, report
    assert (guided > unguided).sum() >= 0.75 * guided.size, report
    assert guided.mean() > other.mean() + 0.01, report
    assert untrained.mean() < guided.mean() - 0.025, report

    srv = Server("--model", tmp_path / "mine", env=clean_env())
    try:
        sketch = np.zeros((128, 128), np.uint8)
        sketch[25:100, 25:28] = 255
        sketch[25:28, 25:100] = 255
        import base64
        import io
        buf = io.BytesIO()
        Image.fromarray(sketch).save(buf, "PNG")
        body = json.dumps({"prompt": "a cup of coffee on a saucer", "steps": 2, "seed": 1,
                           "sketch": base64.b64encode(buf.getvalue()).decode()})
        st, h, data = srv.request("POST", "/v1/generate", body, {"Content-Type": "application/json"}, timeout=600)
        assert st == 200 and h["content-type"] == "image/png", (st, data[:300], srv.log())
        im = Image.open(io.BytesIO(data))
        assert im.size == (128, 128) and im.text["model"] and float(im.text["beta"]) == 1.6
    finally:
        srv.proc.send_signal(signal.SIGTERM)
        srv.proc.wait(timeout=120)
