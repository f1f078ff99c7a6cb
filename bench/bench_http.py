#!/usr/bin/python3
"""Benchmark (run by hand): the HTTP service end to end against the engine alone, then under concurrent clients.

1. Latency: sequential synchronous requests (50 DDIM steps, beta 0 and the model's beta) through `sketchguide
   serve`. Each request's client-side latency is set against the engine's own time for it (the worker's
   X-Inference-Time-Ms: generation and PNG encoding), so a noisy neighbour hurts both alike (target: at most
   1.05x); bench_engine's per-image time on the same inputs is printed beside it.
2. Load: `--requests` answered requests (default 1000) from `--clients` concurrent clients, few steps each,
   against a queue of `--max-queue`; rejected clients wait as Retry-After says (at most 2 s) and try again:
   images per second, p50 and p99 latency, rejections (429) and the server's resident memory every 100 requests
   (it must level off, not grow).

Usage: /usr/bin/python3 bench/bench_http.py [--build build] [--threads 2] [--clients 8] [--requests 1000]
"""
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import http.client
import json
import statistics
import subprocess
import sys
import threading
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def multipart(fields: dict, sketch: bytes):
    b = uuid.uuid4().hex
    parts = []
    for k, v in fields.items():
        parts.append(("--%s\r\nContent-Disposition: form-data; name=\"%s\"\r\n\r\n%s\r\n" % (b, k, v)).encode())
    parts.append(("--%s\r\nContent-Disposition: form-data; name=\"sketch\"; filename=\"s.png\"\r\n"
                  "Content-Type: image/png\r\n\r\n" % b).encode() + sketch + b"\r\n")
    parts.append(("--%s--\r\n" % b).encode())
    return b"".join(parts), "multipart/form-data; boundary=" + b


def post(port: int, body: bytes, ctype: str):
    """One synchronous generation: (status, seconds, response headers)."""
    t0 = time.perf_counter()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    c.request("POST", "/v1/generate", body, {"Content-Type": ctype})
    r = c.getresponse()
    r.read()
    c.close()
    return r.status, time.perf_counter() - t0, dict(r.getheaders())


def rss_kb(pid: int) -> int:
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


def start_server(exe, model, threads, max_queue):
    return start_serve([exe, "serve", "--port", "0", "--model", model, "--threads", str(threads),
                        "--max-queue", str(max_queue), "--log-level", "warn", "--max-steps", "150"])


def start_serve(argv):
    """Starts `sketchguide serve` with argv and waits for "ready": (process, port)."""
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    port = None
    for line in p.stdout:
        if line.startswith("listening on"):
            port = int(line.rsplit(":", 1)[1])
        if line.startswith("ready"):
            break
    if port is None:
        raise SystemExit("the server did not start")
    threading.Thread(target=p.stdout.read, daemon=True).start()
    return p, port


def pct(v, q):
    v = sorted(v)
    return v[min(len(v) - 1, int(q * len(v)))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "shapes"))
    ap.add_argument("--sketch", default=os.path.join(ROOT, "docs", "examples", "star.png"))
    ap.add_argument("--prompt", default="a red star on a plain blue background")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--load-steps", type=int, default=2)
    ap.add_argument("--max-queue", type=int, default=4)
    a = ap.parse_args()
    exe = os.path.join(a.build, "server", "sketchguide")
    sketch = open(a.sketch, "rb").read()

    # 1. latency against the engine alone (same process count: one at a time)
    eng = subprocess.run([os.path.join(a.build, "bench", "bench_engine"), a.model, a.sketch, a.prompt, "50",
                          str(a.runs), str(a.threads)], capture_output=True, text=True, check=True)
    engine = json.loads(eng.stdout.strip().splitlines()[-1])
    srv, port = start_server(exe, a.model, a.threads, 16)
    lat = {}
    try:
        for name, beta in (("unguided", 0.0), ("guided", engine["beta"])):
            body, ct = multipart({"prompt": a.prompt, "steps": 50, "beta": beta, "seed": 0}, sketch)
            post(port, body, ct)  # warm
            ts = [post(port, body, ct) for _ in range(a.runs)]
            assert all(s == 200 for s, _, _ in ts), [s for s, _, _ in ts]
            lat[name] = [(t, float(h["X-Inference-Time-Ms"]) / 1000, float(h["X-Queue-Time-Ms"]) / 1000)
                         for _, t, h in ts]
    finally:
        srv.terminate()
        srv.wait()
    print("latency of one request, 50 DDIM steps, %d threads, %d requests each:" % (a.threads, a.runs))
    for name in ("unguided", "guided"):
        ratios = [t / inf for t, inf, _ in lat[name]]
        print("  %-9s HTTP median %.3f s, engine in the worker %.3f s, queue %.4f s; HTTP/engine median %.4fx "
              "(max %.4fx); bench_engine alone: best %.3f s, median %.3f s" % (
                  name, statistics.median(t for t, _, _ in lat[name]),
                  statistics.median(i for _, i, _ in lat[name]), statistics.median(q for _, _, q in lat[name]),
                  statistics.median(ratios), max(ratios), engine[name]["best_s"], engine[name]["median_s"]))

    # 2. load
    srv, port = start_server(exe, a.model, a.threads, a.max_queue)
    body, ct = multipart({"prompt": a.prompt, "steps": a.load_steps, "seed": 1}, sketch)
    lock = threading.Lock()
    done, ok_lat, codes, rss = [0], [], {}, [(0, rss_kb(srv.pid))]
    issued = [0]

    def client():
        while True:
            with lock:
                if issued[0] >= a.requests:
                    return
                issued[0] += 1
            while True:
                s, t, h = post(port, body, ct)
                with lock:
                    codes[s] = codes.get(s, 0) + 1
                if s != 429:
                    break
                time.sleep(min(float(h.get("Retry-After", "1")), 2.0))
            with lock:
                if s == 200:
                    ok_lat.append(t)
                done[0] += 1
                if done[0] % 100 == 0:
                    rss.append((done[0], rss_kb(srv.pid)))

    t0 = time.perf_counter()
    th = [threading.Thread(target=client) for _ in range(a.clients)]
    for t in th:
        t.start()
    for t in th:
        t.join()
    el = time.perf_counter() - t0
    srv.terminate()
    srv.wait()
    print("load: %d requests from %d clients, %d steps each, max_queue %d, %d threads, %.1f s" % (
        a.requests, a.clients, a.load_steps, a.max_queue, a.threads, el))
    print("  answers by status: %s" % json.dumps(codes, sort_keys=True))
    print("  images per second %.2f; latency of answered requests p50 %.3f s, p99 %.3f s" % (
        codes.get(200, 0) / el, pct(ok_lat, 0.5), pct(ok_lat, 0.99)))
    print("  rejections (429): %d" % codes.get(429, 0))
    print("  server resident memory (MiB) after N requests: %s" % ", ".join(
        "%d: %.0f" % (n, k / 1024) for n, k in rss))
    half = [k for n, k in rss if n >= a.requests // 2]
    if half:
        print("  growth over the second half: %+.1f MiB" % ((half[-1] - half[0]) / 1024))
    return 0


if __name__ == "__main__":
    sys.exit(main())
