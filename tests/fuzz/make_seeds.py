#!/usr/bin/env python3
"""Writes the fuzz targets' seed corpora (tests/fuzz/corpus/NAME/), checked in; rerun after changing the fixtures.

image: the PNG and JPEG fixtures of tests/core/data/images and docs/examples, plus variants they lack (Adam7
interlacing, text chunks, 1/2/4-bit palettes, restart markers, 4:2:0 and 4:4:4 JPEG, a truncated file, a header
over max_image_pixels). tokenizer: the prompts of tests/core/data/clip_tricky.json and a few more. request: a
Content-Type line, then a body of POST /v1/generate (multipart/form-data and JSON, valid and not).
Run with /usr/bin/python3 (it needs PIL): python3 tests/fuzz/make_seeds.py
"""
import base64
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
        "\u0130stanbul \u1e9e \u01c5 \ufb03 \u0587", "\U0001f468\u200d\U0001f469\u200d\U0001f467 family", "<|endoftext|>",
        "\u039f\u0394\u03a5\u03a3\u03a3\u0395\u03a5\u03a3 \u03a3\u0391 \u03a3. A\u03a3\u0301 \u03a3\u0301A")]
    for i, p in enumerate(prompts):
        with open(os.path.join(out, "prompt_%02d.txt" % i), "wb") as f:
            f.write(p)


BOUNDARY = "sgfuzz7MA4YWxkTrZu0gW"


def multipart(fields, boundary=BOUNDARY, preamble=b"", epilogue=b"", padding=b""):
    """A multipart/form-data body: fields are (name, value bytes, filename or None, content type or None)."""
    out = preamble
    for name, value, filename, ctype in fields:
        out += b"--" + boundary.encode() + padding + b"\r\n"
        disp = 'Content-Disposition: form-data; name="%s"' % name
        if filename:
            disp += '; filename="%s"' % filename
        out += disp.encode() + b"\r\n"
        if ctype:
            out += b"Content-Type: " + ctype.encode() + b"\r\n"
        out += b"\r\n" + value + b"\r\n"
    return out + b"--" + boundary.encode() + b"--\r\n" + epilogue


def request_seeds(out):
    png = encoded(sketch(16, 16, "L"), "PNG")
    jpg = encoded(sketch(16, 12), "JPEG", quality=60)
    b64 = base64.b64encode(png).decode()
    form_ct = b"multipart/form-data; boundary=" + BOUNDARY.encode() + b"\n"
    json_ct = b"application/json\n"
    text = lambda name, v: (name, v.encode(), None, None)
    seeds = {
        "form_minimal": form_ct + multipart([text("prompt", "a red star"), ("sketch", png, "s.png", "image/png")]),
        "form_full": form_ct + multipart([
            text("prompt", "a green heart on a striped white background"), text("negative_prompt", "blurry"),
            ("sketch", jpg, "heart.jpg", "image/jpeg"), text("beta", "1.6"), text("stop", "0.5"), text("steps", "30"),
            text("cfg", "8"), text("seed", "42"), text("sampler", "dpmpp_2m"), text("n", "2"), text("invert", "auto"),
            text("timeout_ms", "60000"), text("eta", "0"), text("dry_run", "true")]),
        "form_data_url": form_ct + multipart([text("prompt", "caf\u00e9"), text("sketch", "data:image/png;base64," + b64),
                                              text("stop_step", "10"), text("seed", "-1"), text("invert", "TRUE")]),
        "form_preamble_padding": (b"multipart/form-data; charset=utf-8; boundary=\"" + BOUNDARY.encode() + b"\"\n" +
                                  multipart([text("prompt", "x"), ("sketch", png, None, None)], preamble=b"ignored\r\n",
                                            epilogue=b"ignored too", padding=b" \t")),
        "form_repeated": form_ct + multipart([text("prompt", "a"), text("prompt", "b"), ("sketch", png, "s.png", None)]),
        "form_unknown": form_ct + multipart([text("prompt", "a"), text("colour", "red"), ("sketch", png, "s", None)]),
        "form_no_sketch": form_ct + multipart([text("prompt", "a"), text("steps", "151")]),
        "form_truncated": (form_ct + multipart([text("prompt", "a"), ("sketch", png, "s.png", "image/png")]))[:-60],
        "json_minimal": json_ct + json.dumps({"prompt": "a red star", "sketch": b64}).encode(),
        "json_full": json_ct + json.dumps({
            "prompt": "a red star", "negative_prompt": "", "sketch": "data:image/png;base64," + b64, "beta": 2,
            "stop": 0.3, "steps": 20, "cfg": 7.5, "seed": 7, "sampler": "euler_a", "n": 4, "invert": "false",
            "timeout_ms": 1000, "eta": 0.5, "dry_run": True}).encode(),
        "json_strings": (b"Application/JSON; charset=utf-8\n" +
                         json.dumps({"prompt": "\u00e9\U0001f600", "sketch": b64, "steps": "30", "seed": -1,
                                     "stop_step": 0, "sampler": "ddpm", "invert": True}).encode()),
        "json_escapes": json_ct + b'{"prompt": "\\ud83d\\ude00 \\u0000 \\ud800", "sketch": "' + b64.encode() + b'"}',
        "json_numbers": json_ct + b'{"prompt": "a", "sketch": "' + b64.encode() + b'", "beta": 1e309, "steps": 2.5, '
                                  b'"cfg": -0, "seed": 18446744073709551616, "n": 0}',
        "json_not_object": json_ct + b'["prompt", "a"]',
        "json_broken": json_ct + b'{"prompt": "a", "sketch": ',
        "other_type": b"text/plain\nprompt=a",
        "no_boundary": b"multipart/form-data\n--x\r\n\r\n",
    }
    for name, data in seeds.items():
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)


def main():
    for name, make in (("image", image_seeds), ("tokenizer", tokenizer_seeds), ("request", request_seeds)):
        if len(sys.argv) > 1 and name not in sys.argv[1:]:
            continue
        out = os.path.join(HERE, "corpus", name)
        shutil.rmtree(out, ignore_errors=True)
        os.makedirs(out)
        make(out)
        print("%s: %d seeds in %s" % (name, len(os.listdir(out)), os.path.relpath(out, ROOT)))


if __name__ == "__main__":
    main()
