#!/usr/bin/python3
"""Benchmark (run by hand): cluster mode (Redis) against local mode.

1. Overhead at one replica: a local `serve` and a `serve --role all --redis-url` side by side, synchronous requests
   (50 DDIM steps, the model's beta) sent alternately to each, one at a time, so that a noisy neighbour hurts both
   alike. Printed: the median latency of each (of --rounds, default 5), their ratio (target: at most 1.05x), and each
   mode's median latency over its own engine time (X-Inference-Time-Ms).
2. Throughput: one frontend and 1, 2, 4 workers (`--role worker`, --threads 1 each) take --jobs asynchronous jobs
   (default 16, --steps 10 each, beta 0) submitted at once; the wall time from the first submit to the last success
   gives jobs per second.

A redis-server of its own runs on a free loopback port (AOF, fsync always, as tests/cluster). Usage:
  /usr/bin/python3 bench/bench_cluster.py [--build build] [--rounds 5] [--jobs 16] [--out bench/results/cluster.txt]
"""
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import http.client
import json
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAR = os.path.join(ROOT, "docs", "examples", "star.png")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def multipart(fields):
    b = uuid.uuid4().hex
    parts = [("--%s\r\nContent-Disposition: form-data; name=\"%s\"\r\n\r\n%s\r\n" % (b, k, v)).encode()
             for k, v in fields.items()]
    parts.append(("--%s\r\nContent-Disposition: form-data; name=\"sketch\"; filename=\"s.png\"\r\n"
                  "Content-Type: image/png\r\n\r\n" % b).encode() + open(STAR, "rb").read() + b"\r\n")
    parts.append(("--%s--\r\n" % b).encode())
    return b"".join(parts), "multipart/form-data; boundary=" + b


def request(port, method, path, body=None, headers=None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=900)
    c.request(method, path, body, headers or {})
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, {k.lower(): v for k, v in r.getheaders()}, data


class Proc:
    def __init__(self, exe, *args):
        self.err = tempfile.TemporaryFile()
        self.p = subprocess.Popen([exe, "serve", "--port", "0"] + [str(a) for a in args], stdout=subprocess.PIPE,
                                  stderr=self.err, text=True)
        m = re.match(r"listening on http://\S+:(\d+)", self.p.stdout.readline())
        assert m, "no listening line"
        self.port = int(m.group(1))

    def wait_ready(self):
        line = self.p.stdout.readline()
        assert line.startswith("ready"), line

    def stop(self):
        self.p.terminate()
        try:
            self.p.wait(60)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--jobs", type=int, default=16)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    ap.add_argument("--skip-latency", action="store_true", help="only the throughput part")
    a = ap.parse_args()
    exe = os.path.join(a.build, "server", "sketchguide")
    out = []

    def say(line):
        print(line, flush=True)
        out.append(line)

    rdir = tempfile.mkdtemp(prefix="sg-bench-redis-")
    rport = free_port()
    redis = subprocess.Popen([shutil.which("redis-server") or "/usr/bin/redis-server", "--port", str(rport), "--bind",
                              "127.0.0.1", "--dir", rdir, "--save", "", "--appendonly", "yes", "--appendfsync",
                              "always"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = "redis://127.0.0.1:%d" % rport
    procs = []
    try:
        time.sleep(0.5)
        say("# bench_cluster.py, %s, %d CPU(s), torch threads %d per process" %
            (time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), os.cpu_count(), a.threads))
        if not a.skip_latency:
            # 1. overhead at one replica
            local = Proc(exe, "--threads", a.threads)
            procs.append(local)
            local.wait_ready()
            clus = Proc(exe, "--threads", a.threads, "--redis-url", url, "--worker-name", "bench-all")
            procs.append(clus)
            clus.wait_ready()
            body, ctype = multipart({"prompt": "a red star on a plain blue background", "steps": 50, "seed": 1})
            lat = {"local": [], "redis": []}
            eng = {"local": [], "redis": []}
            for i in range(a.rounds + 1):  # the first round warms both up and is not counted
                for name, p in (("local", local), ("redis", clus)) if i % 2 == 0 else (("redis", clus), ("local", local)):
                    t0 = time.perf_counter()
                    st, h, _ = request(p.port, "POST", "/v1/generate", body, {"Content-Type": ctype})
                    dt = time.perf_counter() - t0
                    assert st == 200, st
                    if i:
                        lat[name].append(dt)
                        eng[name].append(float(h["x-inference-time-ms"]) / 1000.0)
            ml, mr = statistics.median(lat["local"]), statistics.median(lat["redis"])
            say("one replica, 50 steps, median of %d: local %.3f s, redis %.3f s, ratio redis/local %.3fx" %
                (a.rounds, ml, mr, mr / ml))
            for name in ("local", "redis"):
                say("  %s: latency over engine time, median %.3fx (engine median %.3f s)" %
                    (name, statistics.median([x / y for x, y in zip(lat[name], eng[name])]), statistics.median(eng[name])))
            for p in procs:
                p.stop()
            procs.clear()
        # 2. throughput of 1, 2, 4 workers
        subprocess.run([shutil.which("redis-cli") or "/usr/bin/redis-cli", "-p", str(rport), "FLUSHALL"],
                       capture_output=True)
        front = Proc(exe, "--role", "frontend", "--redis-url", url, "--max-queue", 1000)
        procs.append(front)
        base = None
        for n in (1, 2, 4):
            workers = [Proc(exe, "--role", "worker", "--redis-url", url, "--threads", a.threads, "--worker-name",
                            "bench-w%d-%d" % (n, k)) for k in range(n)]
            for w in workers:
                w.wait_ready()
            if n == 1:
                front.wait_ready()
            body, ctype = multipart({"prompt": "a blue circle", "steps": a.steps, "beta": 0, "seed": 3,
                                     "timeout_ms": 3600000})  # a loaded machine must not turn this into timeouts
            t0 = time.perf_counter()
            ids = []
            for _ in range(a.jobs):
                st, _, data = request(front.port, "POST", "/v1/generate", body,
                                      {"Content-Type": ctype, "Prefer": "respond-async"})
                assert st == 202, data
                ids.append(json.loads(data)["id"])
            left = set(ids)
            while left:
                for j in list(left):
                    st, _, data = request(front.port, "GET", "/v1/jobs/" + j)
                    s = json.loads(data)["status"]
                    assert s in ("queued", "running", "succeeded"), data
                    if s == "succeeded":
                        left.discard(j)
                time.sleep(0.05)
            dt = time.perf_counter() - t0
            base = base or a.jobs / dt
            say("%d worker(s): %d jobs of %d steps in %.2f s: %.3f jobs/s (%.2fx one worker)" %
                (n, a.jobs, a.steps, dt, a.jobs / dt, a.jobs / dt / base))
            for w in workers:
                w.stop()
    finally:
        for p in procs:
            p.stop()
        redis.kill()
        redis.wait()
        shutil.rmtree(rdir, ignore_errors=True)
        if a.out:  # what was measured, even when a later part failed
            with open(a.out, "a" if a.skip_latency else "w") as fh:
                fh.write("\n".join(out) + "\n")


if __name__ == "__main__":
    sys.exit(main())
