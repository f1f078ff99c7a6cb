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


def test_edge_f1_bounds():
    a = np.zeros((16, 16), np.uint8)
    a[5, 2:12] = 255
    assert edges.f1(a, a) == 1.0
    assert edges.f1(a, np.zeros_like(a)) == 0.0
    b = np.zeros_like(a)
    b[12, 2:12] = 255
    assert edges.f1(b, a, tol=2) == 0.0
