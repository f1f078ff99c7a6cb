"""Cluster mode (redis_url): a real redis-server on a free loopback port (AOF on, fsync always), two workers
(`serve --role worker`) and two frontends (`serve --role frontend`) behind Debian's nginx with deploy/nginx-cluster.conf.
Covers: any frontend answers any job (status, image, events, cancel), a worker SIGKILLed mid-job (the job finishes on the
other with the solo image), a frontend killed under an SSE stream (the client resumes on the other with Last-Event-ID,
no gap, no duplicate), Redis SIGKILLed and restarted from its AOF (every accepted job finishes; 503 while it is down),
Idempotency-Key, TTLs and 410/404, OpenAI url results served by any frontend (restarted too) until they expire,
/metrics queue figures, a poison job, hostile data in Redis, and 200 requests with kills of a worker and a frontend
(0 lost, 0 duplicated). Nothing here measures time: waits are polls with deadlines;
events are read by lines whatever the TCP segments."""
import http.client
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import pytest
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "server"))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "deploy"))
from conftest import ROOT, binary, wait_for  # noqa: E402
from test_http import PROMPT, Server, clean_env, multipart  # noqa: E402
from balancer import http_request  # noqa: E402
from test_loadbalancer import render_conf  # noqa: E402

REDIS = shutil.which("redis-server") or "/usr/bin/redis-server"
REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"
NGINX = "/usr/sbin/nginx"
CONF = os.path.join(ROOT, "deploy", "nginx-cluster.conf")
LEASE = 3.0       # seconds before a silent worker's job is reclaimed
HEARTBEAT = 0.5
LONG = 40         # steps of a job that runs long enough to be caught running (beta 0: about 0.1 s a step)
LOAD = 200        # requests in the load test


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]



class Redis:
    """A redis-server of our own: loopback, a free port, AOF with fsync on every write, no RDB snapshots."""

    def __init__(self):
        if not os.access(REDIS, os.X_OK):
            pytest.fail("no redis-server: install Debian's redis-server (setup.sh does)")
        self.dir = tempfile.mkdtemp(prefix="sg-redis-")
        self.port = free_port()
        self.proc = None
        self.start()

    def start(self):
        self.log = open(os.path.join(self.dir, "redis.log"), "a")
        self.proc = subprocess.Popen(
            [REDIS, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir, "--save", "",
             "--appendonly", "yes", "--appendfsync", "always", "--protected-mode", "yes", "--daemonize", "no"],
            stdout=self.log, stderr=subprocess.STDOUT)
        wait_for(lambda: self.ping(), 60, "redis-server to answer PING")

    def ping(self):
        try:
            return self.cli("PING") == "PONG"
        except AssertionError:
            return False

    def cli(self, *args, raw=False):
        r = subprocess.run([REDIS_CLI, "-p", str(self.port), "--no-raw" if raw else "--raw"] + [str(a) for a in args],
                           capture_output=True, timeout=30)
        if r.returncode != 0:
            raise AssertionError("redis-cli %s: %s" % (args, r.stderr.decode()))
        return r.stdout.decode().rstrip("\n")

    @property
    def url(self):
        return "redis://127.0.0.1:%d" % self.port

    def kill(self):
        self.proc.kill()
        self.proc.wait()
        self.log.close()

    def close(self):
        if self.proc and self.proc.poll() is None:
            self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def node_args(redis, role, *extra):
    return ["--role", role, "--redis-url", redis.url, "--lease-seconds", LEASE, "--heartbeat-seconds", HEARTBEAT,
            "--keep-finished-seconds", 3600, "--max-queue", 256, "--drain-seconds", 600] + list(extra)


class Cluster:
    """Redis, 2 workers, 2 frontends and nginx; respawn() restarts whatever a test killed."""

    def __init__(self):
        if not os.access(NGINX, os.X_OK):
            pytest.fail("no %s: install Debian's nginx (setup.sh does)" % NGINX)
        self.redis = Redis()
        self.workers = [None, None]
        self.frontends = [None, None]
        self.nginx = None
        self.prefix = tempfile.mkdtemp(prefix="sg-nginx-")
        os.chmod(self.prefix, 0o755)
        self.finished_log = []  # worker logs of processes that were replaced (for the duplicate count)
        try:
            for i in range(2):
                self.workers[i] = self.start_worker(i)
            for i in range(2):
                self.frontends[i] = self.start_frontend(i)
            self.fports = [f.port for f in self.frontends]
            self.start_nginx()
        except BaseException:
            self.close()
            raise

    def start_worker(self, i):
        return Server(*node_args(self.redis, "worker", "--worker-name", "w%d" % i))

    def start_frontend(self, i, port=0):
        return Server(*node_args(self.redis, "frontend", "--http-threads", 4), "--port", port) if port else \
            Server(*node_args(self.redis, "frontend", "--http-threads", 4))

    def start_nginx(self):
        self.port = free_port()
        conf = os.path.join(self.prefix, "nginx.conf")
        with open(conf, "w") as fh:
            fh.write(render_conf(CONF, self.fports, self.port, self.prefix))
        self.nginx_log = open(os.path.join(self.prefix, "nginx.stderr"), "w+")
        self.nginx = subprocess.Popen(
            [NGINX, "-c", conf, "-p", self.prefix + "/",
             "-g", "daemon off; pid %s/nginx.pid; error_log %s/error.log info;" % (self.prefix, self.prefix)],
            stdout=self.nginx_log, stderr=subprocess.STDOUT)
        wait_for(lambda: self._ok("/readyz"), 120, "nginx to answer /readyz")

    def _ok(self, path):
        try:
            return self.request("GET", path, timeout=30)[0] == 200
        except OSError:
            return False

    def respawn(self):
        for i, w in enumerate(self.workers):
            if w.proc.poll() is not None:
                self.finished_log.append(w.log())
                w.close()
                self.workers[i] = self.start_worker(i)
        for i, f in enumerate(self.frontends):
            if f.proc.poll() is not None:
                f.close()
                self.frontends[i] = self.start_frontend(i, port=self.fports[i])  # nginx knows this port

    def worker_logs(self):
        return self.finished_log + [w.log() for w in self.workers]

    def request(self, method, path, body=None, headers=None, timeout=300, port=None):
        return http_request(port or self.port, method, path, body, headers, timeout)

    def generate(self, headers=None, port=None, sketch=True, timeout=300, **kw):
        fields = [("prompt", kw.pop("prompt", PROMPT))] + list(kw.items()) + ([] if sketch else [("beta", 0)])
        body, ctype = multipart(fields)  # the star sketch; sketch=False: beta 0, no guided step (cheaper)
        return self.request("POST", "/v1/generate", body, dict({"Content-Type": ctype}, **(headers or {})),
                            timeout=timeout, port=port)

    def submit(self, port=None, **kw):
        st, h, data = self.generate(headers={"Prefer": "respond-async"}, port=port, **kw)
        assert st == 202, (st, data)
        return json.loads(data)["id"]

    def status(self, job, port=None):
        st, _, data = self.request("GET", "/v1/jobs/" + job, port=port)
        assert st == 200, (st, data)
        return json.loads(data)

    def wait_state(self, job, states, timeout=300, port=None):
        return wait_for(lambda: (lambda o: o if o["status"] in states else None)(self.status(job, port)), timeout,
                        "job %s in %s" % (job, states))

    def close(self):
        if self.nginx and self.nginx.poll() is None:
            self.nginx.send_signal(signal.SIGQUIT)
            try:
                self.nginx.wait(30)
            except subprocess.TimeoutExpired:
                self.nginx.kill()
                self.nginx.wait()
        for s in self.frontends + self.workers:
            if s is not None:
                s.close()
        self.redis.close()
        shutil.rmtree(self.prefix, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster():
    c = Cluster()
    yield c
    c.close()


@pytest.fixture
def cl(cluster):
    """The cluster, whole again after the test (killed processes restarted)."""
    yield cluster
    cluster.respawn()


def pixels(png):
    im = Image.open(io.BytesIO(png))
    im.load()
    assert im.format == "PNG"
    return im.convert("RGB").tobytes()


def owner_of(r, job):
    return r.cli("HGET", "sg:job:" + job, "owner")


def read_events(resp, stop_after=None):
    """Reads SSE events from an http.client response by lines: [(id or None, event, data dict)]. Stops after an
    `end`, after stop_after events with an id, or at the end of the stream."""
    out, cur = [], {}
    with_id = 0
    while True:
        line = resp.readline()
        if not line:
            return out
        line = line.decode().rstrip("\r\n")
        if line == "":
            if "event" in cur:
                out.append((cur.get("id"), cur["event"], json.loads(cur["data"])))
                with_id += cur.get("id") is not None
                if cur["event"] == "end" or (stop_after and with_id >= stop_after):
                    return out
            cur = {}
        elif line.startswith(":"):
            continue
        else:
            k, _, v = line.partition(": ")
            cur[k] = v


def open_events(port, job, last=None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    c.request("GET", "/v1/jobs/%s/events" % job, headers={"Last-Event-ID": last} if last else {})
    r = c.getresponse()
    assert r.status == 200, r.read()
    return c, r


# ---- the tests ----

def test_any_frontend_answers_any_job(cl):
    """A job submitted through nginx: status, image and events from each frontend alike; the image is the same PNG
    from both; unknown ids 404 on both."""
    job = cl.submit(steps=2, seed=11)
    done = cl.wait_state(job, ("succeeded",))
    assert done["images"][0]["seed"] == 11
    imgs = []
    for p in cl.fports:
        o = cl.status(job, port=p)
        assert o["status"] == "succeeded" and o["progress"] == {"step": 2, "total": 2}
        st, h, data = cl.request("GET", "/v1/jobs/%s/images/0" % job, port=p)
        assert st == 200 and h["content-type"] == "image/png"
        imgs.append(data)
        c, r = open_events(p, job)
        ev = read_events(r)
        c.close()
        assert [e[1] for e in ev] == ["status", "progress", "progress", "end"], ev
        assert [e[2]["step"] for e in ev[1:3]] == [1, 2] and ev[3][2]["status"] == "succeeded"
        assert all(e[0] for e in ev[1:]) and ev[0][0] is None  # stream entries carry ids, the snapshot none
        st, _, data = cl.request("GET", "/v1/jobs/" + "0" * 32, port=p)
        assert st == 404, data
    assert imgs[0] == imgs[1]


def test_sync_request_waits_through_redis(cl):
    """A synchronous request on a frontend gets the PNG the worker made, with its headers."""
    st, h, data = cl.generate(steps=2, seed=5, port=cl.fports[1])
    assert st == 200 and h["content-type"] == "image/png" and h["x-seed"] == "5", (st, data[:200])
    job = h["x-job-id"]
    st2, _, again = cl.request("GET", "/v1/jobs/%s/images/0" % job, port=cl.fports[0])
    assert st2 == 200 and again == data


def test_expired_is_410_unknown_is_404_and_keys_have_ttls(cl):
    """A finished job's keys carry keep_finished_seconds TTLs; once they are gone (expired: deleted here, as Redis
    would) every frontend answers 410, even restarted; an id that never existed 404."""
    job = cl.submit(steps=1, seed=1, sketch=False)
    cl.wait_state(job, ("succeeded",))
    for key in ("sg:job:" + job, "sg:job:%s:ev" % job, "sg:job:%s:img:0" % job):
        ttl = int(cl.redis.cli("TTL", key))
        assert 0 < ttl <= 3600, (key, ttl)
    assert int(cl.redis.cli("TTL", "sg:known:" + job)) > 3600
    cl.redis.cli("DEL", "sg:job:" + job, "sg:job:%s:ev" % job, "sg:job:%s:img:0" % job)
    cl.frontends[0].proc.kill()
    cl.frontends[0].proc.wait()
    cl.respawn()
    for p in cl.fports:
        st, _, data = cl.request("GET", "/v1/jobs/" + job, port=p)
        assert st == 410 and json.loads(data)["error"]["code"] == "gone", data
        st, _, data = cl.request("GET", "/v1/jobs/%s/images/0" % job, port=p)
        assert st == 410, data
        st, _, _ = cl.request("GET", "/v1/jobs/" + "f" * 32, port=p)
        assert st == 404


GEN = "/v1/images/generations"
FILES = "/v1/images/files/"


def url_result(request, port, seed):
    """A url result made through the frontend on port: (its path /v1/images/files/{key}, the job id)."""
    body = json.dumps({"prompt": PROMPT, "steps": 1, "beta": 0, "seed": seed, "response_format": "url"}).encode()
    st, h, data = request("POST", GEN, body, {"Content-Type": "application/json"}, port=port)
    assert st == 200, (st, data[:300])
    url = json.loads(data)["data"][0]["url"]
    assert url.startswith("http://127.0.0.1:%d%s" % (port, FILES)), url
    path = url[url.index(FILES):]
    assert re.fullmatch(FILES + "[0-9a-f]{32}", path), path
    return path, h["x-job-id"]


def test_openai_url_result_from_any_frontend(cl):
    """A url result made on frontend 0 is the same PNG from frontend 1 (directly), through nginx, and from frontend 0
    after a restart; its key lives in Redis with the job's keep time plus known_ids_seconds; unknown or malformed
    keys 404 on every frontend."""
    path, job = url_result(cl.request, cl.fports[0], 31)
    st, _, ref = cl.request("GET", "/v1/jobs/%s/images/0" % job, port=cl.fports[1])
    assert st == 200
    st, h, png = cl.request("GET", path, port=cl.fports[1])
    assert st == 200 and h["content-type"] == "image/png" and png == ref, (st, png[:200])
    st, _, png = cl.request("GET", path)
    assert st == 200 and png == ref, (st, png[:200])
    key = path[len(FILES):]
    assert cl.redis.cli("GET", "sg:file:" + key).startswith(job + " 0 ")
    ttl = int(cl.redis.cli("TTL", "sg:file:" + key))
    assert 3600 < ttl <= 3600 + 7 * 86400 + 5, ttl
    cl.frontends[0].proc.kill()
    cl.frontends[0].proc.wait()
    cl.respawn()
    st, _, png = cl.request("GET", path, port=cl.fports[0])
    assert st == 200 and png == ref, (st, png[:200])
    for p in cl.fports:
        for bad in ("0" * 32, key[:31], key.upper(), key + "0", "..%2f..%2fetc%2fpasswd", "*"):
            st, _, data = cl.request("GET", FILES + bad, port=p)
            assert st == 404, (bad, st, data)


def test_openai_url_hostile_records_fail_that_request_only(cl):
    """What Redis holds under a url key is not trusted: a string that is no record, a hash, a record naming no job id
    answer 500 saying the record is malformed; a record past its expiry 410; the processes stay up and a real url
    result still works."""
    r = cl.redis
    keys = ["%032x" % (0xf11e0 + k) for k in range(5)]
    r.cli("SET", "sg:file:" + keys[0], "garbage")
    r.cli("HSET", "sg:file:" + keys[1], "job", "x")
    r.cli("SET", "sg:file:" + keys[2], "../../etc/passwd 0 9999999999")
    r.cli("SET", "sg:file:" + keys[3], ("%032x 99 9999999999" % 7))
    r.cli("SET", "sg:file:" + keys[4], ("%032x 0 %.3f" % (7, time.time() - 10)))
    for p in cl.fports:
        for k in keys[:4]:
            st, _, data = cl.request("GET", FILES + k, port=p)
            assert st == 500 and "malformed" in json.loads(data)["error"]["message"], (k, st, data)
        st, _, data = cl.request("GET", FILES + keys[4], port=p)
        assert st == 410 and "the URL expired" in json.loads(data)["error"]["message"], data
    assert all(s.proc.poll() is None for s in cl.workers + cl.frontends)
    path, _ = url_result(cl.request, cl.fports[1], 32)
    st, _, png = cl.request("GET", path, port=cl.fports[0])
    assert st == 200 and png.startswith(b"\x89PNG\r\n\x1a\n")


def test_openai_url_expires_on_every_frontend():
    """A small cluster of its own (Redis, a worker, two frontends) with keep_finished_seconds 4: a url result made on
    one frontend is served by the other at once, then both answer 410 saying the URL expired (not 404)."""
    redis = Redis()
    nodes = []
    try:
        args = ["--redis-url", redis.url, "--lease-seconds", LEASE, "--heartbeat-seconds", HEARTBEAT,
                "--keep-finished-seconds", 4]
        nodes.append(Server("--role", "worker", *args))
        nodes += [Server("--role", "frontend", *args) for _ in range(2)]
        f0, f1 = nodes[1], nodes[2]

        def request(method, path, body=None, headers=None, port=None):
            return http_request(port, method, path, body, headers)

        path, _ = url_result(request, f0.port, 33)
        st, _, png = request("GET", path, port=f1.port)
        assert st == 200 and png.startswith(b"\x89PNG\r\n\x1a\n"), (st, png[:200])
        for f in (f0, f1):
            wait_for(lambda: (lambda r: r[0] == 410 and b"the URL expired" in r[2])(request("GET", path, port=f.port)),
                     60, "the URL to expire")
    finally:
        for n in nodes:
            n.close()
        redis.close()


def test_idempotency_key(cl):
    """The same key and request: the same job (sync or async, on any frontend); another request with that key: 409."""
    key = "test-key-%d" % time.time_ns()
    st, _, data = cl.generate(headers={"Prefer": "respond-async", "Idempotency-Key": key}, steps=1, seed=3,
                              sketch=False, port=cl.fports[0])
    assert st == 202, data
    a = json.loads(data)["id"]
    st, _, data = cl.generate(headers={"Prefer": "respond-async", "Idempotency-Key": key}, steps=1, seed=3,
                              sketch=False, port=cl.fports[1])
    assert st == 202 and json.loads(data)["id"] == a, data
    st, h, png = cl.generate(headers={"Idempotency-Key": key}, steps=1, seed=3, sketch=False)
    assert st == 200 and h["x-job-id"] == a, png[:200]
    st, _, data = cl.generate(headers={"Prefer": "respond-async", "Idempotency-Key": key}, steps=1, seed=4,
                              sketch=False)
    assert st == 409, data
    err = json.loads(data)["error"]
    assert err["code"] == "conflict" and err["param"] == "Idempotency-Key", err
    # a random seed is drawn anew on each try, and is not part of the comparison: the retry gets the first job's seed
    k2 = key + "-random"
    st, h1, d1 = cl.generate(headers={"Prefer": "respond-async", "Idempotency-Key": k2}, steps=1, sketch=False)
    st2, h2, d2 = cl.generate(headers={"Prefer": "respond-async", "Idempotency-Key": k2}, steps=1, sketch=False)
    assert st == st2 == 202 and json.loads(d1)["id"] == json.loads(d2)["id"] and h1["x-seed"] == h2["x-seed"]
    st, _, data = cl.generate(headers={"Prefer": "respond-async", "Idempotency-Key": "bad key"}, steps=1)
    assert st == 400, data


def test_cancel_from_another_frontend(cl):
    """DELETE on one frontend stops a job running for a synchronous client of the other within a step: the client
    gets 409 cancelled, every frontend then says cancelled with fewer steps than asked."""
    out = {}

    def sync():
        out["r"] = cl.generate(steps=LONG, seed=2, sketch=False, prompt="cancel me from afar", port=cl.fports[0])

    t = threading.Thread(target=sync)
    t.start()
    job = wait_for(lambda: find_job(cl.redis, "cancel me from afar", "running"), 120, "the job to run")
    wait_for(lambda: cl.status(job)["progress"]["step"] >= 1, 120, "a step")
    st, _, data = cl.request("DELETE", "/v1/jobs/" + job, port=cl.fports[1])
    assert st in (200, 202), data
    t.join(300)
    st, _, data = out["r"]
    assert st == 409 and json.loads(data)["error"]["code"] == "cancelled", data
    for p in cl.fports:
        o = cl.status(job, port=p)
        assert o["status"] == "cancelled" and o["progress"]["step"] < LONG, o
    st, _, data = cl.request("DELETE", "/v1/jobs/" + job, port=cl.fports[0])
    assert st == 409, data


FIND = ("for _, k in ipairs(redis.call('KEYS', 'sg:job:*')) do if redis.call('TYPE', k).ok == 'hash' and "
        "redis.call('HGET', k, 'prompt') == ARGV[1] and redis.call('HGET', k, 'state') == ARGV[2] then return k end "
        "end return ''")


def find_job(r, prompt, state):
    """The id of the job with this prompt in this state (one script over the keys), or None."""
    key = r.cli("EVAL", FIND, "0", prompt, state)
    return key.split(":")[2] if key else None


def test_sync_client_leaving_cancels_its_job(cl):
    s = socket.create_connection(("127.0.0.1", cl.fports[1]))
    body, ctype = multipart([("prompt", "leaving client"), ("steps", LONG), ("seed", 9), ("beta", 0)])
    s.sendall(("POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n"
               % (ctype, len(body))).encode() + body)
    job = wait_for(lambda: find_job(cl.redis, "leaving client", "running"), 120, "the job to run")
    s.close()
    o = cl.wait_state(job, ("cancelled", "succeeded", "failed"))
    assert o["status"] == "cancelled" and o["progress"]["step"] < LONG, o


def test_worker_sigkill_mid_job_finishes_elsewhere_with_the_solo_image(cl):
    """The worker running a job is SIGKILLed mid-job; after the lease the other worker reclaims it and runs it again
    from its seed: the client's image is the one a solo (local mode) server makes for that seed, and the job's events
    give each step once."""
    job = cl.submit(steps=LONG // 2, seed=21, prompt="killed worker")
    wait_for(lambda: cl.status(job)["progress"]["step"] >= 1, 120, "the job to make a step")
    first = owner_of(cl.redis, job)
    victim = [w for w in cl.workers if ("--worker-name", first) in zip(w.proc.args, w.proc.args[1:])]
    assert len(victim) == 1, first
    victim[0].proc.kill()
    victim[0].proc.wait()
    o = cl.wait_state(job, ("succeeded", "failed", "cancelled"))
    assert o["status"] == "succeeded", o
    assert owner_of(cl.redis, job) != first and cl.redis.cli("HGET", "sg:job:" + job, "attempts") == "2"
    st, _, png = cl.request("GET", "/v1/jobs/%s/images/0" % job)
    assert st == 200
    # the second run repeats the steps the first announced: the event stream still has each step once
    c, r = open_events(cl.fports[1], job)
    ev = read_events(r)
    c.close()
    assert [e[2]["step"] for e in ev if e[1] == "progress"] == list(range(1, LONG // 2 + 1)), ev
    solo = Server("--max-queue", "4")
    try:
        body, ctype = multipart([("prompt", "killed worker"), ("steps", LONG // 2), ("seed", 21)])
        st, _, ref = solo.request("POST", "/v1/generate", body, {"Content-Type": ctype}, timeout=300)
        assert st == 200
    finally:
        solo.stop()
        solo.close()
    assert pixels(png) == pixels(ref)


def test_frontend_killed_under_sse_client_resumes_on_the_other(cl):
    """An event stream on frontend 0, which is SIGKILLed after two progress events; the client reconnects to
    frontend 1 with Last-Event-ID and gets the rest: every step once, in order, then the end."""
    job = cl.submit(steps=LONG // 2, seed=8, sketch=False, prompt="sse resume")
    c, r = open_events(cl.fports[0], job)
    got = read_events(r, stop_after=2)
    assert [e[1] for e in got][-2:] == ["progress", "progress"], got
    cl.frontends[0].proc.kill()
    cl.frontends[0].proc.wait()
    c.close()
    last = got[-1][0]
    c2, r2 = open_events(cl.fports[1], job, last=last)
    rest = read_events(r2)
    c2.close()
    assert rest and rest[-1][1] == "end" and rest[-1][2]["status"] == "succeeded", rest
    assert all(e[1] != "status" for e in rest)  # no snapshot on a resumed stream
    steps = [e[2]["step"] for e in got + rest if e[1] == "progress"]
    assert steps == list(range(1, LONG // 2 + 1)), steps
    ids = [e[0] for e in got + rest if e[0]]
    assert len(ids) == len(set(ids))
    st, _, data = cl.request("GET", "/v1/jobs/%s/events" % job, headers={"Last-Event-ID": "nonsense"},
                             port=cl.fports[1])
    assert st == 400, data


def test_redis_sigkill_and_restart_loses_no_accepted_job(cl):
    """Six accepted jobs (running and queued); Redis is SIGKILLed: /readyz and new work answer 503 with Retry-After,
    nothing crashes; Redis restarts from its AOF: the service resumes by itself and every accepted job succeeds."""
    jobs = [cl.submit(steps=3, seed=100 + k, sketch=False, prompt="redis restart") for k in range(6)]
    cl.redis.kill()
    for p in cl.fports:
        wait_for(lambda: cl.request("GET", "/readyz", port=p)[0] == 503, 60, "/readyz 503")
        st, h, data = cl.generate(steps=1, sketch=False, port=p)
        assert st == 503 and int(h["retry-after"]) >= 1, (st, data)
        assert json.loads(data)["error"]["code"] == "unavailable"
        st, _, data = cl.request("GET", "/v1/jobs/" + jobs[0], port=p)
        assert st == 503, data
    cl.redis.start()
    for p in cl.fports:
        wait_for(lambda: cl.request("GET", "/readyz", port=p)[0] == 200, 120, "/readyz 200 again")
    for j in jobs:
        o = cl.wait_state(j, ("succeeded", "failed", "cancelled"))
        assert o["status"] == "succeeded", o
    assert all(s.proc.poll() is None for s in cl.workers + cl.frontends)


def test_metrics_queue_depth_and_oldest_age(cl):
    """With both workers stopped (SIGSTOP), three accepted jobs wait: every frontend's /metrics says depth 3 and an
    oldest age above 0; once the workers go on, depth 0."""
    for w in cl.workers:
        w.proc.send_signal(signal.SIGSTOP)
    try:
        jobs = [cl.submit(steps=1, seed=k, sketch=False) for k in range(3)]
        for p in cl.fports:
            m = metrics(cl, p)
            assert m["sketchguide_cluster_queue_depth"] == 3, m
            assert m["sketchguide_cluster_oldest_queued_seconds"] > 0
            assert m["sketchguide_redis_up"] == 1
        assert cl.status(jobs[2])["queue_position"] == 2
    finally:
        for w in cl.workers:
            w.proc.send_signal(signal.SIGCONT)
    for j in jobs:
        cl.wait_state(j, ("succeeded",))
    m = metrics(cl, cl.fports[0])
    assert m["sketchguide_cluster_queue_depth"] == 0
    assert m['sketchguide_cluster_worker_up{worker="w0"}'] == 1 and m['sketchguide_cluster_worker_up{worker="w1"}'] == 1


def metrics(cl, port):
    st, _, data = cl.request("GET", "/metrics", port=port)
    assert st == 200
    out = {}
    for line in data.decode().splitlines():
        if line and not line.startswith("#"):
            k, v = line.rsplit(" ", 1)
            out[k] = float(v)
    return out


def test_poison_job_ends_failed(cl):
    """A job already started max_attempts times (each run killed its worker) is not run again: it ends failed with a
    message saying so, and the workers go on with other jobs."""
    job = cl.submit(steps=1, seed=1, sketch=False)
    cl.wait_state(job, ("succeeded",))
    poison = "%032x" % 0xdead
    cl.redis.cli("HSET", "sg:job:" + poison, "state", "running", "step", "0", "total", "1", "n", "1", "seed", "1",
                 "created", "%.3f" % time.time(), "attempts", "3", "prompt", "p", "negative_prompt", "", "beta", "0",
                 "stop", "0.5", "stop_step", "-1", "steps", "1", "cfg", "7.5", "sampler", "0", "eta", "0",
                 "deadline", "0", "n_extra", "0")
    cl.redis.cli("XADD", "sg:jobs", "*", "id", poison)
    o = cl.wait_state(poison, ("failed", "succeeded"))
    assert o["status"] == "failed" and "started 3 times" in o["error"]["message"], o
    job = cl.submit(steps=1, seed=2, sketch=False)
    assert cl.wait_state(job, ("succeeded", "failed"))["status"] == "succeeded"


def test_hostile_data_in_redis_fails_that_job_only(cl):
    """A record of the wrong type, a malformed state, a request with a bad field, a stream entry naming no job and a
    malformed event: each fails or is refused alone; the processes stay up and the next job succeeds."""
    r = cl.redis
    wrong = "%032x" % 1
    r.cli("SET", "sg:job:" + wrong, "not a hash")
    st, _, data = cl.request("GET", "/v1/jobs/" + wrong)
    assert st == 500 and "malformed" in json.loads(data)["error"]["message"], data
    bogus = "%032x" % 2
    r.cli("HSET", "sg:job:" + bogus, "state", "exploded", "total", "x")
    st, _, data = cl.request("GET", "/v1/jobs/" + bogus)
    assert st == 500, data
    st, _, data = cl.request("DELETE", "/v1/jobs/" + bogus)
    assert st == 500, data
    badreq = "%032x" % 3
    r.cli("HSET", "sg:job:" + badreq, "state", "queued", "step", "0", "total", "2", "n", "1", "seed", "1",
          "created", "%.3f" % time.time(), "attempts", "0", "prompt", "p", "steps", "two", "n_extra", "0")
    r.cli("XADD", "sg:jobs", "*", "id", badreq)
    r.cli("XADD", "sg:jobs", "*", "id", "../../etc/passwd")
    r.cli("XADD", "sg:jobs", "*", "nothing", "here")
    o = cl.wait_state(badreq, ("failed", "succeeded"))
    assert o["status"] == "failed" and "malformed" in o["error"]["message"], o
    # a job whose event stream gets a malformed entry: its watchers get a failed end, not a hang or a crash
    job = cl.submit(steps=LONG, seed=4, sketch=False, prompt="hostile events")
    c, resp = open_events(cl.fports[1], job)
    r.cli("XADD", "sg:job:%s:ev" % job, "*", "kind", "progress", "state", "running", "step", "-7")
    ev = read_events(resp)
    c.close()
    assert ev[-1][1] == "end" and ev[-1][2]["error"]["message"].startswith("the job's event stream"), ev[-1]
    cl.request("DELETE", "/v1/jobs/" + job)
    ok = cl.submit(steps=1, seed=5, sketch=False)
    assert cl.wait_state(ok, ("succeeded", "failed"))["status"] == "succeeded"
    assert all(s.proc.poll() is None for s in cl.workers + cl.frontends)


def test_200_requests_with_kills_lose_nothing_and_duplicate_nothing(cl):
    """200 requests through nginx (half synchronous, half asynchronous), each with its own Idempotency-Key and retried
    with it on a failure of the transport or a 502/503; a worker is SIGKILLed after 40 answers and a frontend after
    80. Every request ends with one job id; every accepted job succeeds; no job has two results stored."""
    answers, lock = {}, threading.Lock()
    retries = {"n": 0}
    keys = ["load-%d-%d" % (time.time_ns(), k) for k in range(LOAD)]

    def one(k):
        hd = {"Idempotency-Key": keys[k]}
        if k % 2:
            hd["Prefer"] = "respond-async"
        for _ in range(30):
            try:
                st, h, data = cl.generate(headers=hd, steps=1, seed=k, sketch=False, prompt="load %d" % k, timeout=600)
            except OSError:
                st = None
            if st in (200, 202):
                job = h["x-job-id"]
                if k % 2:
                    job = json.loads(data)["id"]
                with lock:
                    answers[k] = job
                return
            with lock:
                retries["n"] += 1
            time.sleep(0.5)
        with lock:
            answers[k] = None

    pending = list(range(LOAD))
    threads = []
    killed = []

    def run_clients():
        while True:
            with lock:
                if not pending:
                    return
                k = pending.pop(0)
            one(k)

    for _ in range(6):
        t = threading.Thread(target=run_clients)
        t.start()
        threads.append(t)
    wait_for(lambda: len(answers) >= 40, 900, "40 answers")
    cl.workers[0].proc.kill()
    killed.append("worker w0")
    wait_for(lambda: len(answers) >= 80, 900, "80 answers")
    cl.frontends[1].proc.kill()
    killed.append("frontend 1")
    cl.respawn()  # both come back (the worker under its name, the frontend on its port) while the load goes on
    for t in threads:
        t.join(1200)
    assert len(answers) == LOAD and all(answers.values()), [k for k, v in answers.items() if not v]
    ids = list(answers.values())
    assert len(set(ids)) == LOAD, "two requests share a job"
    states = {}
    for k, j in answers.items():
        o = cl.wait_state(j, ("succeeded", "failed", "cancelled"))
        states[j] = o["status"]
    lost = [j for j, s in states.items() if s != "succeeded"]
    finishes = {}
    for log in cl.worker_logs():
        for m in re.finditer(r"finish: job ([0-9a-f]{32}) succeeded", log):
            finishes[m.group(1)] = finishes.get(m.group(1), 0) + 1
    dup = [j for j in ids if finishes.get(j, 0) > 1 or cl.redis.cli("HGET", "sg:job:" + j, "results") not in ("1",)]
    reclaimed = sum(log.count("reclaiming stream entry") for log in cl.worker_logs())
    print("\ncluster load: %d requests, %d accepted, %d succeeded, %d lost, %d duplicated results, %d client retries, "
          "%d stream entries reclaimed, killed: %s" % (LOAD, len(ids), len(ids) - len(lost), len(lost), len(dup),
                                                      retries["n"], reclaimed, ", ".join(killed)))
    assert not lost, lost
    assert not dup, dup
    stored = {j: cl.redis.cli("HGET", "sg:job:" + j, "results") for j in ids}  # FINISH counts its writes
    assert all(v == "1" for v in stored.values()), {j: v for j, v in stored.items() if v != "1"}
