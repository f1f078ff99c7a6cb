"""Tests of tools/shapes.py: the procedural data set is deterministic, its captions and edge maps are right."""
import numpy as np

import edges
import shapes


def test_deterministic_by_seed():
    a, b = shapes.sample(42), shapes.sample(42)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]
    c = shapes.sample(43)
    assert not np.array_equal(a[0], c[0])


def test_caption_names_the_contents():
    for seed in range(50):
        img, e, cap, p = shapes.sample(seed)
        assert p["shape"] in cap and p["fg"] in cap and p["bg"] in cap and p["texture"] in cap
        assert p["fg"] != p["bg"]
        assert img.shape == (64, 64, 3) and img.dtype == np.uint8
        # the shape's colour is at the centre of its outline's interior
        poly = shapes.placed_polygon(p, 64)
        sd = shapes.signed_distance(poly, 64)
        inside = sd < -1.5
        assert inside.any()
        assert np.abs(img[inside].mean(0) - np.array(shapes.COLOURS[p["fg"]])).max() < 3


def test_edge_map_is_the_outline():
    for seed in range(20):
        img, e, cap, p = shapes.sample(seed)
        assert set(np.unique(e)) <= {0, 255}
        sd = shapes.signed_distance(shapes.placed_polygon(p, 64), 64)
        assert (np.abs(sd[e > 0]) < 1.0).all()
        assert e.sum() / 255 > 20
        # the detector finds the outline in the image (texture edges lower precision, not recall)
        d = edges.detect(img)
        assert edges.f1(d, e) > 0.2


def test_sketches_are_out_of_domain_but_on_the_shape():
    p = shapes.sample_params(7)
    _, e, _, _ = shapes.sample(7)
    for style in shapes.SKETCH_STYLES:
        s = shapes.sketch(p, style, 1)
        assert s.shape == (64, 64) and s.any()
        assert not np.array_equal(s, e)
        assert edges.f1(s, e, tol=3) > 0.5, style


def test_guidance_cases_are_each_shape_twice_away_from_the_prompts_placement():
    cases = shapes.guidance_cases(64)
    named = [next(sh for sh in shapes.SHAPES if sh in prompt) for prompt, _ in cases]
    assert sorted(named) == sorted(shapes.SHAPES * 2)
    for i, (prompt, sk) in enumerate(cases):
        assert sk.shape == (64, 64) and set(np.unique(sk)) == {0, 255}
        # the sketch is of the named shape where its own parameters put it (F1 0.98 to 1.0 at 2 px), away from
        # where the prompt's would (0.15 to 0.63): the unguided image overlaps it by chance only
        _, at_prompt = shapes.render(dict(shapes.sample_params(777 + i), shape=named[i]), 64)
        _, at_sketch = shapes.render(dict(shapes.sample_params(888 + i), shape=named[i]), 64)
        assert edges.f1(sk, at_sketch) > 0.9 and edges.f1(sk, at_prompt) < 0.7, i
    assert shapes.guidance_cases(64)[3][0] == cases[3][0]


def test_edge_f1_bounds():
    a = np.zeros((16, 16), np.uint8)
    a[5, 2:12] = 255
    assert edges.f1(a, a) == 1.0
    assert edges.f1(a, np.zeros_like(a)) == 0.0
    b = np.zeros_like(a)
    b[12, 2:12] = 255
    assert edges.f1(b, a, tol=2) == 0.0


def _templates(held_out: bool, n: int = 3000, seed: int = 0):
    rng = np.random.default_rng([seed, held_out])
    return [shapes.natural_template(rng, held_out) for _ in range(n)]


def _words(text: str) -> set:
    import re
    return set(re.findall(r"[a-z]+", text.lower()))


def test_natural_captions_name_the_contents():
    """Every natural caption names the shape and both colours, a textured background's texture always, and no
    texture but plain's words for a plain one (no texture word means plain)."""
    rng = np.random.default_rng(5)
    plain_unnamed = 0
    for seed in range(600):
        p = shapes.natural_params(seed)
        for held in (False, True):
            cap = shapes.natural_caption(p, rng, held).lower()
            w = _words(cap)
            assert p["shape"] in w and p["fg"] in w and p["bg"] in w, cap
            named = {t for t in shapes.TEXTURES if t in w}
            if p["texture"] == "plain":
                assert not named - {"plain"}, cap
                plain_unnamed += not (w & {"plain", "solid", "flat"})
            else:
                assert named == {p["texture"]}, cap
    # natural_params makes about half plain, and most plain captions leave the texture out
    assert plain_unnamed > 300


def test_training_templates_cover_the_phrasings_people_use():
    ts = _templates(False)
    joined = "\n".join(ts)
    for needle in ("backdrop", " against ", " in front of ", "-coloured", "-colored", "a drawing of ",
                   "a picture of ", "an image showing ", "{w}", "{tex}", "!", ".", ", "):
        assert needle in joined, needle
    # both orders: the background phrase first ("a blue background with a red star") and the shape first
    assert any(t.find("{bg}") < t.find("{fg}") for t in ts)
    assert any(t.find("{fg}") < t.find("{bg}") for t in ts)
    # the bare background colour ("a red star on black") and the shape before its colour ("a star in red")
    assert any(t.endswith("{bg}") for t in ts) and any("{shape} in {fg}" in t for t in ts)
    assert len(set(ts)) > 1000
    # capitals and made-up filler words appear once filled
    rng = np.random.default_rng(1)
    caps = [shapes.natural_caption(shapes.natural_params(i), rng) for i in range(400)]
    assert any(c.isupper() for c in caps) and any(c[:1].isupper() and not c.isupper() for c in caps)
    known = _words(joined) | shapes.KEY_WORDS | set(shapes.SHAPES) | set(shapes.COLOURS) | set(shapes.TEXTURES)
    assert any(_words(c) - known for c in caps)  # some word no template has: a made-up filler


def test_held_out_templates_are_never_training_templates():
    train, held = _templates(False), _templates(True)
    assert not set(train) & set(held)
    for t in train + held:  # each names the texture slot once (empty for most plain backgrounds)
        assert t.count("{tex}") == 1 and t.count("{fg}") == t.count("{bg}") == t.count("{shape}") == 1, t
    for t in train:
        assert not _words(t) & shapes.HELD_OUT_WORDS, t
    for t in held:
        assert _words(t) & shapes.HELD_OUT_WORDS, t
    # a made-up filler never spells a held-out word or a word captions give a meaning to
    rng = np.random.default_rng(2)
    for _ in range(2000):
        w = shapes._pseudo_word(rng)
        assert w not in shapes.HELD_OUT_WORDS and w not in shapes.KEY_WORDS
    # the held-out set still has each kind of part held out
    for part in (shapes.HELD_OUT_PREFIXES, shapes.HELD_OUT_FG_FIRST + shapes.HELD_OUT_BG_FIRST,
                 shapes.HELD_OUT_SUFFIXES, shapes.HELD_OUT_FILLERS):
        assert any(any(x.strip() in t for x in part) for t in held)


def test_natural_captions_fit_the_text_encoder():
    """The longest captions stay within the 75 tokens a 77-position encoder reads (none is cut)."""
    import clip_tokenizer
    from conftest import BUNDLED
    tok = clip_tokenizer.Tokenizer.from_files(BUNDLED)
    rng = np.random.default_rng(3)
    longest = max(len(tok.encode(shapes.natural_caption(shapes.natural_params(i), rng, i % 2 == 1)))
                  for i in range(1500))
    assert longest <= 75, longest
