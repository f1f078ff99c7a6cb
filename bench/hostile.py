#!/usr/bin/python3
"""Hostile-request battery (run by hand, never by the test suite): several hundred malformed, oversized or
ambiguous requests against one `sketchguide serve`, each on its own connection, one kind at a time.

Each request is sent over a raw socket; the reply is read until the server closes or one whole response has been
parsed (Content-Length or chunked), whatever way TCP splits it. A request passes when it is answered within a
second (--limit-s) with what its case expects: by default a 4xx whose body is JSON {"error": {"code", "message"}}
with a message that names the problem (a per-case needle); some cases expect a 2xx (valid but heavy requests, all
dry runs) and a few are allowed to end in a close without an answer (a head that never ends: libmicrohttpd closes
it only at connection_timeout_s, which the run sets to 3 s; docs/config.md). The server's resident memory
(VmRSS) is read before the battery and again after a few idle seconds at its end, and the server must still be
alive and answering. Prints one line per failure and a table per kind: count, statuses, worst latency.

Usage: /usr/bin/python3 bench/hostile.py [--build build] [--limit-s 1] [--only KIND] [--verbose]
       (starts `BUILD/server/sketchguide serve --port 0 --threads 1`; exit status 1 when any case failed)
"""
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import base64
import collections
import io
import json
import re
import socket
import struct
import subprocess
import sys
import tempfile
import time
import zlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAR = os.path.join(ROOT, "docs", "examples", "star.png")
BOUNDARY = "hostileBoundary42"


# ---- raw exchanges ----------------------------------------------------------------------------------------------

def parse_response(data):
    """Returns (status, headers, body) once data holds one whole response, else None."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = data[:end].decode("latin-1").split("\r\n")
    try:
        status = int(lines[0].split()[1])
    except (IndexError, ValueError):
        return (-1, {}, data)
    headers = {}
    for l in lines[1:]:
        k, _, v = l.partition(":")
        headers[k.strip().lower()] = v.strip()
    rest = data[end + 4:]
    if status in (100, 101):  # an interim answer: the real one follows
        nxt = parse_response(rest)
        return nxt
    if headers.get("transfer-encoding", "").lower() == "chunked":
        out = b""
        while True:
            nl = rest.find(b"\r\n")
            if nl < 0:
                return None
            n = int(rest[:nl].split(b";")[0], 16)
            if n == 0:
                return status, headers, out
            if len(rest) < nl + 2 + n + 2:
                return None
            out += rest[nl + 2:nl + 2 + n]
            rest = rest[nl + 2 + n + 2:]
    if "content-length" in headers:
        n = int(headers["content-length"])
        return (status, headers, rest[:n]) if len(rest) >= n else None
    return None  # until the close


def exchange(port, pieces, half_close=False, timeout=20.0, pause=0.0):
    """Sends pieces on a fresh socket and reads one response. Returns (status or None, headers, body, seconds from
    the last byte sent to the answer, closed_without_answer)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    got = b""
    try:
        try:
            for i, p in enumerate(pieces):
                if i and pause:
                    time.sleep(pause)
                s.sendall(p)
            if half_close:
                s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server refused early and closed: its answer may be there to read
        t0 = time.monotonic()
        while True:
            r = parse_response(got)
            if r is not None:
                return r[0], r[1], r[2], time.monotonic() - t0, False
            try:
                d = s.recv(65536)
            except ConnectionResetError:
                d = b""
            except socket.timeout:
                return None, {}, got, time.monotonic() - t0, False
            if not d:
                if b"\r\n\r\n" in got:  # a response that ends at the close
                    end = got.find(b"\r\n\r\n")
                    r = parse_response(got[:end] + b"\r\nContent-Length: %d\r\n\r\n" % (len(got) - end - 4) +
                                       got[end + 4:])
                    return r[0], r[1], r[2], time.monotonic() - t0, False
                return None, {}, got, time.monotonic() - t0, True
            got += d
    finally:
        s.close()


# ---- requests ---------------------------------------------------------------------------------------------------

def star():
    with open(STAR, "rb") as fh:
        return fh.read()


def req(method="POST", path="/v1/generate", headers=(), body=b"", version="HTTP/1.1", host=True, cl=True):
    h = "%s %s %s\r\n" % (method, path, version)
    if host:
        h += "Host: x\r\n"
    h += "Connection: close\r\n"
    for k, v in headers:
        h += "%s: %s\r\n" % (k, v)
    if cl and body is not None and method == "POST" and not any(k.lower() in ("content-length", "transfer-encoding")
                                                                  for k, _ in headers):
        h += "Content-Length: %d\r\n" % len(body)
    return h.encode("latin-1") + b"\r\n" + (body or b"")


def multipart(fields, files=None, boundary=BOUNDARY):
    out = io.BytesIO()
    for k, v in fields:
        v = v if isinstance(v, bytes) else str(v).encode()
        out.write(b"--%s\r\nContent-Disposition: form-data; name=\"%s\"\r\n\r\n%s\r\n" % (boundary.encode(), k.encode(), v))
    for k, fn, data in (files if files is not None else [("sketch", "s.png", star())]):
        out.write(b"--%s\r\nContent-Disposition: form-data; name=\"%s\"; filename=\"%s\"\r\n"
                  b"Content-Type: application/octet-stream\r\n\r\n%s\r\n" % (boundary.encode(), k.encode(),
                                                                            fn.encode(), data))
    out.write(b"--%s--\r\n" % boundary.encode())
    return out.getvalue()


MP = "multipart/form-data; boundary=" + BOUNDARY


def gen_mp(fields, files=None, extra=()):
    return req(headers=[("Content-Type", MP)] + list(extra), body=multipart(fields, files))


def gen_json(text, extra=()):
    if isinstance(text, str):
        text = text.encode("utf-8", "surrogatepass")
    return req(headers=[("Content-Type", "application/json")] + list(extra), body=text)


def json_with_sketch(members):
    """A JSON object text: the star as base64 plus members (raw JSON text after the sketch)."""
    return '{"sketch": "%s", %s}' % (base64.b64encode(star()).decode(), members)


# ---- hostile images ---------------------------------------------------------------------------------------------

def chunk(kind, data, length=None):
    n = len(data) if length is None else length
    return struct.pack(">I", n) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xffffffff)


def png(w, h, extra=b"", idat=None, color=0, depth=8):
    ihdr = chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, color, 0, 0, 0))
    if idat is None:
        idat = zlib.compress(b"".join(b"\0" + b"\xff" * w for _ in range(h)))
    return b"\x89PNG\r\n\x1a\n" + ihdr + extra + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def hostile_images():
    from PIL import Image
    out = []
    out.append(("not an image", b"hello, I am text", "sketch"))
    out.append(("empty file", b"", "sketch"))
    out.append(("PNG magic only", b"\x89PNG\r\n\x1a\n", "sketch"))
    t = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, 8, 0, 0, 0, 0))
    for kind in [b"tEXt", b"zTXt", b"iTXt", b"sPLT"]:
        out.append(("PNG %s declaring 2^31-1 bytes" % kind.decode(), t + struct.pack(">I", 0x7fffffff) + kind +
                    b"k\0" + b"v" * 100, "sketch"))
    bomb = zlib.compress(b"\0" * (200 * 1024 * 1024), 9)
    out.append(("PNG zTXt bomb (200 MiB of text)", png(8, 8, chunk(b"zTXt", b"k\0\0" + bomb)), None))
    out.append(("PNG IDAT bomb (200 MiB for an 8x8 image)", png(8, 8, idat=bomb), "sketch"))
    out.append(("PNG 1x100000000 header", png(1, 100000000, idat=zlib.compress(b"\0\0" * 10)), "sketch"))
    out.append(("PNG 100000x100000 header", png(100000, 100000, idat=zlib.compress(b"\0" * 10)), "sketch"))
    out.append(("PNG 0x0 header", png(0, 0, idat=zlib.compress(b"")), "sketch"))
    out.append(("PNG 4096x4096 zeros (at the pixel limit)", png(4096, 4096, idat=zlib.compress(
        b"".join(b"\0" + b"\0" * 4096 for _ in range(4096)), 9)), None))  # valid: may be accepted (dry run)
    out.append(("PNG 10000 tEXt chunks", png(8, 8, b"".join(chunk(b"tEXt", b"k\0v") for _ in range(10000))),
                "sketch"))
    out.append(("PNG bad CRC", png(8, 8)[:-20] + b"\0\0\0\0" + png(8, 8)[-16:], "sketch"))
    b = io.BytesIO()
    Image.new("L", (64, 64), 255).save(b, "JPEG")
    jpg = b.getvalue()
    out.append(("JPEG truncated", jpg[:len(jpg) // 2], None))  # libjpeg pads a short scan: may be accepted
    out.append(("JPEG header only", jpg[:20], "sketch"))
    b = io.BytesIO()
    Image.new("L", (64, 64), 128).save(b, "JPEG", progressive=True)
    pj = b.getvalue()
    sos = pj.find(b"\xff\xda")
    eoi = pj.rfind(b"\xff\xd9")
    scans = pj[sos:eoi]
    out.append(("JPEG with 5000 scans", pj[:sos] + scans * (5000 // max(1, scans.count(b"\xff\xda"))) + pj[eoi:],
                "sketch"))
    out.append(("JPEG SOF 65535x65535", jpg.replace(b"\xff\xc0\x00\x0b\x08\x00\x40\x00\x40",
                                                    b"\xff\xc0\x00\x0b\x08\xff\xff\xff\xff"), "sketch"))
    out.append(("GIF", b"GIF89a" + b"\0" * 100, "sketch"))
    return out


# ---- the cases --------------------------------------------------------------------------------------------------

class Case:
    def __init__(self, kind, name, pieces, expect="4xx", needle=None, half_close=False, pause=0.0, statuses=None):
        self.kind, self.name, self.pieces = kind, name, pieces if isinstance(pieces, list) else [pieces]
        self.expect, self.needle, self.half_close, self.pause = expect, needle, half_close, pause
        self.statuses = statuses


LIMITS = {"steps": (1, 150, True), "n": (1, 4, True), "timeout_ms": (1, 3600000, True),
          "seed": (-1, 2 ** 63 - 1 - 64, True), "stop_step": (0, 2, True), "cfg": (0, 100, False),
          "beta": (0, 100, False), "stop": (0, 1, False), "eta": (0, 10, False)}
NUM_RE = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?\Z")


def expected_valid(field, text):
    """Whether the server's one number grammar accepts text for field (an oracle: Decimal, not double)."""
    from decimal import Decimal, localcontext
    lo, hi, whole = LIMITS[field]
    if not NUM_RE.match(text):
        return False
    with localcontext() as ctx:
        ctx.prec = 400
        ctx.Emax = 10 ** 6
        ctx.Emin = -10 ** 6
        try:
            v = Decimal(text)
        except Exception:
            return False
        if abs(v.adjusted()) > 1000:
            return False
        if whole and v != v.to_integral_value():
            return False
        return lo <= v <= hi


def number_cases():
    cases = []
    odd = ["0x10", "0x1p3", "1e3", " 5", "5 ", "+5", "NaN", "nan", "Infinity", "-Infinity", "inf", "1e999",
           "-1e999", "1e-999", "-0", "0.0", "00", "01", "1.", ".5", "1e", "1e+", "5\x00", "٥", "5" * 30,
           "-" + "9" * 30, "9223372036854775807", "9223372036854775808", "18446744073709551616", "1.5", "2.0",
           "1E1", "true", "", "5,5", "5;5", "1_000"]
    base = [("prompt", "a star"), ("steps", 2), ("seed", 1), ("dry_run", "true")]
    for field, (lo, hi, whole) in LIMITS.items():
        vals = [str(lo), str(hi), str(lo - 1), str(hi + 1)] + odd
        if not whole:
            vals += [repr(hi + 1e-9), "%s.0000000000000000000001" % hi]
        for v in vals:
            fields = [(k, x) for k, x in base if k != field] + [(field, v)]
            exp = "2xx" if expected_valid(field, v) else "4xx"
            cases.append(Case("number (multipart) " + field, "%s=%r" % (field, v), gen_mp(fields), exp,
                              needle=field if exp == "4xx" else None))
        # as JSON: raw values and strings
        raw = [str(lo), str(hi), str(hi + 1), "1e999", "-1e999", "1e-999", "-0", "true", "false", "[]", "{}",
               "[1]", '{"a":1}', "NaN", "Infinity", "0x10", "+5", '"5 "', '" 5"', '"1e3"', '"0x1p3"', "1.0e1",
               "123456789012345678901234567890", "-123456789012345678901234567890"]
        for v in raw:
            members = '"prompt": "a star", "dry_run": true, %s"%s": %s' % (
                '"steps": 2, ' if field != "steps" else "", field, v)
            text = v[1:-1] if v.startswith('"') else v
            jvalid = NUM_RE.match(v) is not None or v.startswith('"')
            exp = "2xx" if jvalid and expected_valid(field, text) else "4xx"
            needle = None if exp == "2xx" else (None if not jvalid else field)
            cases.append(Case("number (JSON) " + field, "%s: %s" % (field, v), gen_json(json_with_sketch(members)),
                              exp, needle=needle))
    return cases


def framing_cases():
    body = b'{"prompt": "x"}'
    smug = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    H = "POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    cases = []
    variants = [
        ("CL + TE", "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n", "Transfer-Encoding"),
        ("TE + CL", "Transfer-Encoding: chunked\r\nContent-Length: 15\r\n", body, "Transfer-Encoding"),
        ("two CL", "Content-Length: 15\r\nContent-Length: 0\r\n", body, "Content-Length"),
        ("two equal CL", "Content-Length: 15\r\nContent-Length: 15\r\n", body, "Content-Length"),
        ("CL list", "Content-Length: 15, 15\r\n", body, "html"),
        ("CL negative", "Content-Length: -5\r\n", body, "html"),
        ("CL plus sign", "Content-Length: +15\r\n", body, "html"),
        ("CL hex", "Content-Length: 0xf\r\n", body, "html"),
        ("CL with space inside", "Content-Length: 1 5\r\n", body, "html"),
        ("CL huge", "Content-Length: 99999999999999999999999\r\n", body, "html"),
        ("CL 2^64", "Content-Length: 18446744073709551616\r\n", body, "html"),
        ("CL empty", "Content-Length: \r\n", body, "html"),
        ("TE xchunked", "Transfer-Encoding: xchunked\r\n", b"0\r\n\r\n", "xchunked"),
        ("TE chunked-x", "Transfer-Encoding: chunked-x\r\n", b"0\r\n\r\n", "chunked"),
        ("TE gzip, chunked", "Transfer-Encoding: gzip, chunked\r\n", b"0\r\n\r\n", "chunked"),
        ("TE chunked, identity", "Transfer-Encoding: chunked, identity\r\n", b"0\r\n\r\n", "chunked"),
        ("TE identity", "Transfer-Encoding: identity\r\n", b"0\r\n\r\n", "identity"),
        ("TE twice", "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n", "Transfer-Encoding"),
        ("TE CHUNKED upper case + CL", "Transfer-Encoding: CHUNKED\r\nContent-Length: 5\r\n", b"0\r\n\r\n", "Transfer"),
        ("TE tab before value + CL", "Transfer-Encoding:\tchunked\r\nContent-Length: 5\r\n", b"0\r\n\r\n", "Transfer"),
        ("TE value with tab inside", "Transfer-Encoding: chunked\t,\r\n", b"0\r\n\r\n", "chunked"),
        ("TE chunked NUL", "Transfer-Encoding: chunked\x00\r\n", b"0\r\n\r\n", "lenient"),
        ("TE chunked NUL + CL", "Transfer-Encoding: chunked\x00\r\nContent-Length: 5\r\n", b"0\r\n\r\n", None),
        ("TE space before colon", "Transfer-Encoding : chunked\r\nContent-Length: 5\r\n", b"0\r\n\r\n", "header name"),
        ("TE tab before colon", "Transfer-Encoding\t: chunked\r\nContent-Length: 5\r\n", b"0\r\n\r\n", "header name"),
        ("TE folded onto next line", "Transfer-Encoding:\r\n chunked\r\nContent-Length: 5\r\n", b"0\r\n\r\n", "folded"),
        ("CL folded", "Content-Length:\r\n 15\r\n", body, "folded"),
        ("folded header X", "X-A: a\r\n b\r\nContent-Length: 15\r\n", body, "lenient"),
        ("TE folded after a value", "Transfer-Encoding: identity\r\n\tchunked\r\n", b"0\r\n\r\n", "folded"),
        ("TE folded, tab", "Transfer-Encoding:\r\n\tchunked\r\n", b"0\r\n\r\n", "folded"),
        ("TE with quoted value", 'Transfer-Encoding: "chunked"\r\n', b"0\r\n\r\n", "chunked"),
        ("TE x-chunked prefix", "X-Transfer-Encoding: chunked\r\nContent-Length: 15\r\n", body, "2xx?"),
        ("bad chunk size", "Transfer-Encoding: chunked\r\n", b"zz\r\n" + body + b"\r\n0\r\n\r\n", "html"),
        ("chunk size overflow", "Transfer-Encoding: chunked\r\n", b"fffffffffffffffffff\r\n" + body + b"\r\n0\r\n\r\n", "html"),
        ("chunk ext junk", "Transfer-Encoding: chunked\r\n", b"f;\x01\x02\r\n" + body + b"\r\n0\r\n\r\n", "lenient"),
    ]
    for name, hdr, b, needle in variants:
        if needle == "2xx?":
            continue
        exp = {"html": "4xx-html-ok", "lenient": "lenient"}.get(needle, "4xx-once")
        cases.append(Case("smuggling", name, (H + hdr + "\r\n").encode("latin-1") + b + smug, exp,
                          needle if exp == "4xx-once" else None))
    # line endings
    cases.append(Case("line endings", "bare LF everywhere",
                      b"GET /healthz HTTP/1.1\nHost: x\nContent-Length: 0\n\n" + smug, "lenient"))
    cases.append(Case("line endings", "bare LF with CL+TE",
                      b"POST /v1/generate HTTP/1.1\nHost: x\nContent-Length: 5\nTransfer-Encoding: chunked\n\n0\n\n" + smug,
                      "4xx-once", "Transfer-Encoding"))
    cases.append(Case("line endings", "CR without LF in a header",
                      b"GET /healthz HTTP/1.1\r\nHost: x\rX-A: b\r\n\r\n" + smug, "4xx-or-close-once"))
    cases.append(Case("line endings", "CR without LF hiding TE",
                      b"POST /v1/generate HTTP/1.1\r\nHost: x\r\nX: a\rTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n" + smug,
                      "4xx-or-close-once"))
    cases.append(Case("line endings", "CR in request line",
                      b"GET /healthz\r HTTP/1.1\r\nHost: x\r\n\r\n", "4xx-or-close-once"))
    return cases


def head_cases():
    cases = []
    for n in [65, 100, 1000, 3000]:
        cases.append(Case("many headers", "%d header fields" % n,
                          req("GET", "/healthz", [("X-H%d" % i, "v") for i in range(n)]), "4xx-html-ok" if n > 2000 else "4xx", "header fields"))
    for size in [33000, 70000, 130000, 300000]:
        cases.append(Case("huge header", "one %d-byte field" % size,
                          req("GET", "/healthz", [("X-Big", "a" * size)]), "4xx-html-ok", None))
    for size in [2000, 8000, 33000, 70000, 130000, 300000]:
        cases.append(Case("huge URL", "%d-byte path" % size, req("GET", "/" + "a" * size), "4xx-html-ok", None))
    for n in [33, 100, 1000, 10000]:
        cases.append(Case("many query args", "%d arguments" % n,
                          req("GET", "/healthz?" + "&".join("a%d=1" % i for i in range(n))), "4xx", "query"))
    cases.append(Case("many query args", "33 empty arguments", req("GET", "/healthz?" + "&" * 33), "4xx", "query"))
    cases.append(Case("many query args", "one 60000-byte argument", req("GET", "/healthz?a=" + "b" * 60000), "any"))
    for m in ["FOO", "PUT", "PATCH", "TRACE", "CONNECT", "get", "G\x01T", "GET GET", "PROPFIND", "M" * 100, ""]:
        cases.append(Case("bad method", repr(m)[:40], req(m, "/healthz", cl=False), "4xx-or-close", None))
    cases.append(Case("bad method", "DELETE /v1/generate", req("DELETE", "/v1/generate"), "4xx", "DELETE"))
    cases.append(Case("bad method", "CONNECT authority", b"CONNECT x:443 HTTP/1.1\r\nHost: x\r\n\r\n", "4xx-or-close"))
    cases.append(Case("bad version", "HTTP/1.2 (read as 1.1)", req("GET", "/healthz", version="HTTP/1.2"), "2xx"))
    for v in ["HTTP/2.0", "HTTP/0.9", "HTTP/1.10", "HTTP/11", "http/1.1", "HTTP/1.1x", "HTTP/9.9",
              "FOO/1.1", "HTTP/", "HTTP/1.1 extra"]:
        cases.append(Case("bad version", v, req("GET", "/healthz", version=v), "4xx-html-ok", None))
    cases.append(Case("bad version", "no version (HTTP/0.9 line)", b"GET /healthz\r\n\r\n", "4xx-html-ok"))
    cases.append(Case("bad version", "HTTP/1.0 no Host", req("GET", "/healthz", version="HTTP/1.0", host=False), "2xx"))
    for p in ["http://x/healthz", "http://evil.example/v1/info", "https://x:443/healthz", "//healthz", "*",
              "healthz", "/healthz#frag", "/healthz?", "/HEALTHZ", "/healthz/"]:
        cases.append(Case("absolute-form / odd target", p, req("GET", p), "any"))
    for p in ["/ui/../healthz", "/ui/..%2fhealthz", "/ui/%2e%2e/%2e%2e/etc/passwd", "/ui/..%5c..%5cwin.ini",
              "/%2e%2e/%2e%2e/etc/passwd", "/ui/%252e%252e", "/v1/jobs/..%2f..%2fhealthz", "/ui/%ff%fe",
              "/ui/%c0%ae%c0%ae", "/ui/%", "/ui/%zz", "/v1/jobs/%00", "/ui/a%00b"]:
        cases.append(Case("dot and percent paths", p, req("GET", p), "4xx-or-close", None))
    cases.append(Case("NUL", "NUL in the path", b"GET /healthz\x00x HTTP/1.1\r\nHost: x\r\n\r\n", "lenient"))
    cases.append(Case("NUL", "NUL in a header value", b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n",
                      "lenient"))
    cases.append(Case("NUL", "NUL in a header name", b"GET /healthz HTTP/1.1\r\nHost: x\r\nX\x00A: ab\r\n\r\n",
                      "4xx-html-ok"))
    cases.append(Case("NUL", "NUL in Content-Type", req(headers=[("Content-Type", "application/json\x00x")],
                                                        body=b'{"prompt":"x"}'), "4xx-or-close"))
    cases.append(Case("NUL", "NUL in Host", b"GET /healthz HTTP/1.1\r\nHost: x\x00y\r\n\r\n", "lenient"))
    cases.append(Case("headers", "header without colon", b"GET /healthz HTTP/1.1\r\nHost: x\r\nNoColon\r\n\r\n",
                      "4xx-html-ok"))
    cases.append(Case("headers", "empty header name", b"GET /healthz HTTP/1.1\r\nHost: x\r\n: v\r\n\r\n",
                      "lenient"))
    cases.append(Case("headers", "8-bit header value", b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: \xff\xfe\r\n\r\n", "any"))
    cases.append(Case("headers", "a request line that starts with NUL", b"\x00\x01\x02garbage\r\n\r\n", "timeout-close"))
    cases.append(Case("headers", "binary noise", bytes(range(1, 256)) * 20, "4xx-or-close"))
    for p in ["/v1/jobs/" + "a" * 5000, "/v1/jobs/%00", "/v1/jobs/x/images/99999999", "/v1/jobs/x/images/-1",
              "/v1/jobs/x/images/1e3", "/v1/jobs/x/events", "/v1/jobs/" + "0" * 32 + "/images/0",
              "/v1/jobs/../../healthz", "/ui/" + "x" * 200]:
        cases.append(Case("job and file routes", p[:60], req("GET", p), "4xx", None))
    cases.append(Case("job and file routes", "a long query on a file", req("GET", "/ui/app.js?v=" + "1" * 1000), "2xx"))
    cases.append(Case("job and file routes", "DELETE unknown job", req("DELETE", "/v1/jobs/nope"), "4xx", "nope"))
    cases.append(Case("job and file routes", "If-None-Match of 30000 bytes",
                      req("GET", "/ui/app.js", [("If-None-Match", "W/\"x\", " * 3000)]), "any"))
    cases.append(Case("job and file routes", "Range header", req("GET", "/healthz", [("Range", "bytes=0-0,1-1," * 100)]),
                      "any"))
    return cases


def body_cases():
    cases = []
    ok = [("prompt", "a star"), ("steps", 2), ("seed", 1), ("dry_run", "true")]
    # prompts
    cases.append(Case("prompt", "invalid UTF-8", gen_mp([("prompt", b"a \xff\xfe star")] + ok[1:]), "4xx", "prompt"))
    cases.append(Case("prompt", "overlong UTF-8 (C0 AF)", gen_mp([("prompt", b"a \xc0\xaf")] + ok[1:]), "4xx", "prompt"))
    cases.append(Case("prompt", "overlong NUL (C0 80)", gen_mp([("prompt", b"a\xc0\x80b")] + ok[1:]), "4xx", "prompt"))
    cases.append(Case("prompt", "overlong 4-byte", gen_mp([("prompt", b"\xf0\x80\x80\xaf")] + ok[1:]), "4xx", "prompt"))
    cases.append(Case("prompt", "surrogate in UTF-8 (ED A0 80)", gen_mp([("prompt", b"\xed\xa0\x80")] + ok[1:]), "4xx", "prompt"))
    cases.append(Case("prompt", "above U+10FFFF", gen_mp([("prompt", b"\xf4\x90\x80\x80")] + ok[1:]), "4xx", "prompt"))
    cases.append(Case("prompt", "NUL in prompt", gen_mp([("prompt", b"a\x00b")] + ok[1:]), "4xx", "prompt"))
    cases.append(Case("prompt", "truncated sequence at end", gen_mp([("prompt", b"ab\xe2\x82")] + ok[1:]), "4xx", "prompt"))
    cases.append(Case("prompt", "1 MB prompt", gen_mp([("prompt", "a" * 1000000)] + ok[1:]), "4xx", "prompt"))
    cases.append(Case("prompt", "1 MB negative_prompt", gen_mp(ok + [("negative_prompt", "a" * 1000000)]), "4xx",
                      "negative_prompt"))
    cases.append(Case("prompt", "empty prompt", gen_mp([("prompt", "")] + ok[1:]), "4xx", "prompt"))
    cases.append(Case("prompt", "no prompt", gen_mp(ok[1:]), "4xx", "prompt"))
    cases.append(Case("prompt", "1 MB prompt as JSON", gen_json(json_with_sketch('"prompt": "%s"' % ("a" * 1000000))),
                      "4xx", "prompt"))
    cases.append(Case("prompt", "prompt at the limit (2000 bytes)", gen_mp([("prompt", "a" * 2000)] + ok[1:]), "2xx"))
    cases.append(Case("prompt", "2001 bytes", gen_mp([("prompt", "a" * 2001)] + ok[1:]), "4xx", "prompt"))
    cases.append(Case("prompt", "1000 x 2-byte chars", gen_mp([("prompt", "é" * 1000)] + ok[1:]), "2xx"))
    # JSON bombs and edges
    sk = base64.b64encode(star()).decode()
    J = lambda t, exp="4xx", needle=None, name=None: cases.append(
        Case("JSON", name or t[:50], gen_json(t), exp, needle))
    J("[" * 100000 + "]" * 100000, name="100k nested arrays")
    J('{"prompt": ' + "[" * 100000 + "]" * 100000 + "}", name="100k nested arrays in prompt")
    J('{"a":' * 100000 + "1" + "}" * 100000, name="100k nested objects")
    J('{"prompt": [' + ",".join(["0"] * 2000000) + "]}", name="array of 2M zeros in prompt")
    J('{"prompt": [' + ",".join(['""'] * 1500000) + "]}", name="array of 1.5M empty strings")
    J('{"prompt": {' + ",".join('"k%d":0' % i for i in range(300000)) + "}}", name="object of 300k members")
    J("[" + ",".join(["{}"] * 2000000) + "]", name="array of 2M objects")
    J('{' + ",".join('"k%d":0' % i for i in range(300000)) + "}", name="300k unknown keys")
    J('{"prompt": "a", "prompt": "b", "sketch": "%s"}' % sk, needle="prompt", name="duplicate key")
    J('{"prompt": "a\\u0000b", "sketch": "%s"}' % sk, name="\\u0000 in prompt")
    J('{"prompt": "a\\ud800b", "sketch": "%s"}' % sk, name="lone surrogate \\ud800")
    J('{"prompt": "a\\udc00", "sketch": "%s"}' % sk, name="lone low surrogate")
    J('{"prompt": "\\ud83d\\ude00 star", "sketch": "%s", "dry_run": true}' % sk, "2xx", name="surrogate pair")
    J('{"prompt": "x", "bogus": 1, "sketch": "%s"}' % sk, needle="bogus", name="unknown field")
    J('{"Prompt": "x", "sketch": "%s"}' % sk, needle="Prompt", name="field in another case")
    J("", needle="empty", name="empty body")
    J("   \r\n", needle="empty", name="blank body")
    J("null", name="null")
    J("[]", name="[]")
    J('"prompt"', name="a string")
    J("{", name="unterminated object")
    J('{"prompt": "x"} {"prompt": "y"}', name="two objects")
    J('{"prompt": "x",}', name="trailing comma")
    J("{'prompt': 'x'}", name="single quotes")
    J('{"prompt": "x"}\x00', name="NUL after the object")
    J('\xef\xbb\xbf{"prompt": "x"}', name="BOM")
    J('{"prompt": "%s", "sketch": "%s", "dry_run": true}' % ("\\u00e9" * 1001, sk), "4xx", "prompt",
      name="escapes over the limit")
    J('{"prompt": "%s", "sketch": "%s", "dry_run": true}' % ("\\u00e9" * 1000, sk), "2xx", name="escapes at the limit")
    cases.append(Case("JSON", "invalid UTF-8 in a JSON string", gen_json(b'{"prompt": "\xff", "sketch": "x"}'), "4xx"))
    cases.append(Case("JSON", "overlong UTF-8 in JSON", gen_json(b'{"prompt": "\xc0\xaf", "sketch": "x"}'), "4xx"))
    # sketches
    for name, data, needle in hostile_images():
        exp = "4xx" if needle else "2xx-or-4xx"
        cases.append(Case("sketch file", name, gen_mp(ok, [("sketch", "s.png", data)]), exp, needle))
    cases.append(Case("sketch base64", "garbage base64", gen_json(json_with_sketch('"prompt": "x"').replace(
        '"sketch": "', '"sketch": "!!!')), "4xx", "sketch"))
    cases.append(Case("sketch base64", "base64 of text", gen_json('{"prompt":"x","sketch":"aGVsbG8="}'), "4xx", "sketch"))
    cases.append(Case("sketch base64", "data after padding", gen_json('{"prompt":"x","sketch":"aGVsbG8=aGVs"}'),
                      "4xx", "sketch"))
    cases.append(Case("sketch base64", "data: URL text/plain", gen_json('{"prompt":"x","dry_run":true,"sketch":"data:text/plain;base64,%s"}' % sk),
                      "2xx-or-4xx", "sketch"))
    cases.append(Case("sketch base64", "data: URL not base64", gen_json('{"prompt":"x","sketch":"data:image/png,%s"}' % sk),
                      "4xx", "sketch"))
    cases.append(Case("sketch base64", "data: URL without comma", gen_json('{"prompt":"x","sketch":"data:image/png;base64"}'),
                      "4xx", "sketch"))
    cases.append(Case("sketch base64", "sketch as a number", gen_json('{"prompt":"x","sketch":5}'), "4xx", "sketch"))
    cases.append(Case("sketch base64", "sketch as an array", gen_json('{"prompt":"x","sketch":[1]}'), "4xx", "sketch"))
    cases.append(Case("sketch base64", "sketch empty string", gen_json('{"prompt":"x","sketch":""}'), "4xx", "sketch"))
    cases.append(Case("sketch base64", "16 MiB of 'A'", gen_json('{"prompt":"x","sketch":"%s"}' % ("A" * (16 << 20))),
                      "4xx"))
    # multipart
    body = multipart(ok)
    M = lambda name, ctype, b, needle=None, exp="4xx": cases.append(
        Case("multipart", name, req(headers=[("Content-Type", ctype)], body=b), exp, needle))
    M("no boundary parameter", "multipart/form-data", body, "boundary")
    M("empty boundary", "multipart/form-data; boundary=", body, "boundary")
    M("boundary of 71 chars", "multipart/form-data; boundary=" + "b" * 71, body, "boundary")
    M("boundary of 10000 chars", "multipart/form-data; boundary=" + "b" * 10000, body, "boundary")
    M("two boundary parameters", MP + "; boundary=other", body, exp="2xx-or-4xx")
    M("boundary not in body", "multipart/form-data; boundary=zzz", body, None)
    M("unterminated quoted boundary", 'multipart/form-data; boundary="abc', body, "boundary")
    M("boundary with CR", "multipart/form-data; boundary=a\rb", body, None)
    M("no closing delimiter", MP, body.replace(b"--" + BOUNDARY.encode() + b"--", b""), "closing")
    M("part headers that never end", MP, b"--" + BOUNDARY.encode() + b"\r\n" + b"X-A: " + b"a" * 500000, "header")
    M("part header lines forever", MP, b"--" + BOUNDARY.encode() + b"\r\n" + b"X-A: a\r\n" * 50000, "header")
    M("thousands of parts (same name)", MP, b"".join(b"--%s\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\nx\r\n"
                                                     % BOUNDARY.encode() for _ in range(5000)) + b"--" + BOUNDARY.encode() + b"--\r\n",
      "prompt")
    M("thousands of nameless parts", MP, b"".join(b"--%s\r\nContent-Disposition: form-data\r\n\r\nx\r\n"
                                                  % BOUNDARY.encode() for _ in range(5000)), "name")
    M("thousands of empty parts", MP, (b"--" + BOUNDARY.encode() + b"\r\n\r\n\r\n") * 5000, "Content-Disposition")
    M("100k delimiters", MP, b"\r\n".join([b"--" + BOUNDARY.encode()] * 100000), None)
    M("unknown part", MP, multipart(ok + [("bogus", "1")]), "bogus")
    M("empty first part then repeat", MP, multipart([("negative_prompt", "")] + ok + [("negative_prompt", "x")]),
      "negative_prompt")
    M("part not form-data", MP, body.replace(b"form-data; name", b"attachment; name"), "form-data")
    M("two Content-Disposition", MP, body.replace(b"Content-Disposition: form-data; name=\"prompt\"",
                                                  b"Content-Disposition: form-data; name=\"prompt\"\r\n"
                                                  b"Content-Disposition: form-data; name=\"steps\""), "Content-Disposition")
    M("NUL in part name", MP, body.replace(b'name="prompt"', b'name="pro\x00mpt"'), None)
    M("bare LF part headers", MP, body.replace(b"\"\r\n\r\n", b"\"\n\n"), None)
    M("random bytes", MP, os.urandom(20000), None)
    M("sketch as a text field (no filename)", MP, multipart(ok + [("sketch", base64.b64encode(star()).decode())], files=[]),
      exp="2xx-or-4xx")
    M("data: URL in a multipart field", MP, multipart(ok + [("sketch", "data:image/png;base64," +
                                                              base64.b64encode(star()).decode())], files=[]), exp="2xx")
    # the other fields: names, booleans
    for k, v, needle in [("sampler", "DDIM", "sampler"), ("sampler", "ddim\x00", "sampler"), ("sampler", "x" * 300, "sampler"),
                         ("sampler", "", "sampler"), ("invert", "yes", None), ("invert", "maybe", "invert"), ("invert", "", "invert"),
                         ("dry_run", "yes", None), ("dry_run", "maybe", "dry_run"), ("dry_run", "TRUE", None), ("dry_run", "2", "dry_run"),
                         ("negative_prompt", b"\xff", "negative_prompt"), ("negative_prompt", "", None)]:
        fields = [("prompt", "a star"), ("steps", 2), ("seed", 1)] + ([("dry_run", "true")] if k != "dry_run" else []) + [(k, v)]
        cases.append(Case("other fields", "%s=%r" % (k, v[:20]), gen_mp(fields), "2xx-or-4xx" if needle is None else "4xx",
                          needle))
    for members, needle in [('"prompt": "x", "dry_run": "maybe"', "dry_run"), ('"prompt": "x", "dry_run": 2', "dry_run"),
                            ('"prompt": "x", "sampler": 5', "sampler"), ('"prompt": "x", "invert": null, "dry_run": true', None),
                            ('"prompt": null', "prompt"), ('"prompt": true, "dry_run": true', None), ('"prompt": 12, "dry_run": true', None)]:
        cases.append(Case("other fields", "JSON " + members[:40], gen_json(json_with_sketch(members)),
                          "4xx" if needle else "2xx-or-4xx", needle))
    cases.append(Case("other fields", "async with a bad body", gen_mp([("prompt", "x"), ("steps", "x")],
                                                                      extra=[("Prefer", "respond-async")]), "4xx", "steps"))
    # content types
    for ct in ["text/plain", "application/jsonx", "application/json-patch+json", "multipart/form-datax; boundary=a",
               "multipart/mixed; boundary=" + BOUNDARY, "application/x-www-form-urlencoded", "", "*/*",
               "application/json\tx", "APPLICATION/JSON", "application/json; charset=utf-8",
               "application/json;;;", "image/png"]:
        b = json_with_sketch('"prompt": "x", "dry_run": true').encode()
        valid = ct.lower().startswith("application/json") and ct not in ("application/jsonx", "application/json-patch+json",
                                                                          "application/json\tx")
        cases.append(Case("content type", repr(ct), req(headers=[("Content-Type", ct)] if ct else [], body=b),
                          "2xx" if valid else "4xx", None))
    cases.append(Case("content type", "no Content-Type header", req(body=b'{"prompt":"x"}'), "4xx", None))
    return cases


def connection_cases():
    cases = []
    body = multipart([("prompt", "a star"), ("steps", 2), ("seed", 1), ("dry_run", "true")])
    head = ("POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n" % (MP, len(body))).encode()
    cases.append(Case("half-close", "half a body then half-close", [head + body[:len(body) // 2]], "4xx-or-close",
                      half_close=True))
    cases.append(Case("half-close", "half a head then half-close", [head[:30]], "4xx-or-close", half_close=True))
    cases.append(Case("half-close", "whole request then half-close", [head + body], "2xx", half_close=True))
    cases.append(Case("half-close", "Content-Length longer than the body, half-close",
                      [head.replace(b"Length: %d" % len(body), b"Length: %d" % (len(body) + 5000)) + body],
                      "4xx-or-close", half_close=True))
    big = ("POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Type: %s\r\nContent-Length: %d\r\nExpect: 100-continue\r\n\r\n"
           % (MP, 1 << 40)).encode()
    cases.append(Case("expect", "100-continue with a 1 TiB length", big, "4xx", "body"))
    big2 = big.replace(b"%d" % (1 << 40), b"%d" % (17 << 20))
    cases.append(Case("expect", "100-continue with 17 MiB", big2, "4xx", "body"))
    cases.append(Case("expect", "Expect: something-else", req("GET", "/healthz", [("Expect", "x-foo")]), "any"))
    cases.append(Case("expect", "17 MiB body sent", req(headers=[("Content-Type", MP)], body=b"a" * (17 << 20)), "4xx", "body"))
    cases.append(Case("expect", "chunked body over the limit",
                      b"POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                      + (b"100000\r\n" + b"a" * 0x100000 + b"\r\n") * 20 + b"0\r\n\r\n", "4xx-or-close", "body"))
    # pipelined after a refused request: only the refusal is answered
    refused = req("GET", "/healthz", [("X-H%d" % i, "v") for i in range(70)]).replace(b"Connection: close\r\n", b"")
    cases.append(Case("pipelining", "two requests after a 431", refused + b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * 2,
                      "4xx-once", "header fields"))
    refused = req("POST", "/v1/generate", [("Content-Type", "text/plain")], body=b"abc").replace(b"Connection: close\r\n", b"")
    cases.append(Case("pipelining", "request after a 415", refused + b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
                      "4xx-first", None))
    refused = req("GET", "/nope").replace(b"Connection: close\r\n", b"")
    cases.append(Case("pipelining", "request after a 404", refused + b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
                      "4xx-first", None))
    # slowloris: a head that never ends (allowed to close at connection_timeout_s without an answer)
    cases.append(Case("slowloris", "a head without its blank line", b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: b\r\n",
                      "timeout-close"))
    cases.append(Case("slowloris", "half a request line", b"GET /heal", "timeout-close"))
    # valid but heavy: bounded by the limits, answered at once as dry runs
    heavy = [("prompt", "a star"), ("steps", 150), ("n", 4), ("seed", 1), ("dry_run", "true")]
    cases.append(Case("heavy", "n 4, steps 150 (dry run)", gen_mp(heavy), "2xx"))
    cases.append(Case("heavy", "n 5, steps 150", gen_mp(heavy[:2] + [("n", 5)] + heavy[3:]), "4xx", "n"))
    cases.append(Case("heavy", "steps 151, n 4", gen_mp([heavy[0], ("steps", 151)] + heavy[2:]), "4xx", "steps"))
    cases.append(Case("heavy", "timeout_ms max (dry run)", gen_mp(heavy + [("timeout_ms", 3600000)]), "2xx"))
    cases.append(Case("heavy", "steps 150 stop_step 150 (dry run)", gen_mp(heavy + [("stop_step", 150)]), "2xx"))
    return cases


# ---- checks -----------------------------------------------------------------------------------------------------

def check(c, res, limit_s, port):
    st, hd, body, secs, closed = res
    ctype = hd.get("content-type", "")
    problems = []
    is_json_err = False
    msg = ""
    if st is not None and ctype.startswith("application/json"):
        try:
            e = json.loads(body)["error"]
            msg = e["message"]
            is_json_err = isinstance(e.get("code"), str) and isinstance(msg, str) and msg
        except Exception:
            pass
    e = c.expect
    if e == "timeout-close":
        return problems  # allowed: answered or closed at connection_timeout_s
    if secs > limit_s:
        problems.append("slow (%.2f s)" % secs)
    if st is None:
        if not (closed and e in ("4xx-or-close", "4xx-or-close-once")):
            problems.append("no answer (%s)" % ("closed" if closed else "timed out"))
        return problems
    if e in ("2xx",):
        if not 200 <= st < 300:
            problems.append("status %d, wanted 2xx: %s" % (st, body[:160]))
        return problems
    if e == "lenient":  # read leniently by libmicrohttpd before any hook (docs/config.md): no 5xx, no crash
        return ["lenient-by-libmicrohttpd"] if st < 500 else ["status %d" % st]
    if e == "4xx-html-ok" and st == 505:
        return ["html-by-libmicrohttpd"] if not is_json_err else problems
    if e == "any":
        if st >= 500:
            problems.append("status %d" % st)
        return problems
    if e == "2xx-or-4xx" and 200 <= st < 300:
        return problems
    if not 400 <= st < 500:
        problems.append("status %d, wanted 4xx: %s" % (st, body[:160]))
        return problems
    if e == "4xx-html-ok" and not is_json_err:
        return ["html-by-libmicrohttpd"] if st in (400, 413, 414, 431, 505) else ["status %d not JSON" % st]
    if not is_json_err:
        problems.append("not a JSON error (%d %s): %r" % (st, ctype, body[:120]))
    elif c.needle and c.needle.lower() not in msg.lower():
        problems.append("message %r does not name %r" % (msg, c.needle))
    return problems


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


def count_responses(port, c):
    """For the *-once kinds: the number of responses the pieces get (the bytes after a refused head must never be
    answered as a second request)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=20)
    got = b""
    try:
        s.sendall(b"".join(c.pieces))
        while True:
            try:
                d = s.recv(65536)
            except (ConnectionResetError, socket.timeout):
                break
            if not d:
                break
            got += d
    except (BrokenPipeError, ConnectionResetError):
        pass
    finally:
        s.close()
    return got.count(b"HTTP/1.1 ") + got.count(b"HTTP/1.0 ")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--limit-s", type=float, default=1.0)
    ap.add_argument("--only", default="")
    ap.add_argument("--verbose", action="store_true")
    a = ap.parse_args()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKETCHGUIDE_")}
    env["OPENBLAS_NUM_THREADS"] = "1"
    errf = tempfile.TemporaryFile()
    proc = subprocess.Popen([os.path.join(a.build, "server", "sketchguide"), "serve", "--port", "0", "--threads", "1",
                             "--warmup-steps", "1", "--connection-timeout-s", "3"], stdout=subprocess.PIPE,
                            stderr=errf, env=env, text=True)
    try:
        m = re.match(r"listening on http://(\S+):(\d+)$", proc.stdout.readline().strip())
        port = int(m.group(2))
        assert proc.stdout.readline().startswith("ready")
        ok = exchange(port, [req("GET", "/healthz")])
        assert ok[0] == 200, ok
        # warm the paths once (a dry run and an error) so that the baseline holds what any first request allocates
        for c in [Case("", "", gen_mp([("prompt", "x"), ("dry_run", "true")])), Case("", "", gen_json("{"))]:
            exchange(port, c.pieces)
        time.sleep(2)
        base = rss_kb(proc.pid)
        peak = base
        print("baseline VmRSS %d kB" % base)
        cases = framing_cases() + head_cases() + number_cases() + body_cases() + connection_cases()
        if a.only:
            cases = [c for c in cases if a.only in c.kind]
        table = collections.OrderedDict()
        failures = 0
        for c in cases:
            res = exchange(port, c.pieces, half_close=c.half_close, pause=c.pause,
                           timeout=8.0 if c.expect == "timeout-close" else 20.0)
            probs = check(c, res, a.limit_s, port)
            if not probs and c.expect.endswith("-once"):
                n = count_responses(port, c)
                if n > 1:
                    probs.append("%d responses: the bytes after the head were run as a request" % n)
            if c.expect == "4xx-first" and not probs:
                n = count_responses(port, c)
                if n > 1:
                    probs.append("%d responses after a refusal" % n)
            if proc.poll() is not None:
                probs.append("THE SERVER DIED (exit %s)" % proc.returncode)
            rss = rss_kb(proc.pid) if proc.poll() is None else -1
            if a.verbose and rss - peak > 10000:
                print("rss   %-28s %-44s VmRSS %d kB (+%d kB over the peak so far)" % (c.kind[:28], c.name[:44], rss,
                                                                                     rss - peak))
            peak = max(peak, rss)
            row = table.setdefault(c.kind, {"n": 0, "st": collections.Counter(), "worst": 0.0, "fail": 0,
                                            "html": 0, "rss0": rss})
            row["rss1"] = rss
            row["n"] += 1
            row["st"][res[0] if res[0] is not None else ("close" if res[4] else "none")] += 1
            if c.expect != "timeout-close":
                row["worst"] = max(row["worst"], res[3])
            if probs in (["html-by-libmicrohttpd"], ["lenient-by-libmicrohttpd"]):
                row["html"] += 1
                if a.verbose:
                    print("mhd   %-28s %-44s %s (%s)" % (c.kind[:28], c.name[:44], res[0], probs[0]))
                continue
            if probs:
                failures += 1
                row["fail"] += 1
                print("FAIL  %-28s %-44s %s" % (c.kind[:28], c.name[:44], "; ".join(probs)))
            elif a.verbose:
                print("ok    %-28s %-44s %s %.3fs %s" % (c.kind[:28], c.name[:44], res[0], res[3], res[2][:100]))
            if proc.poll() is not None:
                break
        alive = proc.poll() is None and exchange(port, [req("GET", "/healthz")])[0] == 200
        time.sleep(5)
        after = rss_kb(proc.pid) if proc.poll() is None else -1
        print("\n| kind | requests | statuses | worst latency | failures | answered or read by libmicrohttpd (documented) "
              "| VmRSS after (kB) |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for k, r in table.items():
            sts = ", ".join("%s x%d" % (s, n) for s, n in sorted(r["st"].items(), key=lambda x: str(x[0])))
            print("| %s | %d | %s | %.3f s | %d | %d | %d |" % (k, r["n"], sts, r["worst"], r["fail"], r["html"], r["rss1"]))
        print("\n%d requests, %d failures; server alive: %s; VmRSS baseline %d kB, peak %d kB, after 5 s idle %d kB"
              % (len(cases), failures, alive, base, peak, after))
        return 1 if failures or not alive else 0
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


if __name__ == "__main__":
    sys.exit(main())
