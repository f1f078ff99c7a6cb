"""Tests of tools/sketches.py's evaluation set: plain-background cases and the per-case ceiling of edge F1."""
import numpy as np

import sketches


def test_plain_cases_keep_the_sketches_and_ask_for_plain_backgrounds():
    drawn = list(sketches.cases(3, ["thin", "thick"]))
    plain = list(sketches.cases(3, ["thin", "thick"], plain=True))
    assert [c["seed"] for c in drawn] == [c["seed"] for c in plain]
    for d, p in zip(drawn, plain):
        assert d["data"] == p["data"]  # the same drawing
        assert np.array_equal(d["outline"], p["outline"])
        assert p["params"]["texture"] == "plain" and "plain" in p["prompt"]
        assert {k: v for k, v in d["params"].items() if k != "texture"} == \
            {k: v for k, v in p["params"].items() if k != "texture"}


def test_ceiling_is_about_one_on_plain_backgrounds_and_lower_on_textured_ones():
    cs = list(sketches.cases(12, ["thin"]))
    textured = [c for c in cs if c["params"]["texture"] in ("striped", "checkered")]
    assert textured, [c["params"]["texture"] for c in cs]
    plain = list(sketches.cases(12, ["thin"], plain=True))
    assert min(sketches.ceiling(c) for c in plain) > 0.95
    # the stripes' and checks' own edges are counted as wrong edges: far from 1
    assert np.mean([sketches.ceiling(c) for c in textured]) < 0.8
