"""openapi.yaml against the server, so that the two cannot drift apart.

The real `sketchguide serve` (bundled model, port 0, a token, CORS on, small queue and body limits) sits behind
Prism's validating proxy (`prism proxy openapi.yaml`, without --errors: it forwards everything and reports what it
finds in an `sl-violations` header). Every request below goes through Prism except those Prism cannot carry:
multipart bodies and binary request bodies (it re-encodes them as text), HEAD (it tries to parse the empty body)
and raw requests (a Content-Length the body never sends). Every response, through Prism or not, is also
validated here against the spec (status listed for the operation, declared headers, media type, JSON bodies and
each server-sent event's data against their schemas), and every multipart or direct JSON request body against
the request schema. A request the test means to be valid must satisfy the spec, and one it means to break the
spec must be rejected by it.

Then the reverse direction: every (method, path, status) the spec lists is produced at least once (except the
500s, which need a failing model), every listed path answers 405 with the spec's methods in Allow to the others,
paths the spec lacks answer 404, and the route and error tables of server/http.c, the parameter table of
server/request.c, the state table of server/jobs.c and the samplers of core/sampler.c match the spec. A last
test mutates the spec and checks that both Prism and the validator notice, so that a silently blind check cannot
pass."""
import base64
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading

import pytest

try:
    import jsonschema
    import yaml
except ImportError as e:  # Debian: python3-jsonschema python3-yaml (setup.sh installs them)
    raise ImportError("test_openapi needs PyYAML and jsonschema (Debian: python3-yaml python3-jsonschema): %s" % e)

from conftest import ROOT, batch_args, binary, wait_for

SPEC_PATH = os.path.join(ROOT, "openapi.yaml")
PRISM = os.path.join(ROOT, "node_modules", "@stoplight", "prism-cli", "dist", "index.js")
STAR = os.path.join(ROOT, "docs", "examples", "star.png")
PROMPT = "a red star on a plain blue background"
TOKEN = "conformance-Token_1"
AUTH = {"Authorization": "Bearer " + TOKEN}
ORIGIN = "http://allowed.example"
LONG = 999  # steps of a job that keeps the worker busy until it is cancelled (server A's --max-steps, the sampler's
#            most: it outlasts the requests made while it runs, however fast the machine or slow the client); sent
#            with batching false, so that the jobs behind it wait at any max_batch (SG_TEST_MAX_BATCH)
METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
NO_JOB = "0" * 32
# (method, path, status) the spec lists but this test cannot produce cheaply: a failing model or encoder, or no
# memory. Anything else the spec lists must be seen.
UNPRODUCED = {("POST", "/v1/generate", 500), ("GET", "/v1/jobs/{id}/images/{i}", 500),
              ("HEAD", "/v1/jobs/{id}/images/{i}", 500), ("GET", "/metrics", 500), ("HEAD", "/metrics", 500),
              ("POST", "/v1/images/generations", 500), ("POST", "/v1/images/edits", 500),
              ("GET", "/v1/images/files/{id}", 500),
              # a cancelled synchronous edit: the same path as the generations' 409, which test_queue_... produces
              ("POST", "/v1/images/edits", 409)}
OAI_GEN, OAI_EDIT = "/v1/images/generations", "/v1/images/edits"


def load_spec(path=SPEC_PATH):
    with open(path) as fh:
        return yaml.safe_load(fh)


def star_bytes():
    with open(STAR, "rb") as fh:
        return fh.read()


def star_b64():
    return base64.b64encode(star_bytes()).decode()


def multipart(fields, files=(), boundary="sgOpenApiBoundary42"):
    """fields: (name, text) pairs; files: (name, filename, bytes). Returns (body, content type)."""
    out = b""
    for k, v in fields:
        v = v if isinstance(v, bytes) else str(v).encode()
        out += b"--%s\r\nContent-Disposition: form-data; name=\"%s\"\r\n\r\n%s\r\n" % (boundary.encode(), k.encode(), v)
    for k, fn, data in files:
        out += (b"--%s\r\nContent-Disposition: form-data; name=\"%s\"; filename=\"%s\"\r\n"
                b"Content-Type: image/png\r\n\r\n%s\r\n" % (boundary.encode(), k.encode(), fn.encode(), data))
    out += b"--%s--\r\n" % boundary.encode()
    return out, "multipart/form-data; boundary=" + boundary


def parse_sse(data):
    """Returns the (event, data text) pairs of an event stream."""
    out = []
    for block in data.decode("utf-8").split("\n\n"):
        if not block.strip() or block.startswith(":"):  # a comment: the keep-alive
            continue
        fields = {}
        for line in block.split("\n"):
            k, _, v = line.partition(": ")
            fields[k] = v
        out.append((fields.get("event"), fields.get("data")))
    return out


# --- the spec as a validator -------------------------------------------------------------------------------------

class Contract:
    """openapi.yaml as a checker of exchanges; it records which (method, path template, status) it saw."""

    def __init__(self, spec):
        self.spec = spec
        self.paths = []
        for tpl, item in spec["paths"].items():
            rx = "^" + re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(tpl)) + "$"
            self.paths.append((tpl, re.compile(rx), item))
        self.seen = set()
        self.exchanges = {"prism": 0, "direct": 0}

    def pointer(self, ref):
        assert ref.startswith("#/"), ref
        node = self.spec
        for part in ref[2:].split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
        return node

    def deref(self, node):
        """A copy of node with every local $ref replaced by its target (the spec has no cycles)."""
        if isinstance(node, dict):
            if "$ref" in node:
                rest = {k: v for k, v in node.items() if k != "$ref"}
                target = self.deref(self.pointer(node["$ref"]))
                return {**target, **self.deref(rest)} if rest else target
            return {k: self.deref(v) for k, v in node.items()}
        if isinstance(node, list):
            return [self.deref(v) for v in node]
        return node

    def validate(self, instance, schema):
        """Returns the messages of instance's violations of schema (JSON Schema 2020-12, as OpenAPI 3.1)."""
        v = jsonschema.Draft202012Validator(self.deref(schema))
        return ["%s: %s" % ("/".join(str(p) for p in e.absolute_path) or "(root)", e.message)
                for e in v.iter_errors(instance)]

    def match(self, path):
        path = path.split("?", 1)[0]
        for tpl, rx, item in self.paths:
            if rx.match(path):
                return tpl, item
        return None, None

    @staticmethod
    def methods(item):
        return {m.upper() for m in item if m.upper() in METHODS + ["TRACE"]}

    def operations(self):
        return [(m, tpl) for tpl, _, item in self.paths for m in sorted(self.methods(item))]

    def listed(self):
        """Every (method, template, status) the spec lists."""
        out = set()
        for tpl, _, item in self.paths:
            for m in self.methods(item):
                out |= {(m, tpl, int(s)) for s in item[m.lower()]["responses"]}
        return out

    @staticmethod
    def coerce(text, schema):
        """A header or form value as the type its schema names, when it reads as one."""
        types = schema.get("type")
        types = types if isinstance(types, list) else [types]
        if "integer" in types and re.fullmatch(r"-?\d+", text):
            return int(text)
        if "number" in types:
            try:
                v = float(text)
                return v if v == v and abs(v) != float("inf") else text
            except ValueError:
                return text
        return text

    def check_response(self, method, path, status, headers, body, binary_ok=True):
        """Returns the problems of one response. headers: lower-case names. binary_ok: the body is the server's
        own bytes (not re-encoded by Prism)."""
        tpl, item = self.match(path)
        if tpl is None:
            self.seen.add((method, "(unlisted path)", status))
            if status != 404:
                return ["%s %s: a path the spec lacks answered %d, not 404" % (method, path, status)]
            return self._error_body(method, body, "ErrorNotFound")
        allowed = self.methods(item)
        if method not in allowed:
            self.seen.add((method, tpl, status))
            probs = [] if status == 405 else ["%s %s: a method the spec lacks answered %d, not 405" % (method, path,
                                                                                                      status)]
            probs += self._allow(headers, allowed, "%s %s" % (method, path))
            return probs + self._error_body(method, body, "ErrorMethodNotAllowed")
        self.seen.add((method, tpl, status))
        where = "%s %s -> %d" % (method, tpl, status)
        op = item[method.lower()]
        if str(status) not in op["responses"]:
            return ["%s: status not listed (listed: %s)" % (where, ", ".join(op["responses"]))]
        resp = self.deref(op["responses"][str(status)])
        probs = []
        for name, h in resp.get("headers", {}).items():
            v = headers.get(name.lower())
            if v is None:
                if h.get("required"):
                    probs.append("%s: required header %s missing" % (where, name))
                continue
            probs += ["%s: header %s %r: %s" % (where, name, v, m) for m in self.validate(self.coerce(v, h["schema"]),
                                                                                        h["schema"])]
        if method == "OPTIONS" and status == 204:
            probs += self._allow(headers, allowed, where)
        content = resp.get("content")
        if method == "HEAD" or not content:
            if body:
                probs.append("%s: a body (%d bytes) where the spec has none" % (where, len(body)))
            return probs
        ctype = headers.get("content-type", "").split(";")[0].strip()
        if ctype not in content:
            return probs + ["%s: Content-Type %r not listed (%s)" % (where, ctype, ", ".join(content))]
        media = content[ctype]
        if ctype == "application/json":
            try:
                doc = json.loads(body)
            except ValueError as e:
                return probs + ["%s: not JSON: %s" % (where, e)]
            probs += ["%s: body %s" % (where, m) for m in self.validate(doc, media["schema"])]
        elif ctype == "text/event-stream":
            events = parse_sse(body)
            kinds = [e for e, _ in events]
            if not events or kinds[0] != "status" or kinds[-1] != "end" or "end" in kinds[:-1] or \
                    "status" in kinds[1:]:
                probs.append("%s: events %s are not status, progress..., end" % (where, kinds))
            schemas = media.get("x-sse-events", {})
            for e, data in events:
                if e not in schemas:
                    probs.append("%s: event %r not in x-sse-events" % (where, e))
                    continue
                try:
                    doc = json.loads(data)
                except (TypeError, ValueError) as err:
                    probs.append("%s: event %s data is not JSON: %s" % (where, e, err))
                    continue
                probs += ["%s: event %s %s" % (where, e, m) for m in self.validate(doc, schemas[e])]
        elif ctype == "image/png":
            if binary_ok and not body.startswith(PNG_MAGIC):
                probs.append("%s: not a PNG" % where)
        elif ctype.startswith("text/"):
            try:
                body.decode("utf-8")
            except UnicodeDecodeError:
                probs.append("%s: not UTF-8 text" % where)
        return probs

    def _allow(self, headers, allowed, where):
        got = {m.strip() for m in headers.get("allow", "").split(",") if m.strip()}
        return [] if got == allowed else ["%s: Allow %s, the spec lists %s" % (where, sorted(got), sorted(allowed))]

    def _error_body(self, method, body, schema_name):
        if method == "HEAD":
            return []
        try:
            doc = json.loads(body)
        except ValueError:
            return ["%s error body is not JSON: %r" % (schema_name, body[:100])]
        return ["%s: %s" % (schema_name, m) for m in
                self.validate(doc, {"$ref": "#/components/schemas/" + schema_name})]

    def check_generate_body(self, ctype, body):
        """Returns the problems of a POST /v1/generate body against its request schema (multipart values are
        read as the type their property names; the sketch file is not looked into)."""
        media = self.spec["paths"]["/v1/generate"]["post"]["requestBody"]["content"]
        kind = ctype.split(";")[0].strip()
        if kind not in media:
            return ["Content-Type %r is not listed" % kind]
        schema = self.deref(media[kind]["schema"])
        if kind == "application/json":
            try:
                doc = json.loads(body)
            except ValueError as e:
                return ["not JSON: %s" % e]
        else:
            m = re.search(r"boundary=(\S+)", ctype)
            if not m:
                return ["no boundary"]
            doc = {}
            for part in body.split(b"--" + m.group(1).encode())[1:]:
                head, _, value = part.partition(b"\r\n\r\n")
                name = re.search(rb'name="([^"]*)"', head)
                if not name:
                    continue
                name = name.group(1).decode()
                value = value[:-2] if value.endswith(b"\r\n") else value
                if name in doc:
                    return ["part %s given twice" % name]
                prop = schema["properties"].get(name)
                if name == "sketch" or prop is None:
                    doc[name] = "(file)"
                else:
                    try:
                        doc[name] = self.coerce(value.decode("utf-8"), prop)
                    except UnicodeDecodeError:
                        return ["part %s is not UTF-8" % name]
        return self.validate(doc, schema)


# --- processes ----------------------------------------------------------------------------------------------------

def server_env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKETCHGUIDE_")}
    env["OPENBLAS_NUM_THREADS"] = "1"
    env.update(extra)
    return env


class Proc:
    """A process in its own session with its output in a file; stop() ends the whole group."""

    def __init__(self, cmd, env=None):
        self.out = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(cmd, stdout=self.out, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                                     start_new_session=True)

    def text(self):
        self.out.seek(0)
        return self.out.read().decode("utf-8", "replace")

    def wait_line(self, pattern, timeout=120.0):
        def found():
            if self.proc.poll() is not None:
                raise AssertionError("exited %s before %r:\n%s" % (self.proc.returncode, pattern, self.text()[-3000:]))
            return re.search(pattern, self.text(), re.M)
        return wait_for(found, timeout, pattern)

    def stop(self, sig=signal.SIGTERM, timeout=120):
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode

    def close(self):
        self.stop(signal.SIGKILL, 10)
        self.out.close()


def start_server(*args, env=None, wait_ready=True):
    cmd = [binary(), "serve", "--port", "0", "--threads", "1"] + batch_args() + [str(a) for a in args]
    p = Proc(cmd, env=env or server_env())
    m = p.wait_line(r"^listening on http://\S+:(\d+)$")
    p.port = int(m.group(1))
    if wait_ready:
        p.wait_line(r"^ready")
    return p


def start_prism(spec_path, upstream_port):
    node = shutil.which("node")
    if not node or not os.path.exists(PRISM):
        raise AssertionError("Prism is not installed (node_modules/): run `npm ci` in %s (setup.sh does)" % ROOT)
    p = Proc([node, PRISM, "proxy", spec_path, "http://127.0.0.1:%d" % upstream_port, "--port", "0",
              "--cors=false", "--errors=false"], env=dict(os.environ, NO_COLOR="1", FORCE_COLOR="0"))
    m = p.wait_line(r"Prism is listening on http://127\.0\.0\.1:(\d+)", timeout=120)
    p.port = int(m.group(1))
    return p


# --- the client ---------------------------------------------------------------------------------------------------

class Client:
    """Sends requests to the server directly or through Prism and checks every exchange against the contract;
    the problems pile up in self.problems (checked at the end of each test, all at once)."""

    def __init__(self, contract, server_port, prism_port=None, token=None):
        self.c = contract
        self.token = token
        self.server_port = server_port
        self.prism_port = prism_port
        self.problems = []

    def request(self, method, path, body=None, headers=None, valid=True, via=None, auth=True, timeout=300):
        """One exchange. valid: True (the request satisfies the spec), False (it must violate it), None (either:
        what the spec cannot say, such as a wrong token or a limit set by the server's settings). via: "prism"
        or "direct"; by default Prism unless Prism cannot carry the request. auth: send the token unless headers
        has an Authorization. Returns (status, headers, body)."""
        headers = dict(headers or {})
        if auth and self.token:
            headers.setdefault("Authorization", "Bearer " + self.token)
        if isinstance(body, str):
            body = body.encode()
        ctype = headers.get("Content-Type", "")
        if via is None:
            via = "direct" if method == "HEAD" or ctype.startswith("multipart/") else "prism"
        port = self.prism_port if via == "prism" else self.server_port
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers)
            r = conn.getresponse()
            data = r.read()
            hd = {k.lower(): v for k, v in r.getheaders()}
            status = r.status
        finally:
            conn.close()
        self.c.exchanges[via] += 1
        self.record(method, path, status, hd, data, binary_ok=via == "direct")
        what = "%s %s (%s)" % (method, path, via)
        if via == "prism":
            vio = json.loads(hd.get("sl-violations", "[]"))
            req = [v for v in vio if v["location"][:1] == ["request"]]
            resp = [v for v in vio if v["location"][:1] != ["request"]]
            self.problems += ["%s -> %d: Prism: %s %s" % (what, status, ".".join(map(str, v["location"])),
                                                           v["message"]) for v in resp]
            if valid is True and req:
                self.problems.append("%s: Prism finds the request invalid: %s" % (what, req))
            if valid is False and not req:
                self.problems.append("%s: meant to break the spec, but Prism accepts it" % what)
        elif path.startswith("/v1/generate") and method == "POST" and body is not None and valid is not None:
            found = self.c.check_generate_body(ctype, body)
            if valid and found:
                self.problems.append("%s: the request breaks the spec: %s" % (what, found))
            if not valid and not found:
                self.problems.append("%s: meant to break the spec, but it satisfies it" % what)
        return status, hd, data

    def record(self, method, path, status, hd, data, binary_ok=True):
        self.problems += self.c.check_response(method, path, status, hd, data, binary_ok=binary_ok)

    def json(self, method, path, body=None, headers=None, **kw):
        st, hd, data = self.request(method, path, body, headers, **kw)
        return st, hd, (json.loads(data) if data and hd.get("content-type", "").startswith("application/json")
                        else None)

    def generate_json(self, params, headers=None, **kw):
        hd = {"Content-Type": "application/json"}
        hd.update(headers or {})
        return self.request("POST", "/v1/generate", json.dumps(params), hd, **kw)

    def generate_form(self, fields, files=None, headers=None, **kw):
        body, ctype = multipart(fields, [("sketch", "star.png", star_bytes())] if files is None else files)
        hd = {"Content-Type": ctype}
        hd.update(headers or {})
        return self.request("POST", "/v1/generate", body, hd, **kw)

    def oai_json(self, path, params, headers=None, **kw):
        """An OpenAI route with a JSON body (through Prism unless via says otherwise)."""
        hd = dict(AUTH, **{"Content-Type": "application/json"})
        hd.update(headers or {})
        return self.request("POST", path, json.dumps(params), hd, **kw)

    def oai_form(self, fields, files=None, headers=None, **kw):
        """POST /v1/images/edits as multipart (straight to the server), the star as the image by default."""
        body, ctype = multipart(fields, [("image", "star.png", star_bytes())] if files is None else files)
        hd = dict(AUTH, **{"Content-Type": ctype})
        hd.update(headers or {})
        return self.request("POST", OAI_EDIT, body, hd, **kw)

    def raw(self, method, path, extra_headers=b""):
        """A request that declares a body of 10^9 bytes and sends none (413 before the body), straight to the server."""
        head = ("%s %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n"
                "Content-Length: 1000000000\r\n" % (method, path)).encode() + extra_headers + b"\r\n"
        s = socket.create_connection(("127.0.0.1", self.server_port), timeout=60)
        try:
            s.sendall(head)
            chunks = []
            while True:
                d = s.recv(65536)
                if not d:
                    break
                chunks.append(d)
        finally:
            s.close()
        resp = b"".join(chunks)
        top, _, body = resp.partition(b"\r\n\r\n")
        lines = top.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        hd = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            hd[k.strip().lower()] = v.strip()
        self.c.exchanges["direct"] += 1
        self.record(method, path, status, hd, body)
        return status, hd, body

    def status(self, job, **kw):
        st, _, o = self.json("GET", "/v1/jobs/" + job, headers=AUTH, **kw)
        assert st == 200, o
        return o

    def wait_state(self, job, states, timeout=120):
        return wait_for(lambda: (lambda o: o if o["status"] in states else None)(self.status(job)), timeout,
                        "job %s in %s" % (job, states))

    def assert_clean(self):
        """Fails with every problem found since the last call (and forgets them)."""
        problems, self.problems = self.problems, []
        assert not problems, "%d problem(s):\n  " % len(problems) + "\n  ".join(problems)


def gen(**kw):
    p = {"prompt": PROMPT, "steps": 2, "seed": 7, "sketch": star_b64()}
    p.update(kw)
    return p


# --- the tests ----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def contract():
    return Contract(load_spec())


def test_spec_is_3_1_and_every_operation_is_documented(contract):
    spec = contract.spec
    assert spec["openapi"].startswith("3.1.")
    ids = [spec["paths"][tpl][m.lower()]["operationId"] for m, tpl in contract.operations()]
    assert len(ids) == len(set(ids)), ids
    for m, tpl in contract.operations():
        op = spec["paths"][tpl][m.lower()]
        assert op.get("summary") and op.get("responses"), (m, tpl)


def test_source_tables_match_spec(contract):
    """The route table and the error table of server/http.c, the request parameters of server/request.c, the job
    states and error names of server/jobs.c and the samplers of core/sampler.c, against the spec."""
    spec = contract.spec
    with open(os.path.join(ROOT, "server", "http.c")) as fh:
        http_c = fh.read()
    with open(os.path.join(ROOT, "server", "request.c")) as fh:
        request_c = fh.read()
    with open(os.path.join(ROOT, "server", "jobs.c")) as fh:
        jobs_c = fh.read()
    with open(os.path.join(ROOT, "core", "sampler.c")) as fh:
        sampler_c = fh.read()
    table = re.search(r"static const route ROUTES\[\] = \{(.*?)\n\};", http_c, re.S)
    assert table, "no ROUTES table in server/http.c"
    routes = re.findall(r'\{"([A-Z]+)", "(/[^"]*)", \w+, ([^}]*)\}', table.group(1))
    assert len(routes) >= 9, routes
    ops = set()
    for method, pattern, flags in routes:
        ops |= {(method, pattern), ("OPTIONS", pattern)} | ({("HEAD", pattern)} if "R_HEAD" in flags else set())
        want_open = "R_OPEN" in flags
        for m in [method] + (["HEAD"] if "R_HEAD" in flags else []):
            op = spec["paths"].get(pattern, {}).get(m.lower())
            if op is None:
                continue
            sec = op.get("security", spec["security"])
            if want_open:
                assert sec == [], (m, pattern, "open route, the spec asks for a token")
            elif "R_METRICS" in flags:
                assert {} in sec and {"bearerAuth": []} in sec, (m, pattern, "the token is optional (a setting)")
            else:
                assert sec == [{"bearerAuth": []}], (m, pattern, "the server asks for the token")
        assert spec["paths"].get(pattern, {}).get("options", {}).get("security") == [], (pattern, "preflights are open")
    assert ops == set(contract.operations()), ("server routes vs spec operations",
                                               sorted(ops ^ set(contract.operations())))

    errors = re.findall(r"\[E_\w+\] = \{(\d+), \"(\w+)\", \"\w+\"\}", http_c)
    assert len(errors) >= 15, errors
    codes = set(spec["components"]["schemas"]["ErrorCode"]["enum"])
    assert {c for _, c in errors} == codes, sorted({c for _, c in errors} ^ codes)
    # each (status, code) of the server's table is allowed by some response of that status in the spec
    by_status = {}
    for m, tpl in contract.operations():
        for s, resp in spec["paths"][tpl][m.lower()]["responses"].items():
            schema = contract.deref(resp).get("content", {}).get("application/json", {}).get("schema", {})
            for part in schema.get("allOf", []):
                code = part.get("properties", {}).get("error", {}).get("properties", {}).get("code", {})
                by_status.setdefault(int(s), set()).update([code["const"]] if "const" in code else code.get("enum", []))
    mna = spec["components"]["schemas"]["ErrorMethodNotAllowed"]["allOf"][1]
    by_status.setdefault(405, set()).add(mna["properties"]["error"]["properties"]["code"]["const"])
    for status, code in errors:
        assert code in by_status.get(int(status), set()), ("the server sends %s with %s; no response in the spec "
                                                           "allows it" % (code, status))

    names = re.search(r"PARAM_NAMES\[P_COUNT\] = \{(.*?)\};", request_c, re.S)
    assert names, "no PARAM_NAMES in server/request.c"
    params = set(re.findall(r'"(\w+)"', names.group(1)))
    schemas = spec["components"]["schemas"]
    assert params == set(schemas["GenerateJson"]["properties"]) == set(schemas["GenerateForm"]["properties"]), \
        sorted(params ^ set(schemas["GenerateJson"]["properties"]))

    states = re.findall(r'case SG_JOB_\w+: return "(\w+)";', jobs_c[jobs_c.index("sg_job_state_name(sg_job_state"):])
    assert set(states[:5]) == set(schemas["JobState"]["enum"]), states
    errs = jobs_c[jobs_c.index("sg_job_error_name(sg_job_error"):]
    errs = set(re.findall(r'case SG_JOB_ERR_\w+: return "(\w+)";', errs[:errs.index("\n}\n")])) - {"none"}
    assert errs == set(schemas["JobError"]["properties"]["code"]["enum"]), errs
    samplers = re.search(r"NAMES\[\] = \{(.*?)\};", sampler_c)
    sampler_enum = set(schemas["GenerateJson"]["properties"]["sampler"]["enum"])
    assert set(re.findall(r'"(\w+)"', samplers.group(1))) == sampler_enum, sampler_enum


@pytest.fixture(scope="module")
def live(contract):
    """Server A behind Prism: a token (/metrics too), CORS for one origin, one queued job at most, bodies up to
    256 KiB, the debug log (it names the jobs of synchronous requests), LONG steps at most, a drain no busy machine
    outlasts (test_draining cancels its job itself)."""
    srv = start_server("--max-queue", 1, "--max-body-bytes", 262144, "--cors-origins", ORIGIN,
                       "--metrics-require-token", "true", "--log-level", "debug", "--warmup-steps", 1,
                       "--max-steps", LONG, "--drain-seconds", 600, env=server_env(SKETCHGUIDE_TOKEN=TOKEN))
    prism = None
    try:
        prism = start_prism(SPEC_PATH, srv.port)
        yield Client(contract, srv.port, prism.port, token=TOKEN), srv, prism
    finally:
        if prism:
            prism.close()
        srv.close()


def test_service_routes(live):
    cl, _, _ = live
    st, _, o = cl.json("GET", "/healthz")
    assert st == 200 and o == {"status": "ok"}
    assert cl.request("HEAD", "/healthz")[0] == 200
    assert cl.request("GET", "/readyz")[0] == 200
    assert cl.request("HEAD", "/readyz")[0] == 200
    st, _, o = cl.json("GET", "/v1/info", headers=AUTH)
    assert st == 200 and o["auth"] is True and o["model"]["name"] == "shapes"
    assert cl.request("HEAD", "/v1/info", headers=AUTH)[0] == 200
    st, hd, data = cl.request("GET", "/metrics", headers=AUTH)
    assert st == 200 and b"sketchguide_ready 1" in data
    named = re.findall(r"sketchguide_\w+", cl.c.spec["paths"]["/metrics"]["get"]["description"])
    assert len(named) >= 5 and not [n for n in named if n.encode() not in data], named  # the description's metrics
    assert cl.request("HEAD", "/metrics", headers=AUTH)[0] == 200
    for path in ["/v1/generate", "/v1/jobs/" + NO_JOB, "/v1/jobs/%s/images/0" % NO_JOB, "/v1/jobs/%s/events" % NO_JOB,
                 "/healthz", "/readyz", "/v1/info", "/metrics", OAI_GEN, OAI_EDIT, "/v1/images/files/" + NO_JOB]:
        st, hd, _ = cl.request("OPTIONS", path, headers={"Origin": ORIGIN, "Access-Control-Request-Method": "GET"})
        assert st == 204 and hd["access-control-allow-origin"] == ORIGIN, path
        assert cl.request("OPTIONS", path)[0] == 204
    # a path that matches no route: an id too long for one, an index that is not a number
    assert cl.request("OPTIONS", "/v1/jobs/" + "a" * 80, valid=False)[0] == 404
    assert cl.request("OPTIONS", "/v1/jobs/%s/images/x" % NO_JOB, valid=False)[0] == 404
    assert cl.request("OPTIONS", "/v1/jobs/%s/events" % ("b" * 80), valid=False)[0] == 404
    assert cl.request("OPTIONS", "/v1/images/files/" + "c" * 80, valid=False)[0] == 404
    cl.assert_clean()


def web_files():
    """The sketch pad's files as server/web/meson.build lists them: {name: bytes}."""
    folder = os.path.join(ROOT, "server", "web")
    listed = re.search(r"files\(([^)]*)\)", open(os.path.join(folder, "meson.build")).read()).group(1)
    names = re.findall(r"'([^']+)'", listed)
    assert "index.html" in names, names
    return {n: open(os.path.join(folder, n), "rb").read() for n in names}


def test_sketch_pad_files(live):
    """/ and /ui/{name}: every file of server/web/ byte for byte with its type, open without the token, revalidated
    by ETag (304), the page under its Content-Security-Policy; unknown names 404."""
    cl, _, _ = live
    types = {".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml",
             ".png": "image/png", ".json": "application/json"}
    tags = set()
    for name, data in web_files().items():
        for path in (["/"] if name == "index.html" else []) + ["/ui/" + name]:
            st, hd, body = cl.request("GET", path, auth=False, via="direct" if name.endswith(".png") else None)
            assert st == 200 and body == data, (path, st, len(body), len(data))
            assert hd["content-type"].split(";")[0] == types[os.path.splitext(name)[1]], (path, hd["content-type"])
            assert hd["cache-control"] == "no-cache" and hd["x-content-type-options"] == "nosniff", path
            tags.add(hd["etag"])
            if name.endswith(".html"):
                csp = hd["content-security-policy"]
                assert "default-src 'none'" in csp and "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
            st, hd2, body = cl.request("HEAD", path, auth=False)
            assert st == 200 and body == b"" and hd2["etag"] == hd["etag"] and hd2["content-length"] == str(len(data))
            for inm in (hd["etag"], "W/" + hd["etag"], '"0000", ' + hd["etag"], "*"):
                st, hd3, body = cl.request("GET", path, headers={"If-None-Match": inm}, auth=False)
                assert st == 304 and body == b"" and hd3["etag"] == hd["etag"], (path, inm, st)
            assert cl.request("HEAD", path, headers={"If-None-Match": hd["etag"]}, auth=False)[0] == 304
            st, _, body = cl.request("GET", path, headers={"If-None-Match": '"0000"'}, auth=False)
            assert st == 200 and body == data, path
    assert len(tags) == len(web_files()), "files share an ETag: %s" % tags
    for name in ["nope.js", "index.htm", "meson.build", "app.js.map", "x" * 71]:
        st, _, data = cl.request("GET", "/ui/" + name, auth=False)
        assert st == 404 and json.loads(data)["error"]["message"] == "no such file: " + name, (name, data)
        assert cl.request("HEAD", "/ui/" + name, auth=False)[0] == 404
    # names the spec refuses still get a clean 404 (dot files, traversal stays inside one segment)
    for name in [".hidden", "..", "%2e%2e%2fREADME.md", "App.js"]:
        assert cl.request("GET", "/ui/" + name, auth=False, valid=None, via="direct")[0] == 404, name
    for path in ["/", "/ui/app.js"]:
        st, hd, _ = cl.request("OPTIONS", path, headers={"Origin": ORIGIN, "Access-Control-Request-Method": "GET"})
        assert st == 204 and hd["access-control-allow-origin"] == ORIGIN, path
    assert cl.request("OPTIONS", "/ui/" + "a" * 80, valid=False)[0] == 404  # longer than a name may be
    cl.assert_clean()


def test_generation(live):
    cl, _, _ = live
    # multipart: one image as PNG
    st, hd, data = cl.generate_form([("prompt", PROMPT), ("steps", 2), ("seed", 11)])
    assert st == 200 and hd["content-type"] == "image/png" and hd["x-seed"] == "11" and data.startswith(PNG_MAGIC)
    ref = data
    # multipart, every parameter (stop_step instead of stop), one image as JSON
    st, hd, data = cl.generate_form([("prompt", PROMPT), ("negative_prompt", "blurry"), ("beta", 1.2), ("stop_step", 1),
                                     ("steps", 2), ("cfg", 7.5), ("eta", 0), ("seed", 11), ("sampler", "ddim"),
                                     ("n", 1), ("invert", "auto"), ("filled", "auto"), ("timeout_ms", 60000),
                                     ("dry_run", "false")],
                                    headers={"Accept": "application/json"})
    assert st == 200 and hd["content-type"] == "application/json" and len(json.loads(data)["images"]) == 1
    # JSON: one image as PNG (through Prism, which re-encodes the PNG; the bytes are compared directly)
    assert cl.generate_json(gen(seed=11, invert=True))[0] == 200
    st, hd, data = cl.generate_json(gen(seed=11), via="direct")
    assert st == 200 and data == ref
    # JSON: a data URL, several images, every parameter
    st, hd, data = cl.generate_json(gen(sketch="data:image/png;base64," + star_b64(), n=2, seed=100,
                                        negative_prompt="", beta=1.6, stop=0.5, cfg=8, eta=0.0, sampler="ddim",
                                        invert="auto", filled=True, timeout_ms=60000, dry_run=False))
    o = json.loads(data)
    assert st == 200 and [im["seed"] for im in o["images"]] == [100, 101] and hd["x-job-id"] == o["id"]
    # dry runs, both kinds of body
    st, hd, data = cl.generate_json(gen(dry_run=True, stop_step=1, sampler="euler_a"))
    assert st == 200 and json.loads(data)["params"]["guided_steps"] == 1 and "x-job-id" not in hd
    st, _, data = cl.generate_form([("prompt", PROMPT), ("dry_run", "true"), ("seed", -1)])
    assert st == 200 and json.loads(data)["valid"] is True
    cl.assert_clean()


def test_openai_routes(live):
    """The OpenAI routes' answers and errors against the spec: both response formats, a url fetched without the
    token, an edit as multipart and as JSON, and each error status the native route shares."""
    cl, _, _ = live
    st, hd, data = cl.oai_json(OAI_GEN, {"prompt": PROMPT, "steps": 2, "seed": 21, "n": 2, "size": "64x64",
                                         "model": "shapes", "user": "u", "quality": "auto", "output_format": "png"})
    o = json.loads(data)
    assert st == 200 and hd["x-seed"] == "21" and len(o["data"]) == 2 and o["size"] == "64x64", data[:200]
    st, hd, data = cl.oai_json(OAI_GEN, {"prompt": PROMPT, "steps": 2, "response_format": "url",
                                         "sketch": "data:image/png;base64," + star_b64(), "beta": 1})
    url = json.loads(data)["data"][0]["url"]
    assert st == 200 and re.search(r"/v1/images/files/[0-9a-f]{32}$", url), data
    key_path = url[url.index("/v1/images/files/"):]
    st, hd, body = cl.request("GET", key_path, auth=False, via="direct")
    assert st == 200 and hd["content-type"] == "image/png" and body.startswith(PNG_MAGIC) and hd["x-job-id"]
    assert cl.request("GET", key_path, auth=False)[0] == 200  # through Prism: open, as the spec says
    assert cl.request("GET", "/v1/images/files/" + NO_JOB, auth=False)[0] == 404
    st, _, data = cl.oai_form([("prompt", PROMPT), ("steps", 1), ("n", 1), ("response_format", "b64_json")])
    assert st == 200 and json.loads(data)["data"][0]["b64_json"], data[:200]
    st, _, data = cl.oai_json(OAI_EDIT, {"prompt": PROMPT, "steps": 1, "image": star_b64()})
    assert st == 200, data[:200]
    # errors, in OpenAI's shape
    assert cl.oai_json(OAI_GEN, {"steps": 2}, valid=False)[0] == 400  # no prompt
    assert cl.oai_json(OAI_GEN, {"prompt": PROMPT, "mask": "x"}, valid=False)[0] == 400
    assert cl.oai_form([("prompt", PROMPT)], files=[], valid=False)[0] == 400  # no image
    for hd in [{"Authorization": "Bearer wrong"}, {"Authorization": "Basic eDp5"}]:
        st, h, data = cl.oai_json(OAI_GEN, {"prompt": PROMPT}, headers=hd, valid=None)
        assert st == 401 and h["www-authenticate"].startswith("Bearer") and \
            json.loads(data)["error"]["code"] == "invalid_api_key", data
    assert cl.oai_form([("prompt", PROMPT)], headers={"Authorization": "Bearer wrong"}, valid=None)[0] == 401
    for path, params in [(OAI_EDIT, {"prompt": PROMPT, "image": star_b64(), "model": "dall-e-2"}),
                         (OAI_GEN, {"prompt": PROMPT, "model": "gpt-image-1"})]:
        st, _, data = cl.oai_json(path, params)
        assert st == 404 and json.loads(data)["error"]["code"] == "model_not_found", (path, data)
    assert cl.oai_json(OAI_GEN, {"prompt": "x", "negative_prompt": "y" * 300000}, valid=None)[0] == 413
    assert cl.request("POST", OAI_GEN, b"prompt=x", dict(AUTH, **{"Content-Type": "text/plain"}), valid=False)[0] == 415
    gif = base64.b64encode(b"GIF89a\x01\x00\x01\x00\x00\x00\x00;").decode()
    assert cl.oai_json(OAI_EDIT, {"prompt": PROMPT, "image": gif})[0] == 415
    for params, valid in [({"size": "1024x1024"}, True), ({"n": 5}, None), ({"response_format": "png"}, False),
                          ({"steps": 0}, False)]:
        st, _, data = cl.oai_json(OAI_GEN, dict({"prompt": PROMPT}, **params), valid=valid)
        assert st == 422, (params, data)
    assert cl.oai_form([("prompt", PROMPT), ("size", "512x512")])[0] == 422
    cl.assert_clean()


def test_async_job_and_its_routes(live):
    cl, _, _ = live
    st, hd, data = cl.generate_json(gen(steps=3, seed=9, n=1), headers={"Prefer": "respond-async"})
    job = json.loads(data)["id"]
    assert st == 202 and hd["location"] == "/v1/jobs/" + job
    done = cl.wait_state(job, ("succeeded",))
    assert done["guided_steps"] >= 0 and done["images"][0]["url"] == "/v1/jobs/%s/images/0" % job
    assert cl.request("HEAD", "/v1/jobs/" + job, headers=AUTH)[0] == 200
    assert cl.request("GET", "/v1/jobs/%s/images/0" % job, headers=AUTH)[0] == 200
    st, hd, data = cl.request("GET", "/v1/jobs/%s/images/0" % job, headers=AUTH, via="direct")
    assert st == 200 and data.startswith(PNG_MAGIC)
    assert cl.request("HEAD", "/v1/jobs/%s/images/0" % job, headers=AUTH)[0] == 200
    st, hd, data = cl.request("GET", "/v1/jobs/%s/events" % job, headers=AUTH)
    assert st == 200 and [e for e, _ in parse_sse(data)] == ["status", "end"]
    assert cl.request("GET", "/v1/jobs/%s/images/1" % job, headers=AUTH)[0] == 404
    assert cl.request("HEAD", "/v1/jobs/%s/images/1" % job, headers=AUTH)[0] == 404
    assert cl.request("DELETE", "/v1/jobs/" + job, headers=AUTH)[0] == 409  # finished already
    # no such job, on every job route
    for m, path in [("GET", "/v1/jobs/" + NO_JOB), ("HEAD", "/v1/jobs/" + NO_JOB), ("DELETE", "/v1/jobs/" + NO_JOB),
                    ("GET", "/v1/jobs/%s/images/0" % NO_JOB), ("HEAD", "/v1/jobs/%s/images/0" % NO_JOB),
                    ("GET", "/v1/jobs/%s/events" % NO_JOB)]:
        assert cl.request(m, path, headers=AUTH)[0] == 404, (m, path)
    assert cl.request("GET", "/v1/jobs/not-an-id", headers=AUTH, valid=False)[0] == 404
    cl.assert_clean()


def test_queue_cancel_conflict_timeout(live):
    """A busy worker: queued and running states, 409 for images not ready, 429, 504, DELETE of a queued (200) and
    a running (202) job, a synchronous client whose job is cancelled (409), progress events."""
    cl, srv, _ = live
    st, _, data = cl.generate_json(gen(steps=LONG, batching=False), headers={"Prefer": "respond-async"})
    running = json.loads(data)["id"]
    cl.wait_state(running, ("running",))
    # its event stream, read directly while it runs: status, progress..., end (once cancelled below)
    stream = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=120)
    stream.request("GET", "/v1/jobs/%s/events" % running, headers=AUTH)
    sresp = stream.getresponse()
    assert sresp.status == 200
    assert cl.request("GET", "/v1/jobs/%s/images/0" % running, headers=AUTH)[0] == 409
    assert cl.request("HEAD", "/v1/jobs/%s/images/0" % running, headers=AUTH)[0] == 409
    # 504: queued behind the busy worker past its deadline
    st, hd, _ = cl.generate_json(gen(timeout_ms=300))
    assert st == 504 and hd["x-job-id"]
    for path in (OAI_GEN, OAI_EDIT):
        st, hd, _ = cl.oai_json(path, {"prompt": PROMPT, "image": star_b64(), "timeout_ms": 300} if path == OAI_EDIT
                                else {"prompt": PROMPT, "timeout_ms": 300})
        assert st == 504 and hd["x-job-id"], path
    # one queued job fills the queue: 429 for the next, asynchronous or not
    st, _, data = cl.generate_json(gen(steps=2), headers={"Prefer": "respond-async"})
    queued = json.loads(data)["id"]
    assert cl.status(queued)["queue_position"] == 0
    st, hd, _ = cl.generate_json(gen(), headers={"Prefer": "respond-async"})
    assert st == 429 and int(hd["retry-after"]) >= 1
    assert cl.generate_form([("prompt", PROMPT)])[0] == 429
    st, hd, data = cl.oai_json(OAI_GEN, {"prompt": PROMPT})
    assert st == 429 and int(hd["retry-after"]) >= 1 and json.loads(data)["error"]["type"] == "rate_limit_error"
    assert cl.oai_form([("prompt", PROMPT)])[0] == 429
    st, _, o = cl.json("DELETE", "/v1/jobs/" + queued, headers=AUTH)
    assert st == 200 and o["status"] == "cancelled"
    # a synchronous request waits in the queue; its job (named by the debug log) is cancelled: 409 for its client
    result = {}
    t = threading.Thread(target=lambda: result.update(r=cl.generate_json(gen(seed=4242))))
    t.start()
    m = wait_for(lambda: re.search(r"h_generate: job ([0-9a-f]{32}) \(sync, 2 steps, 1 images, seed 4242\)",
                                   srv.text()), 120, "the synchronous job in the debug log")
    wait_for(lambda: cl.status(m.group(1))["status"] == "queued", 120, "the synchronous job to queue")
    assert cl.request("DELETE", "/v1/jobs/" + m.group(1), headers=AUTH)[0] == 200
    t.join(120)
    assert result["r"][0] == 409 and json.loads(result["r"][2])["error"]["code"] == "cancelled"
    # the same for an OpenAI generation (h_generate underneath: the same log line)
    t = threading.Thread(target=lambda: result.update(o=cl.oai_json(OAI_GEN, {"prompt": PROMPT, "steps": 2,
                                                                               "seed": 4343})))
    t.start()
    m = wait_for(lambda: re.search(r"h_generate: job ([0-9a-f]{32}) \(sync, 2 steps, 1 images, seed 4343\)",
                                   srv.text()), 120, "the synchronous OpenAI job in the debug log")
    wait_for(lambda: cl.status(m.group(1))["status"] == "queued", 120, "the synchronous OpenAI job to queue")
    assert cl.request("DELETE", "/v1/jobs/" + m.group(1), headers=AUTH)[0] == 200
    t.join(120)
    assert result["o"][0] == 409 and json.loads(result["o"][2])["error"]["code"] == "cancelled"
    # the running job: 202, then cancelled; its stream ends
    st, _, o = cl.json("DELETE", "/v1/jobs/" + running, headers=AUTH)
    assert st == 202 and o["status"] == "running"
    data = sresp.read()
    stream.close()
    cl.record("GET", "/v1/jobs/%s/events" % running, 200, {k.lower(): v for k, v in sresp.getheaders()}, data)
    events = parse_sse(data)
    assert "progress" in [e for e, _ in events] and json.loads(events[-1][1])["status"] == "cancelled"
    cl.wait_state(running, ("cancelled",))
    # running past its deadline: stopped at a step
    assert cl.generate_json(gen(steps=LONG, timeout_ms=400))[0] == 504
    cl.assert_clean()


def test_errors(live):
    cl, _, _ = live
    b64 = star_b64()
    # 400: unreadable requests
    assert cl.generate_json({"sketch": b64}, valid=False)[0] == 400  # no prompt
    assert cl.generate_json({"prompt": PROMPT}, valid=False)[0] == 400  # no sketch
    assert cl.generate_json(gen(colour="red"), valid=False)[0] == 400  # unknown parameter
    assert cl.generate_json(gen(steps="many"), valid=False)[0] == 400
    assert cl.generate_json(gen(sketch="!!!"), valid=None)[0] == 400  # not base64 (the spec says base64 in words)
    # (Prism answers unparseable JSON itself instead of forwarding it)
    assert cl.request("POST", "/v1/generate", b"{not json", {"Content-Type": "application/json"}, valid=False,
                      via="direct")[0] == 400
    assert cl.generate_form([("prompt", PROMPT)], files=[], valid=False)[0] == 400  # no sketch
    assert cl.generate_form([("prompt", PROMPT), ("steps", "abc")], valid=False)[0] == 400
    body, ctype = multipart([("prompt", PROMPT)], [("sketch", "s.png", star_bytes())])
    assert cl.request("POST", "/v1/generate", body[:len(body) // 2], {"Content-Type": ctype}, valid=None)[0] == 400
    # 401: no token, a wrong one, another scheme
    for hd in [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic eDp5"}]:
        valid = None if hd.get("Authorization", "").startswith("Bearer") else False
        st, h, _ = cl.generate_json(gen(), headers=hd, valid=valid, auth=False)
        assert st == 401 and h["www-authenticate"].startswith("Bearer"), hd
    for m, path in [("GET", "/v1/jobs/" + NO_JOB), ("HEAD", "/v1/jobs/" + NO_JOB), ("DELETE", "/v1/jobs/" + NO_JOB),
                    ("GET", "/v1/jobs/%s/images/0" % NO_JOB), ("HEAD", "/v1/jobs/%s/images/0" % NO_JOB),
                    ("GET", "/v1/jobs/%s/events" % NO_JOB), ("GET", "/v1/info"), ("HEAD", "/v1/info"),
                    ("GET", "/metrics"), ("HEAD", "/metrics")]:
        # /metrics: the spec lets it go without a token (a setting), so Prism cannot call that invalid
        assert cl.request(m, path, valid=None if path == "/metrics" else False, auth=False)[0] == 401, (m, path)
    # 413: a body over max_body_bytes (256 KiB here); and on every route, a Content-Length over it
    assert cl.generate_json(gen(prompt="x", negative_prompt="y" * 300000), valid=None)[0] == 413
    for m, tpl in cl.c.operations():
        if m == "OPTIONS":
            continue
        path = tpl.replace("{id}", NO_JOB).replace("{i}", "0").replace("{name}", "app.js")
        st, _, _ = cl.raw(m, path, b"Authorization: Bearer %s\r\n" % TOKEN.encode())
        assert st == 413, (m, path, st)
        # 414 and 431: more query arguments or header fields than the limits, on every route, before the rest
        if m != "HEAD":  # a 414 is answered from the request line, before the method is read (the spec says so)
            st, _, _ = cl.raw(m, path + "?" + "&".join("a%d=1" % i for i in range(40)))
            assert st == 414, (m, path, st)
        st, _, _ = cl.raw(m, path, b"".join(b"X-Extra-%d: v\r\n" % i for i in range(70)))
        assert st == 431, (m, path, st)
    # 415: neither multipart nor JSON; a sketch that is neither PNG nor JPEG
    assert cl.request("POST", "/v1/generate", b"prompt=x", {"Content-Type": "text/plain"}, valid=False)[0] == 415
    gif = base64.b64encode(b"GIF89a\x01\x00\x01\x00\x00\x00\x00;").decode()
    st, _, data = cl.generate_json(gen(sketch=gif))
    assert st == 415 and json.loads(data)["error"]["param"] == "sketch"
    # 422: out of range; what the spec can say it says, the limits of settings it gives in words
    for params, valid in [(gen(steps=0), False), (gen(steps=LONG + 1), None), (gen(sampler="plms"), False),
                          (gen(stop=0.5, stop_step=1), False), (gen(prompt=""), False), (gen(beta=101), False),
                          (gen(n=5), None), (gen(invert="maybe"), False), (gen(filled="maybe"), False),
                          (gen(timeout_ms=0), False), (gen(seed=-2), False), (gen(prompt="x" * 2001), None)]:
        st, _, data = cl.generate_json(params, valid=valid)
        assert st == 422, (params.get("steps"), data)
    assert cl.generate_form([("prompt", PROMPT), ("steps", 0)], valid=False)[0] == 422
    cl.assert_clean()


def test_route_table_against_spec(live):
    """Every listed path answers every method: the spec's with something other than 404/405, the others with 405
    and the spec's methods in Allow; paths the spec lacks answer 404."""
    cl, _, _ = live
    st, _, data = cl.generate_json(gen(steps=1), headers={"Prefer": "respond-async"})
    job = json.loads(data)["id"]
    cl.wait_state(job, ("succeeded",))
    for tpl, _, item in cl.c.paths:
        path = tpl.replace("{id}", job).replace("{i}", "0").replace("{name}", "app.js")
        listed = cl.c.methods(item)
        for m in METHODS:
            body = b"{}" if m in ("POST", "PUT", "PATCH") else None
            hd = dict(AUTH, **({"Content-Type": "application/json"} if body else {}))
            st, _, data = cl.request(m, path, body, hd, via="direct", valid=None)
            if m in listed:
                assert st != 405 and not (st == 404 and b"no such route" in data), (m, path, st)
            else:
                assert st == 405, (m, path, st)
    for path in ["/ui", "/ui/", "/ui/app.js/x", "/index.html", "/app.js", "/v1", "/v1/", "/v1/jobs", "/v1/jobs/", "/v1/jobs/%s/images" % job, "/v1/jobs/%s/" % job,
                 "/v1/jobs/%s/cancel" % job, "/v1/generate/", "/v2/generate", "/health", "/ready", "/info",
                 "/v1/metrics", "/v1/healthz", "/metrics/", "/v1/jobs/%s/images/0/x" % job]:
        for m in ["GET", "POST", "DELETE", "OPTIONS"]:
            assert cl.request(m, path, headers=AUTH, via="direct")[0] == 404, (m, path)
    cl.assert_clean()


def test_draining(live, contract):
    """SIGTERM: /readyz and new work 503 draining; status still served; the server exits 0 once its job ends."""
    cl, srv, _ = live
    st, _, data = cl.generate_json(gen(steps=LONG), headers={"Prefer": "respond-async"})
    job = json.loads(data)["id"]
    cl.wait_state(job, ("running",))
    srv.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: cl.request("GET", "/readyz")[0] == 503, 120, "readiness to turn 503")
    assert cl.request("HEAD", "/readyz")[0] == 503
    st, hd, data = cl.generate_json(gen())
    assert st == 503 and json.loads(data)["error"]["code"] == "draining" and hd["retry-after"] == "30"
    assert cl.status(job)["status"] == "running"
    assert cl.request("DELETE", "/v1/jobs/" + job, headers=AUTH)[0] in (200, 202)
    assert srv.proc.wait(120) == 0
    cl.assert_clean()


def test_not_ready_and_gone(contract):
    """Server B, no token, the sketch pad off (404), a long warm-up: every route while the model loads (503
    not_ready, /v1/info without a model), then, keeping one finished job only, 410 for an evicted one. Straight to
    the server (its port is known only once it listens, and the window is short), checked by the validator."""
    # the longest warm-up there is (100 steps) holds the window open: the probes take a small part of it
    srv = start_server("--warmup-steps", 100, "--keep-finished-count", 1, "--ui", "false", wait_ready=False)
    try:
        cl = Client(contract, srv.port)
        st, hd, _ = cl.request("GET", "/readyz", via="direct")
        assert st == 503 and hd["retry-after"] == "5", "the model loaded before the first request"
        st, _, o = cl.json("GET", "/v1/info", via="direct")
        assert st == 200 and o["model"] is None and o["ready"] is False and o["auth"] is False
        probes = [("HEAD", "/readyz"), ("GET", "/v1/jobs/" + NO_JOB), ("HEAD", "/v1/jobs/" + NO_JOB),
                  ("DELETE", "/v1/jobs/" + NO_JOB), ("GET", "/v1/jobs/%s/images/0" % NO_JOB),
                  ("HEAD", "/v1/jobs/%s/images/0" % NO_JOB), ("GET", "/v1/jobs/%s/events" % NO_JOB)]
        for m, path in probes:
            assert cl.request(m, path, via="direct")[0] == 503, (m, path)
        st, _, data = cl.generate_json(gen(), via="direct")
        assert st == 503 and json.loads(data)["error"]["code"] == "not_ready"
        for path in (OAI_GEN, OAI_EDIT):
            st, hd, data = cl.request("POST", path, json.dumps({"prompt": PROMPT}), {"Content-Type": "application/json"},
                                      via="direct")
            assert st == 503 and json.loads(data)["error"]["type"] == "service_unavailable_error", path
        assert cl.request("GET", "/v1/images/files/" + NO_JOB, via="direct")[0] == 503
        assert not re.search(r"^ready", srv.text(), re.M), "the model loaded during the probes: raise --warmup-steps"
        assert cl.request("GET", "/metrics", via="direct")[0] == 200  # open: no token here
        for m in ("GET", "HEAD"):  # the sketch pad turned off (setting ui)
            for path in ("/", "/ui/app.js"):
                assert cl.request(m, path, via="direct")[0] == 404, (m, path)
        srv.wait_line(r"^ready", timeout=600)  # 100 warm-up steps: minutes on a loaded machine
        jobs = []
        for seed in (1, 2):  # the second one's end evicts the first
            st, _, data = cl.generate_json(gen(steps=1, seed=seed), headers={"Prefer": "respond-async"}, via="direct")
            jobs.append(json.loads(data)["id"])
        wait_for(lambda: cl.request("GET", "/v1/jobs/" + jobs[0], via="direct")[0] == 410, 120, "eviction")
        # an OpenAI url result whose job is evicted by the next one: 410
        st, _, data = cl.request("POST", OAI_GEN, json.dumps({"prompt": PROMPT, "steps": 1, "response_format": "url"}),
                                 {"Content-Type": "application/json"}, via="direct")
        url = json.loads(data)["data"][0]["url"]
        key_path = url[url.index("/v1/images/files/"):]
        assert st == 200 and cl.request("GET", key_path, via="direct")[0] == 200
        cl.generate_json(gen(steps=1, seed=3), via="direct")
        wait_for(lambda: cl.request("GET", key_path, via="direct")[0] == 410, 120, "the url's job evicted")
        for m, path in [("HEAD", "/v1/jobs/" + jobs[0]), ("DELETE", "/v1/jobs/" + jobs[0]),
                        ("GET", "/v1/jobs/%s/images/0" % jobs[0]), ("HEAD", "/v1/jobs/%s/images/0" % jobs[0]),
                        ("GET", "/v1/jobs/%s/events" % jobs[0])]:
            assert cl.request(m, path, via="direct")[0] == 410, (m, path)
        cl.assert_clean()
        assert srv.stop() == 0
    finally:
        srv.close()


def test_every_listed_response_was_produced(contract):
    """The reverse direction: each (method, path, status) of the spec came back at least once above."""
    missing = sorted(contract.listed() - contract.seen - UNPRODUCED)
    assert not missing, "listed in openapi.yaml but never produced: %s" % missing
    extra = sorted(k for k in UNPRODUCED if k in contract.seen or k not in contract.listed())
    assert not extra, "UNPRODUCED is out of date: %s" % extra
    print("%d exchanges (%d through Prism), %d of %d listed responses produced" % (
        sum(contract.exchanges.values()), contract.exchanges["prism"], len(contract.listed() & contract.seen),
        len(contract.listed())))


def test_the_checks_see_a_drifted_spec(tmp_path, contract):
    """A spec that disagrees with the server must fail both Prism and the validator."""
    spec = load_spec()
    spec["components"]["schemas"]["Health"]["properties"]["status"]["const"] = "fine"
    del spec["components"]["schemas"]["Info"]["properties"]["samplers"]
    spec["components"]["schemas"]["Info"]["required"].remove("samplers")
    del spec["paths"]["/readyz"]["get"]["responses"]["200"]
    path = tmp_path / "drifted.json"
    path.write_text(json.dumps(spec))
    drifted = Contract(spec)
    srv = start_server("--warmup-steps", 1)
    prism = None
    try:
        prism = start_prism(str(path), srv.port)
        cl = Client(drifted, srv.port, prism.port)
        for path_ in ["/healthz", "/v1/info", "/readyz"]:
            before = len(cl.problems)
            cl.request("GET", path_)
            found = cl.problems[before:]
            assert any("Prism" in p for p in found), (path_, found)
            assert any("Prism" not in p for p in found), (path_, found)
    finally:
        if prism:
            prism.close()
        srv.close()
