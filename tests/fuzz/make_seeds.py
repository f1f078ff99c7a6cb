#!/usr/bin/env python3
"""Writes the fuzz targets' seed corpora (tests/fuzz/corpus/NAME/), checked in; rerun after changing the fixtures.

image: the PNG and JPEG fixtures of tests/core/data/images and docs/examples, plus variants they lack (Adam7
interlacing, text chunks, 1/2/4-bit palettes, restart markers, 4:2:0 and 4:4:4 JPEG, a truncated file, a header
over max_image_pixels). tokenizer: the prompts of tests/core/data/clip_tricky.json and a few more.
Run with /usr/bin/python3 (it needs PIL): python3 tests/fuzz/make_seeds.py
"""
import io
import json
import os
import shutil
import struct
import sys
import zlib

from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def chunk(kind, data):
    """One PNG chunk with its CRC."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_raw(width, height, color_type, depth, rows, interlace=0, extra=b""):
    """A PNG from already packed rows (bytes per row as the format says), filter 0, optionally Adam7."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0, interlace)
    if interlace:
        bpp = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[color_type] * depth // 8  # 8-bit only here
        data = b""
        for x0, y0, dx, dy in ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
                               (0, 1, 1, 2)):
            for y in range(y0, height, dy):
                row = b"".join(rows[y][x * bpp:(x + 1) * bpp] for x in range(x0, width, dx))
                if row:
                    data += b"\0" + row
    else:
        data = b"".join(b"\0" + r for r in rows)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + extra + chunk(b"IDAT", zlib.compress(data, 9)) +
            chunk(b"IEND", b""))


def sketch(width, height, mode="RGB"):
    """A small stroke drawing: a dark diagonal and a box on white."""
    im = Image.new("RGB", (width, height), (255, 255, 255))
    px = im.load()
    for i in range(min(width, height)):
        px[i, i] = (0, 0, 0)
    for x in range(width // 4, 3 * width // 4):
        px[x, height // 4] = px[x, 3 * height // 4] = (20, 40, 200)
    return im.convert(mode)


def encoded(im, fmt, **kw):
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def image_seeds(out):
    for folder in (os.path.join(ROOT, "tests", "core", "data", "images"), os.path.join(ROOT, "docs", "examples")):
        for name in sorted(os.listdir(folder)):
            if name.endswith((".png", ".jpg")):
                shutil.copy(os.path.join(folder, name), os.path.join(out, name))
    rgb = sketch(19, 13)
    rows = [rgb.tobytes()[y * 19 * 3:(y + 1) * 19 * 3] for y in range(13)]
    made = {
        "adam7_rgb.png": png_raw(19, 13, 2, 8, rows, interlace=1),
        "text_chunks.png": png_raw(19, 13, 2, 8, rows, extra=chunk(b"tEXt", b"prompt\0a red star") +
                                   chunk(b"zTXt", b"seed\0\0" + zlib.compress(b"42")) +
                                   chunk(b"iTXt", b"model\0\0\0\0\0caf\xc3\xa9") + chunk(b"gAMA", struct.pack(">I", 45455))),
        "palette_1bit.png": encoded(sketch(17, 9, "1"), "PNG"),
        "palette_4bit.png": encoded(sketch(17, 9).quantize(colors=12), "PNG", bits=4),
        "gray_alpha_interlaced.png": png_raw(9, 9, 4, 8, [bytes(v for x in range(9) for v in (x * 28, 255 - x * 20))] * 9,
                                             interlace=1),
        "rgba_sketch.png": encoded(sketch(24, 16, "RGBA"), "PNG"),
        "sketch_64.png": encoded(sketch(64, 64, "L"), "PNG"),
        "sketch_420.jpg": encoded(sketch(33, 21), "JPEG", quality=80, subsampling=2),
        "sketch_444.jpg": encoded(sketch(33, 21), "JPEG", quality=95, subsampling=0),
        "sketch_restart.jpg": encoded(sketch(40, 24), "JPEG", quality=70, restart_marker_blocks=1),
        "sketch_progressive_gray.jpg": encoded(sketch(21, 30, "L"), "JPEG", progressive=True),
        "sketch_optimized.jpg": encoded(sketch(16, 16), "JPEG", optimize=True),
    }
    made["truncated.png"] = made["adam7_rgb.png"][:-40]
    made["truncated.jpg"] = made["sketch_420.jpg"][:len(made["sketch_420.jpg"]) // 2]
    # 5000 x 4000 is over the server's 4096^2 max_image_pixels: refused from the header
    made["too_big.png"] = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 5000, 4000, 8, 0, 0, 0, 0)) +
                           chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
    for name, data in made.items():
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)


def tokenizer_seeds(out):
    entries = json.load(open(os.path.join(ROOT, "tests", "core", "data", "clip_tricky.json")))
    prompts = [bytes.fromhex(e["hex"]) if "hex" in e else e["text"].encode() for e in entries]
    prompts += [s.encode() for s in (
        "a red star on a plain blue background", "a green heart on a striped white background",
        "A PHOTO of  a Cat!", "don't stop 42 times", "&quot;quoted&quot; &#39;single&#39; &#x1F600; &NotEqualTilde;",
        "&amp;lt;double&amp;gt; &amp;amp;amp; &#0; &#x110000; &#128;&#150;", "tab\there\r\nnew\u2028line",
        "\u0130stanbul \u1e9e \u01c5 \ufb03 \u0587", "\U0001f468\u200d\U0001f469\u200d\U0001f467 family", "<|endoftext|>")]
    for i, p in enumerate(prompts):
        with open(os.path.join(out, "prompt_%02d.txt" % i), "wb") as f:
            f.write(p)


def main():
    for name, make in (("image", image_seeds), ("tokenizer", tokenizer_seeds)):
        if len(sys.argv) > 1 and name not in sys.argv[1:]:
            continue
        out = os.path.join(HERE, "corpus", name)
        shutil.rmtree(out, ignore_errors=True)
        os.makedirs(out)
        make(out)
        print("%s: %d seeds in %s" % (name, len(os.listdir(out)), os.path.relpath(out, ROOT)))


if __name__ == "__main__":
    main()
