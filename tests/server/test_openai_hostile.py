"""Hostile requests to the OpenAI routes (POST /v1/images/edits and /v1/images/generations): bad multipart, huge n,
bad sizes, bad base64, wrong JSON types, unknown fields. Each gets OpenAI's error shape with the status the native
route would give and a message naming the field; none submits a job, and the service answers a good request
afterwards. Through raw HTTP (http.client) to the real binary on the bundled model."""
import base64
import http.client
import json
import os
import re
import subprocess
import tempfile

import pytest

from conftest import ROOT, batch_args, binary, wait_for

STAR = os.path.join(ROOT, "docs", "examples", "star.png")
PROMPT = "a red star on a plain blue background"


def star():
    with open(STAR, "rb") as fh:
        return fh.read()


def serve(*args):
    """Runs `sketchguide serve` on a free port until the generator is closed; yields the port once ready."""
    out = tempfile.TemporaryFile()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKETCHGUIDE_")}
    env["OPENBLAS_NUM_THREADS"] = "1"
    p = subprocess.Popen([binary(), "serve", "--port", "0", "--threads", "1", "--warmup-steps", "1"] + batch_args() +
                         list(args),
                         stdout=out, stderr=subprocess.STDOUT, env=env)

    def text():
        out.seek(0)
        return out.read().decode("utf-8", "replace")
    try:
        m = wait_for(lambda: re.search(r"^listening on http://\S+:(\d+)$", text(), re.M), 120, "the port")
        wait_for(lambda: re.search(r"^ready", text(), re.M), 120, "the model")
        yield int(m.group(1))
    finally:
        p.terminate()
        p.wait(60)
        out.close()


@pytest.fixture(scope="module")
def port():
    yield from serve("--max-body-bytes", "262144")


def request(port, path, body, ctype, headers=None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    try:
        hd = {"Content-Type": ctype} if ctype else {}
        hd.update(headers or {})
        c.request("POST" if body is not None else "GET", path, body=body, headers=hd)
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def form(parts, boundary="hostileB0undary"):
    """parts: (name, bytes-or-text, filename or None). Returns (body, content type)."""
    out = b""
    for name, value, fn in parts:
        value = value if isinstance(value, bytes) else str(value).encode()
        disp = b'form-data; name="%s"' % name.encode() + (b'; filename="%s"' % fn.encode() if fn else b"")
        out += b"--%s\r\nContent-Disposition: %s\r\n\r\n%s\r\n" % (boundary.encode(), disp, value)
    return out + b"--%s--\r\n" % boundary.encode(), "multipart/form-data; boundary=" + boundary


def submitted(port):
    st, data = request(port, "/metrics", None, None)
    assert st == 200
    return int(re.search(rb"^sketchguide_jobs_submitted_total (\d+)$", data, re.M).group(1))


def edit_parts(**extra):
    parts = [("image", star(), "star.png"), ("prompt", PROMPT, None), ("steps", "1", None)]
    return parts + [(k, v, None) for k, v in extra.items()]


BIG = "1" + "0" * 30  # beyond 64 bits
body_ok, ctype_ok = form(edit_parts())
half = body_ok[:len(body_ok) // 2]

# (name, path, body, content type, status, code, param or None, a word the message must hold)
EDIT = "/v1/images/edits"
GEN = "/v1/images/generations"
CASES = [
    ("truncated multipart", EDIT, half, ctype_ok, 400, "bad_request", None, "multipart"),
    ("multipart without a boundary", EDIT, body_ok, "multipart/form-data", 400, "bad_request", None, "boundary"),
    ("a part without a name", EDIT, b"--b\r\nContent-Disposition: form-data\r\n\r\nx\r\n--b--\r\n",
     "multipart/form-data; boundary=b", 400, "bad_request", None, "name"),
    ("image and image[] both", EDIT, form(edit_parts() + [("image[]", star(), "s.png")])[0], ctype_ok, 400,
     "bad_request", "image", "more than once"),
    ("no image", EDIT, form([("prompt", PROMPT, None)])[0], ctype_ok, 400, "bad_request", "image", "required"),
    ("an image that is text", EDIT, form([("image", b"hello", "a.png"), ("prompt", PROMPT, None)])[0], ctype_ok,
     415, "unsupported_media_type", "image", "PNG"),
    ("a corrupt PNG", EDIT, form([("image", star()[:60], "a.png"), ("prompt", PROMPT, None)])[0], ctype_ok, 400,
     "bad_request", "image", "image"),
    ("huge n (multipart)", EDIT, form(edit_parts(n=BIG))[0], ctype_ok, 422, "invalid_parameter", "n", "between"),
    ("n 0", EDIT, form(edit_parts(n=0))[0], ctype_ok, 422, "invalid_parameter", "n", "between"),
    ("n not a number", EDIT, form(edit_parts(n="two"))[0], ctype_ok, 400, "bad_request", "n", "number"),
    ("size too big", EDIT, form(edit_parts(size="1024x1024"))[0], ctype_ok, 422, "invalid_parameter", "size", "64x64"),
    ("size malformed", EDIT, form(edit_parts(size="64x64x64"))[0], ctype_ok, 400, "bad_request", "size", "WIDTHxHEIGHT"),
    ("size of signs", EDIT, form(edit_parts(size="-64x64"))[0], ctype_ok, 400, "bad_request", "size", "WIDTHxHEIGHT"),
    ("size with a NUL", EDIT, form(edit_parts(size=b"64x64\x00"))[0], ctype_ok, 400, "bad_request", "size", "size"),
    ("another response_format", EDIT, form(edit_parts(response_format="png"))[0], ctype_ok, 422, "invalid_parameter",
     "response_format", "b64_json"),
    ("another output_format", EDIT, form(edit_parts(output_format="webp"))[0], ctype_ok, 422, "invalid_parameter",
     "output_format", "png"),
    ("another model", EDIT, form(edit_parts(model="gpt-image-1"))[0], ctype_ok, 404, "model_not_found", "model",
     "shapes"),
    ("a mask (unknown)", EDIT, form(edit_parts() + [("mask", star(), "m.png")])[0], ctype_ok, 400, "bad_request", None,
     "mask"),
    ("dry_run", EDIT, form(edit_parts(dry_run="true"))[0], ctype_ok, 400, "bad_request", "dry_run", "/v1/generate"),
    ("a kept field too long", EDIT, form(edit_parts(user="u" * 1000))[0], ctype_ok, 400, "bad_request", "user", "long"),
    ("text/plain", GEN, b"prompt=x", "text/plain", 415, "unsupported_media_type", None, "multipart"),
    ("a JSON array", GEN, b"[1]", "application/json", 400, "bad_request", None, "object"),
    ("broken JSON", GEN, b'{"prompt": ', "application/json", 400, "bad_request", None, "JSON"),
    ("huge n (JSON)", GEN, ('{"prompt": "x", "n": %s}' % BIG).encode(), "application/json", 422,
     "invalid_parameter", "n", "range"),
    ("n an array", GEN, b'{"prompt": "x", "n": [1]}', "application/json", 400, "bad_request", "n", "string or a number"),
    ("prompt an object", GEN, b'{"prompt": {}}', "application/json", 400, "bad_request", "prompt",
     "string or a number"),
    ("response_format a number", GEN, b'{"prompt": "x", "response_format": 5}', "application/json", 422,
     "invalid_parameter", "response_format", "b64_json"),
    ("size a number", GEN, b'{"prompt": "x", "size": 64}', "application/json", 400, "bad_request", "size",
     "WIDTHxHEIGHT"),
    ("bad base64", GEN, b'{"prompt": "x", "sketch": "!!!"}', "application/json", 400, "bad_request", "sketch",
     "base64"),
    ("a data URL not in base64", GEN, b'{"prompt": "x", "sketch": "data:image/png,abc"}', "application/json", 400,
     "bad_request", "sketch", "base64"),
    ("base64 of text", GEN, json.dumps({"prompt": "x", "sketch": base64.b64encode(b"hello").decode()}).encode(),
     "application/json", 415, "unsupported_media_type", "sketch", "PNG"),
    ("beta without a sketch", GEN, b'{"prompt": "x", "beta": 1}', "application/json", 422, "invalid_parameter",
     "beta", "sketch"),
    ("an unknown field", GEN, b'{"prompt": "x", "style": "vivid"}', "application/json", 400, "bad_request", None,
     "style"),
    ("an empty prompt", GEN, b'{"prompt": ""}', "application/json", 422, "invalid_parameter", "prompt", "empty"),
    ("a body over the limit", GEN, json.dumps({"prompt": "x", "sketch": "A" * 300000}).encode(), "application/json",
     413, "payload_too_large", None, "limit"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_hostile_request(port, case):
    name, path, body, ctype, status, code, param, word = case
    before = submitted(port)
    st, data = request(port, path, body, ctype)
    assert st == status, (name, st, data[:300])
    doc = json.loads(data)
    assert set(doc) == {"error"} and set(doc["error"]) == {"message", "type", "param", "code"}, doc
    e = doc["error"]
    assert e["code"] == code and e["param"] == param, (name, e)
    assert e["type"] == "invalid_request_error", e
    assert word in e["message"], (name, e["message"])
    if param:
        assert e["message"].startswith(param + ":"), e["message"]
    assert submitted(port) == before, "%s submitted a job" % name


def test_a_good_request_after_them(port):
    st, data = request(port, EDIT, body_ok, ctype_ok)
    assert st == 200, data[:300]
    doc = json.loads(data)
    assert set(doc) == {"created", "data", "size", "output_format"} and len(doc["data"]) == 1
    assert base64.b64decode(doc["data"][0]["b64_json"]).startswith(b"\x89PNG\r\n\x1a\n")
    st, data = request(port, GEN, json.dumps({"prompt": PROMPT, "steps": 1}).encode(), "application/json")
    assert st == 200 and json.loads(data)["size"] == "64x64", data[:300]


def test_url_results_expire_with_keep_finished_seconds():
    """A url result lasts keep_finished_seconds (2 here): served at once, then 410 saying the URL expired (not only
    that its job was evicted, which a URL of the default 600 s would say)."""
    for port in serve("--keep-finished-seconds", "2"):
        st, data = request(port, GEN, json.dumps({"prompt": PROMPT, "steps": 1, "response_format": "url"}).encode(),
                           "application/json")
        assert st == 200, data[:300]
        url = json.loads(data)["data"][0]["url"]
        path = url[url.index("/v1/images/files/"):]
        st, data = request(port, path, None, None)
        assert st == 200 and data.startswith(b"\x89PNG\r\n\x1a\n")
        wait_for(lambda: (lambda r: r[0] == 410 and b"the URL expired" in r[1])(request(port, path, None, None)), 60,
                 "the URL to expire")
