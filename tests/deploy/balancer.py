"""deploy/nginx.conf in front of replicas (processes or containers), shared by test_loadbalancer.py and test_image.py: the
nginx.conf rendering, the nginx front, and the two load-balancer checks, written against a small replica interface.

A replica is any object with
  port            its HTTP port on 127.0.0.1
  metrics()       its /metrics as {name: value}
  log()           its log so far (stderr of `sketchguide serve`)
  kill()          SIGKILL; returns once it is gone
  drain()         SIGTERM; returns its exit code once it has exited (after the drain)
  request(), submit_async(), wait_state()   test_http.Server's, on the replica itself
Nothing here measures time: waits are polls with generous deadlines."""
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
from conftest import ROOT, wait_for  # noqa: E402  (tests/server's helpers)
from test_http import default_fields, multipart  # noqa: E402

NGINX = "/usr/sbin/nginx"
CONF = os.path.join(ROOT, "deploy", "nginx.conf")
REQUESTS = 100      # synchronous generations in the chaos check
CLIENTS = 5         # concurrent client threads
KILL_AFTER = 20     # answers received before the SIGKILL of replica 0
TERM_AFTER = 45     # answers received before the SIGTERM of replica 1
STEPS = 6           # sampler steps per request: short jobs, so the check stays within a minute or two on 2 cores
AFTER_DRAIN = 5     # answers to requests started after the drained replica's exit
HOLD_STEPS = 150    # the job running at the SIGTERM (the most the service allows): seconds on any core; a signal takes less


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_request(port, method, path, body=None, headers=None, timeout=300):
    """One request on a fresh connection to 127.0.0.1:port: (status, headers with lower-case names, body)."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        c.close()


def sub_once(pattern, repl, text, flags=re.M):
    """re.sub that insists on exactly one match, so that a change of nginx.conf's shape fails here loudly."""
    out, n = re.subn(pattern, repl, text, flags=flags)
    assert n == 1, "nginx.conf: expected one match of %r, found %d" % (pattern, n)
    return out


def render_conf(src, ports, listen_port, prefix):
    """deploy/nginx.conf for a test (the mechanism docs/deploy.md describes): the upstream's `server` lines become one
    per replica with the parameters of the first; `listen` becomes a loopback port; the access log goes to a file; the
    temp paths go under the prefix. Returns the text."""
    text = open(src, encoding="utf-8").read()
    up = re.search(r"^(\s*)upstream sketchguide \{\n(.*?)^\1\}", text, re.M | re.S)
    assert up, "nginx.conf: no `upstream sketchguide` block"
    servers = re.findall(r"^(\s*)server\s+\S+?((?:\s+[^;\s]+)*);\s*$", up.group(2), re.M)
    assert servers, "nginx.conf: the upstream has no server line"
    indent, params = servers[0]
    body = re.sub(r"^\s*server\s+\S+.*;\s*\n", "", up.group(2), flags=re.M)
    lines = "".join("%sserver 127.0.0.1:%d%s;\n" % (indent, p, params) for p in ports)
    text = text[:up.start(2)] + lines + body + text[up.end(2):]
    text = sub_once(r"^(\s*)listen\s+\d+;", r"\g<1>listen 127.0.0.1:%d;" % listen_port, text)
    text = sub_once(r"^(\s*)access_log\s+\S+\s+sketchguide;", r"\g<1>access_log %s/access.log sketchguide;" % prefix,
                    text)
    temps = "".join("    %s_temp_path %s/%s;\n" % (k, prefix, k) for k in
                    ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return sub_once(r"^http \{\n", "http {\n" + temps, text)


class Front:
    """Debian's nginx with deploy/nginx.conf in a temporary prefix, in front of `replicas` (objects with a .port);
    self.access() reads nginx's JSON log. Fails (not skips) without nginx: setup.sh installs it."""

    def __init__(self, replicas):
        if not os.access(NGINX, os.X_OK):
            pytest.fail("no %s: install Debian's nginx (setup.sh does)" % NGINX)
        self.replicas = replicas
        self.prefix = tempfile.mkdtemp(prefix="sg-nginx-")
        os.chmod(self.prefix, 0o755)  # nginx's workers run as another user when the test runs as root
        self.nginx = None
        try:
            self.port = free_port()
            conf = os.path.join(self.prefix, "nginx.conf")
            with open(conf, "w") as fh:
                fh.write(render_conf(CONF, [r.port for r in replicas], self.port, self.prefix))
            self.nginx_log = open(os.path.join(self.prefix, "nginx.stderr"), "w+")
            self.nginx = subprocess.Popen(
                [NGINX, "-c", conf, "-p", self.prefix + "/",
                 "-g", "daemon off; pid %s/nginx.pid; error_log %s/error.log info;" % (self.prefix, self.prefix)],
                stdout=self.nginx_log, stderr=subprocess.STDOUT)
            wait_for(self._nginx_up, 120, "nginx to answer /readyz through a replica")
        except BaseException:
            self.close()
            raise

    def _nginx_up(self):
        if self.nginx.poll() is not None:
            self.nginx_log.seek(0)
            raise AssertionError("nginx exited %d: %s" % (self.nginx.returncode, self.nginx_log.read()))
        try:
            return self.request("GET", "/readyz", timeout=60)[0] == 200
        except OSError:
            return False

    def addr(self, i):
        return "127.0.0.1:%d" % self.replicas[i].port

    def request(self, method, path, body=None, headers=None, timeout=300):
        return http_request(self.port, method, path, body, headers, timeout)

    def generate(self, headers=None, **kw):
        body, ctype = multipart(default_fields(**kw))
        return self.request("POST", "/v1/generate", body, dict({"Content-Type": ctype}, **(headers or {})))

    def access(self):
        """nginx's access log, one dict a request (upstream_addr and upstream_status split into lists)."""
        out = []
        with open(os.path.join(self.prefix, "access.log")) as fh:
            for line in fh:
                e = json.loads(line)
                e["tried"] = [a.strip() for a in e["upstream_addr"].split(",")] if e["upstream_addr"] else []
                e["statuses"] = [s.strip() for s in e["upstream_status"].split(",")] if e["upstream_status"] else []
                out.append(e)
        return out

    def access_with(self, request_ids=(), uris=()):
        """The access log once it holds these requests: nginx writes a request's line after sending its response, so
        the client may read the response first."""
        def ready():
            log = self.access()
            return log if (set(request_ids) <= {e["request_id"] for e in log} and
                           set(uris) <= {e["uri"] for e in log}) else None
        return wait_for(ready, 120, "nginx's log lines of the requests")

    def close(self):
        """Stops nginx (gracefully: it finishes the requests in flight) and removes its prefix; not the replicas."""
        if self.nginx and self.nginx.poll() is None:
            self.nginx.send_signal(signal.SIGQUIT)
            try:
                self.nginx.wait(30)
            except subprocess.TimeoutExpired:
                self.nginx.kill()
                self.nginx.wait()
        shutil.rmtree(self.prefix, ignore_errors=True)


def model_size(front):
    st, _, data = front.request("GET", "/v1/info")
    assert st == 200
    return json.loads(data)["model"]["image_size"]


def check_png(data, size):
    im = Image.open(io.BytesIO(data))
    im.load()
    assert im.format == "PNG" and im.size == (size, size), (im.format, im.size)


def check_async_jobs_found_on_their_replica(front):
    """A job lives on the replica that accepted it; nginx's /v1/jobs/ location asks each replica until one knows it."""
    size = model_size(front)
    ids = []
    for seed in range(6):
        st, h, data = front.generate(headers={"Prefer": "respond-async"}, steps=STEPS, seed=seed)
        assert st == 202, data
        ids.append(json.loads(data)["id"])

    def done(job):
        st, _, data = front.request("GET", "/v1/jobs/" + job)
        assert st == 200, (job, st, data)
        o = json.loads(data)
        assert o["status"] in ("queued", "running", "succeeded"), o
        return o if o["status"] == "succeeded" else None

    for job in ids:
        o = wait_for(lambda: done(job), 120, "job %s to succeed" % job)
        st, h, data = front.request("GET", o["images"][0]["url"])
        assert st == 200 and h["content-type"] == "image/png"
        check_png(data, size)
        st, h, data = front.request("GET", "/v1/jobs/%s/events" % job)
        assert st == 200 and h["content-type"].startswith("text/event-stream")
        assert b"event: end" in data
    st, _, data = front.request("GET", "/v1/jobs/" + "0" * 32)
    assert st == 404, data
    # cancelling goes to the job's replica too (DELETE is idempotent: nginx moves past a 404), and the sketch pad, whose
    # API calls are these same routes, loads through the balancer
    long_job = json.loads(front.generate(headers={"Prefer": "respond-async"}, steps=150, seed=99)[2])["id"]
    st, _, data = front.request("DELETE", "/v1/jobs/" + long_job)
    assert st in (200, 202), (st, data)
    o = wait_for(lambda: (lambda o: o if o["status"] == "cancelled" else None)(
        json.loads(front.request("GET", "/v1/jobs/" + long_job)[2])), 120, "the cancel through nginx")
    assert o["error"]["code"] == "cancelled"
    st, h, data = front.request("GET", "/")
    assert st == 200 and h["content-type"].startswith("text/html") and b"ui/app.js" in data

    log = [e for e in front.access_with(uris=["/v1/jobs/" + "0" * 32]) if e["uri"].startswith("/v1/jobs/")]
    holders = {e["tried"][-1] for e in log if e["status"] == 200}
    assert len(holders) >= 2, "the jobs should have been spread over the replicas: %s" % holders
    fallthrough = [e for e in log if e["status"] == 200 and e["statuses"][:-1] and
                   set(e["statuses"][:-1]) == {"404"}]
    assert fallthrough, "no job request went past a replica that answered 404"
    unknown = [e for e in log if e["uri"] == "/v1/jobs/" + "0" * 32]
    assert len(unknown) == 1 and unknown[0]["statuses"] == ["404"] * 3, unknown
    assert sorted(unknown[0]["tried"]) == sorted(front.addr(i) for i in range(3))
    print("async: %d jobs, %d job requests, %d went past a 404" % (len(ids), len(log), len(fallthrough)))


def parse_jobs_log(text):
    """A replica's log: (index of the drain line or None, [(line index, job id, final state)], {job id: status})."""
    drain = None
    jobs, answered = [], {}
    for i, line in enumerate(text.splitlines()):
        if "serve: SIGTERM: draining" in line:
            drain = i
        m = re.search(r"(?:run_job|end_job): job ([0-9a-f]{32}) (\w+)", line)  # the worker's end-of-job line
        if m:
            jobs.append((i, m.group(1), m.group(2)))
        m = re.search(r"POST /v1/generate (\d+) .*job=([0-9a-f]{32})", line)
        if m:
            answered[m.group(2)] = int(m.group(1))
    return drain, jobs, answered


def hold_a_job(replica):
    """Gives the replica a job it is still running when it is signalled, and returns its id: an asynchronous job of
    HOLD_STEPS steps sent to the replica itself (not through nginx), returned once the replica says it runs. The load's
    6-step jobs are not enough: on a fast core one ends between the poll that sees it and the signal (`docker stop`
    takes a moment), and the replica then has nothing left to drain."""
    job = replica.submit_async(steps=HOLD_STEPS, seed=4242)
    o = replica.wait_state(job, ("running", "succeeded", "failed", "cancelled"), timeout=600)
    assert o["status"] == "running", o
    return job


def wait_busy(replica, what):
    """Waits until the replica has a job running or queued (so that it surely has unfinished work when signalled).
    A queued job alone can be missed: on a quiet machine a 6-step job takes a fraction of a second, and round-robin
    over 3 replicas with 5 clients may never leave one waiting at the moment of a poll before the load is over."""
    wait_for(lambda: (lambda m: m["sketchguide_jobs_running"] + m["sketchguide_queue_depth"] >= 1)(replica.metrics()),
             120, what)


def check_kill_and_drain_under_load(front):
    """A load of synchronous generations through nginx during which replica 0 is killed and replica 1 drained. Strict,
    because replica 2 stays alive throughout, so nginx always has somewhere to retry: every request answers 200 with a
    PNG of the model's size; the drained replica exits 0 after finishing every job it accepted (one of them surely
    running at the SIGTERM), each answered and received by a client; requests started after a replica's exit never name it as the replica that answered; the
    surviving replica keeps answering; nginx's log and the replicas' own counts agree."""
    size = model_size(front)
    results = []          # one dict per request, appended by the clients
    lock = threading.Lock()
    next_i = [0]
    answered = threading.Condition(lock)

    done = threading.Event()  # set once the load has run long enough; each client then stops after its request

    def client():
        while True:
            with lock:
                if done.is_set():
                    return
                i = next_i[0]
                next_i[0] += 1
            r = {"i": i, "t0": time.monotonic()}
            try:
                st, h, data = front.generate(steps=STEPS, seed=1000 + i)
                r.update(status=st, request_id=h.get("x-request-id"), job=h.get("x-job-id"), body=data)
            except Exception as e:  # noqa: BLE001 (recorded and asserted on below)
                r.update(status=None, error=repr(e))
            r["t1"] = time.monotonic()
            with lock:
                results.append(r)
                answered.notify_all()

    def wait_answers(n, after=None):
        """Until n answers, or with `after` a time, until n answers to requests started after it."""
        def count():
            return len(results) if after is None else sum(1 for r in results if r["t0"] > after)
        with lock:
            assert answered.wait_for(lambda: count() >= n, 600), "the load stalled at %d" % count()

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for t in threads:
        t.start()
    killed, drained, live = front.replicas
    try:
        wait_answers(KILL_AFTER)
        wait_busy(killed, "a running or queued job on replica 0 before the kill")
        killed.kill()
        t_killed = time.monotonic()

        wait_answers(TERM_AFTER)
        held = hold_a_job(drained)
        stopper = {}
        stop = threading.Thread(target=lambda: stopper.setdefault("rc", drained.drain()))
        stop.start()
        wait_for(lambda: "SIGTERM: draining" in drained.log(), 300, "replica 1's drain to begin")
        # the held job finishes in the drain and its image is fetched from the replica before it exits
        o = drained.wait_state(held, ("succeeded", "failed", "cancelled"), timeout=600)
        assert o["status"] == "succeeded", o
        st, h, data = drained.request("GET", o["images"][0]["url"])
        assert st == 200 and h["content-type"] == "image/png", (st, data[:200])
        check_png(data, size)
        stop.join(900)
        drained_rc = stopper.get("rc")
        t_drained = time.monotonic()
        # the load goes on past the replica's exit: REQUESTS in all, and some started after it
        wait_answers(REQUESTS)
        wait_answers(AFTER_DRAIN, after=t_drained)
    finally:
        done.set()
        for t in threads:
            t.join(900)

    # Every request answered 200 with a PNG of the model's size.
    assert len(results) == next_i[0] >= REQUESTS
    bad = [(r["i"], r.get("status"), r.get("error") or r["body"][:200]) for r in results if r["status"] != 200]
    assert not bad, "requests that did not answer 200: %s" % bad
    for r in results:
        check_png(r["body"], size)
        assert r["request_id"] and r["job"], r["i"]

    # nginx's view: which replica answered each request and which were tried before it.
    log = {e["request_id"]: e for e in front.access_with(request_ids=[r["request_id"] for r in results])
           if e["uri"] == "/v1/generate"}
    entries = [log[r["request_id"]] for r in results]
    assert all(e["status"] == 200 and e["statuses"][-1] == "200" for e in entries)
    a_killed, a_drained, a_live = (front.addr(i) for i in range(3))
    retried = [e for e in entries if len(e["tried"]) > 1]
    assert any(a_killed in e["tried"][:-1] for e in entries), "no request was retried away from the killed replica"
    for r, e in zip(results, entries):
        if r["t0"] > t_killed:
            assert e["tried"][-1] != a_killed, "answered by the killed replica after its death: %s" % e
        if r["t0"] > t_drained:
            assert e["tried"][-1] == a_live, "answered by a stopped replica: %s" % e
    after_kill = sum(1 for r, e in zip(results, entries) if r["t0"] > t_killed and e["tried"][-1] in (a_drained, a_live))
    after_drain = sum(1 for r, e in zip(results, entries) if r["t0"] > t_drained)
    assert after_kill > 0 and after_drain > 0, "requests stopped flowing (%d after the kill, %d after the drain)" % (
        after_kill, after_drain)

    # The drained replica: exit 0, every job it accepted finished; the held one (running at the SIGTERM) was answered
    # 202 and its image fetched above, every other was answered 200 and a client received it.
    dlog = drained.log()
    assert drained_rc == 0, dlog
    drain_at, jobs, answers = parse_jobs_log(dlog)
    assert drain_at is not None, dlog
    assert "drain time passed" not in dlog and "closing" not in dlog and "nobody fetched" not in dlog, dlog
    assert jobs and all(state == "succeeded" for _, _, state in jobs), jobs
    finished_in_drain = [j for i, j, _ in jobs if i > drain_at]
    assert held in finished_in_drain, "the held job did not finish in the drain: %s" % jobs
    assert answers.get(held) == 202, answers.get(held)
    received = {r["job"] for r in results}
    for _, job, _ in jobs:
        if job != held:
            assert answers.get(job) == 200, "job %s of the drained replica was not answered 200" % job
            assert job in received, "job %s of the drained replica never reached a client" % job
    served = {a: sum(1 for e in entries if e["tried"][-1] == a) for a in (a_killed, a_drained, a_live)}
    assert served[a_drained] == len(jobs) - 1, (served, len(jobs))

    # The live replica counted the same answers as nginx says it gave.
    def live_200():
        return live.metrics().get(
            'sketchguide_http_requests_total{method="POST",route="/v1/generate",code="200"}', 0)
    wait_for(lambda: live_200() >= served[a_live], 120, "the live replica's request counter")
    assert live_200() == served[a_live]
    assert live.metrics()["sketchguide_ready"] == 1

    held_s = re.search(r"job %s succeeded in ([0-9.]+) s" % held, dlog)
    refused_503 = sum(e["statuses"].count("503") for e in entries)
    failed_conn = sum(e["statuses"].count("502") for e in entries)
    print("\nload: %d requests, %d answered 200, %d retried on another replica (%d upstream 503 while draining, "
          "%d upstream connection failures); answered by replica 0 (killed) %d, replica 1 (drained) %d, replica 2 %d; "
          "drained replica: %d jobs, %d finished after SIGTERM, the held one in %s s; %d requests after the kill, %d after "
          "the drain" % (len(results), sum(r["status"] == 200 for r in results), len(retried), refused_503, failed_conn,
             served[a_killed], served[a_drained], served[a_live], len(jobs), len(finished_in_drain),
             held_s.group(1) if held_s else "?", after_kill, after_drain))
