#!/usr/bin/python3
"""Writes the fixtures of tests/core/test_image.c: small PNG/JPEG files and images.json, which holds the pixels PIL
decodes from each file and the binary maps tools/sample.py load_sketch makes of each sketch.

Usage: /usr/bin/python3 tools/gen_image_fixtures.py [OUT_DIR]   (default tests/core/data/images)
Deterministic (fixed seeds); rerun it after changing load_sketch and commit the result.
"""
import json
import os
import struct
import sys
import zlib

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sample import load_sketch  # noqa: E402


def write_png(path, w, h, depth, color_type, rows, plte=None, trns=None):
    """A PNG written by hand (filter 0 on every row), for layouts PIL cannot save: 16-bit RGB(A), 2-bit gray."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    raw = b"".join(b"\x00" + r for r in rows)
    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, color_type, 0, 0, 0))
    if plte is not None:
        out += chunk(b"PLTE", plte)
    if trns is not None:
        out += chunk(b"tRNS", trns)
    out += chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")
    with open(path, "wb") as f:
        f.write(out)


def strokes(w, h, seed, dark_on_light=True, soft=True):
    """Random lines, ellipses and a polygon, anti-aliased by drawing at 4x and shrinking (gray edge pixels)."""
    rng = np.random.default_rng(seed)
    bg, fg = (255, 0) if dark_on_light else (0, 255)
    im = Image.new("L", (w * 4, h * 4), bg)
    d = ImageDraw.Draw(im)
    for _ in range(4):
        x0, x1 = sorted(rng.integers(0, w * 4, 2))
        y0, y1 = sorted(rng.integers(0, h * 4, 2))
        d.line([(int(x0), int(y0)), (int(x1), int(y1))], fill=fg, width=int(rng.integers(3, 10)))
        d.ellipse([int(x0), int(y0), int(x1) + 4, int(y1) + 4], outline=fg, width=int(rng.integers(3, 8)))
    im = im.resize((w, h), Image.LANCZOS if soft else Image.NEAREST)
    if soft:
        im = im.filter(ImageFilter.GaussianBlur(0.6))
    return im


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "tests", "core", "data", "images")
    os.makedirs(out_dir, exist_ok=True)
    rng = np.random.default_rng(1234)
    decode, sketches = [], []

    def add_decode(name, pixels):
        a = np.ascontiguousarray(pixels, dtype=np.uint8)
        ch = 1 if a.ndim == 2 else a.shape[2]
        decode.append({"file": name, "width": a.shape[1], "height": a.shape[0], "channels": ch,
                       "pixels": a.tobytes().hex()})

    def add_sketch(name, size, invert):
        m = load_sketch(os.path.join(out_dir, name), size, invert)
        # load_sketch does not report whether it inverted; redo its test here
        im = Image.open(os.path.join(out_dir, name))
        im.load()
        if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
            im = Image.alpha_composite(Image.new("RGBA", im.size, (255, 255, 255, 255)), im.convert("RGBA"))
        g = np.asarray(im.convert("L"), dtype=np.float32) / 255.0
        inv = invert == "true" or (invert == "auto" and bool(g.mean() > 0.5))
        sketches.append({"file": name, "size": size, "invert": invert, "inverted": inv,
                         "map": "".join("1" if v > 0.5 else "0" for v in m.ravel())})

    # Decoding: a colour JPEG (4:2:0), a gray JPEG, a progressive one, a CMYK one (refused).
    yy, xx = np.mgrid[0:24, 0:32]
    photo = np.stack([xx * 8, yy * 10, (xx + yy) * 4 % 256], axis=2).astype(np.uint8)
    Image.fromarray(photo, "RGB").save(os.path.join(out_dir, "rgb.jpg"), quality=90)
    add_decode("rgb.jpg", np.asarray(Image.open(os.path.join(out_dir, "rgb.jpg")).convert("RGB")))
    Image.fromarray((xx * 7 + yy * 3).astype(np.uint8), "L").save(os.path.join(out_dir, "gray.jpg"), quality=85)
    add_decode("gray.jpg", np.asarray(Image.open(os.path.join(out_dir, "gray.jpg"))))
    Image.fromarray(photo, "RGB").save(os.path.join(out_dir, "progressive.jpg"), quality=80, progressive=True)
    add_decode("progressive.jpg", np.asarray(Image.open(os.path.join(out_dir, "progressive.jpg")).convert("RGB")))
    Image.fromarray(photo, "RGB").convert("CMYK").save(os.path.join(out_dir, "cmyk.jpg"), quality=80)

    # PNG layouts: 16-bit gray, 16-bit RGBA, 2-bit gray, palette with tRNS, gray + alpha, palette without tRNS.
    g16 = (rng.integers(0, 65536, (5, 7))).astype(">u2")
    write_png(os.path.join(out_dir, "gray16.png"), 7, 5, 16, 0, [r.tobytes() for r in g16])
    add_decode("gray16.png", (g16.astype(np.uint32) >> 8).astype(np.uint8))
    rgba16 = rng.integers(0, 65536, (4, 6, 4)).astype(">u2")
    write_png(os.path.join(out_dir, "rgba16.png"), 6, 4, 16, 6, [r.tobytes() for r in rgba16])
    add_decode("rgba16.png", np.asarray(Image.open(os.path.join(out_dir, "rgba16.png"))))
    g2 = rng.integers(0, 4, (3, 9))
    rows2 = []
    for r in g2:
        bits = list(r) + [0] * (-len(r) % 4)
        rows2.append(bytes((bits[i] << 6) | (bits[i + 1] << 4) | (bits[i + 2] << 2) | bits[i + 3]
                           for i in range(0, len(bits), 4)))
    write_png(os.path.join(out_dir, "gray2.png"), 9, 3, 2, 0, rows2)
    add_decode("gray2.png", np.asarray(Image.open(os.path.join(out_dir, "gray2.png")).convert("L")))
    pal = Image.fromarray(rng.integers(0, 6, (10, 12)).astype(np.uint8), "P")
    pal.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255, 255, 255, 255, 90, 180, 30])
    pal.info["transparency"] = bytes([255, 0, 128, 255, 10])  # entry 5 opaque by omission
    pal.save(os.path.join(out_dir, "palette_trns.png"), transparency=bytes([255, 0, 128, 255, 10]))
    add_decode("palette_trns.png", np.asarray(Image.open(os.path.join(out_dir, "palette_trns.png")).convert("RGBA")))
    pal2 = Image.fromarray(rng.integers(0, 6, (6, 5)).astype(np.uint8), "P")
    pal2.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255, 255, 255, 255, 90, 180, 30])
    pal2.save(os.path.join(out_dir, "palette.png"))
    add_decode("palette.png", np.asarray(Image.open(os.path.join(out_dir, "palette.png")).convert("RGB")))
    la = rng.integers(0, 256, (8, 5, 2)).astype(np.uint8)
    Image.fromarray(la, "LA").save(os.path.join(out_dir, "gray_alpha.png"))
    add_decode("gray_alpha.png", np.asarray(Image.open(os.path.join(out_dir, "gray_alpha.png"))))

    # Compositing: every (value, alpha) pair on a 256 x 256 RGBA image, and PIL's alpha_composite of it on white.
    v, a = np.meshgrid(np.arange(256), np.arange(256))
    rgba = np.stack([v, 255 - v, (v * 7) % 256, a], axis=2).astype(np.uint8)
    Image.fromarray(rgba, "RGBA").save(os.path.join(out_dir, "composite.png"))
    flat = Image.alpha_composite(Image.new("RGBA", (256, 256), (255, 255, 255, 255)), Image.fromarray(rgba, "RGBA"))
    flat.convert("RGB").save(os.path.join(out_dir, "composite_on_white.png"))  # what sg_image_to_rgb must give

    # Sketches, with the maps load_sketch makes of them.
    strokes(64, 64, 1).convert("RGB").save(os.path.join(out_dir, "sketch_dark_on_light.png"))
    add_sketch("sketch_dark_on_light.png", 64, "auto")
    add_sketch("sketch_dark_on_light.png", 64, "false")
    add_sketch("sketch_dark_on_light.png", 48, "auto")
    add_sketch("sketch_dark_on_light.png", 40, "true")
    col = np.asarray(strokes(80, 60, 2, dark_on_light=False).convert("RGB")).astype(np.int32)
    col = (col * np.array([1.0, 0.8, 0.6])).astype(np.uint8)  # coloured strokes, light on dark
    Image.fromarray(col, "RGB").save(os.path.join(out_dir, "sketch_light_on_dark.png"))
    add_sketch("sketch_light_on_dark.png", 64, "auto")
    add_sketch("sketch_light_on_dark.png", 64, "true")
    add_sketch("sketch_light_on_dark.png", 60, "auto")  # one side keeps its size
    add_sketch("sketch_light_on_dark.png", 80, "auto")
    alpha = np.asarray(strokes(50, 50, 3, dark_on_light=False))  # strokes opaque, background transparent
    rgba_s = np.zeros((50, 50, 4), np.uint8)
    rgba_s[..., 0], rgba_s[..., 1], rgba_s[..., 2], rgba_s[..., 3] = 20, 30, 160, alpha
    Image.fromarray(rgba_s, "RGBA").save(os.path.join(out_dir, "sketch_rgba.png"))
    add_sketch("sketch_rgba.png", 64, "auto")
    add_sketch("sketch_rgba.png", 32, "auto")
    strokes(37, 29, 4).save(os.path.join(out_dir, "sketch_37x29.png"))
    add_sketch("sketch_37x29.png", 32, "auto")
    add_sketch("sketch_37x29.png", 64, "auto")
    strokes(13, 17, 5, soft=False).save(os.path.join(out_dir, "sketch_13x17.png"))
    add_sketch("sketch_13x17.png", 64, "auto")
    strokes(131, 97, 6).convert("RGB").save(os.path.join(out_dir, "sketch_131x97.jpg"), quality=92)
    add_sketch("sketch_131x97.jpg", 64, "auto")
    add_sketch("palette_trns.png", 16, "auto")
    add_sketch("gray_alpha.png", 16, "auto")
    add_sketch("palette.png", 8, "false")

    # Sketches drawn as people draw them (tools/sketches.py, 256 x 256): the stroke-keeping downscale, speck removal,
    # filled regions to outlines and wide strokes thinned, each value as load_sketch makes it.
    import sketches as drawn
    for style in ("thin", "thick", "double", "filled", "small", "jpeg"):
        seed = drawn.FIRST_SEED + 95_000 + drawn.STYLES.index(style)
        name = "sketch_drawn_%s%s" % (style, ".jpg" if style == "jpeg" else ".png")
        with open(os.path.join(out_dir, name), "wb") as f:
            f.write(drawn.encode(drawn.draw(drawn.params_for(style, seed), style, seed), style, seed))
        add_sketch(name, 64, "auto")
    add_sketch("sketch_drawn_filled.png", 48, "auto")
    add_sketch("sketch_drawn_thick.png", 100, "auto")

    # Black and white noise, resized by ratios that put many interpolated values within rounding of 0.5.
    for n, size in ((20, 48), (36, 64), (100, 64)):
        noise = (rng.integers(0, 2, (n, n)) * 255).astype(np.uint8)
        Image.fromarray(noise, "L").save(os.path.join(out_dir, "sketch_noise_%d.png" % n))
        add_sketch("sketch_noise_%d.png" % n, size, "false")

    # Gray values on both sides of 0.5 (L 127 and 128) from colours whose luma rounds either way.
    cols = []
    while len(cols) < 64:
        c = rng.integers(0, 256, 3)
        lum = (int(c[0]) * 19595 + int(c[1]) * 38470 + int(c[2]) * 7471 + 0x8000) >> 16
        if lum in (127, 128):
            cols.append(c)
    Image.fromarray(np.array(cols, np.uint8).reshape(8, 8, 3), "RGB").save(os.path.join(out_dir, "sketch_luma.png"))
    add_sketch("sketch_luma.png", 8, "false")

    # Automatic inversion at the edge: gray images (over 8192 pixels, numpy's reduction buffer) whose exact mean is
    # 0.5, which is not above 0.5, but whose float32 mean as numpy sums it is. Found by search with a fixed seed.
    srng = np.random.default_rng(99)
    for h, w in ((96, 96), (90, 100)):
        while True:
            lum = srng.integers(0, 256, (h, w))
            diff = 255 * lum.size // 2 - int(lum.sum())
            while diff:
                i = int(srng.integers(0, lum.size))
                step = max(-int(lum.flat[i]), min(255 - int(lum.flat[i]), diff))
                lum.flat[i] += step
                diff -= step
            if 2 * int(lum.sum()) == 255 * lum.size and (lum.astype(np.float32) / 255.0).mean() > 0.5:
                break
        name = "sketch_mean_edge_%dx%d.png" % (w, h)
        Image.fromarray(lum.astype(np.uint8), "L").save(os.path.join(out_dir, name))
        add_sketch(name, 64, "auto")

    with open(os.path.join(out_dir, "images.json"), "w") as f:
        json.dump({"decode": decode, "sketch": sketches}, f, indent=0)
        f.write("\n")
    print("wrote %d decode and %d sketch cases to %s" % (len(decode), len(sketches), out_dir))


if __name__ == "__main__":
    main()
