#!/usr/bin/python3
"""Benchmark (run by hand): continuous batching (max_batch) through `sketchguide serve`, ratios from one run.

For each max_batch (default 1, 8, 16) a server is started (one worker, --threads), and for each workload
(unguided, guided, a mix of both) `--clients` concurrent clients each send `--per-client` synchronous 50-step
requests (different seeds): images per second over the workload and the p50/p99 client latency. Then the latency
of single requests at low load (one client, one at a time) at max_batch 1 and 8. The configurations are run in
rounds (1, 8, 16, 1, 8, 16, ...) so that a noisy neighbour hurts all alike; the load average is printed with the
figures. Ratios are against max_batch 1.

With --window S every max_batch runs at once instead, for the same S seconds per workload (a busy machine then
hurts all alike), with two more servers (max_batch 1 and 8) each answering one client one request at a time for
the low-load latency.

Usage: /usr/bin/python3 bench/bench_batch.py [--build build] [--threads 2] [--clients 8] [--per-client 2]
       [--rounds 1] [--batches 1,8,16] [--out bench/results/cpu-batching.txt] [--window S [--workloads mix,...]]
"""
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import io
import statistics
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_http import ROOT, multipart, pct, post, start_serve  # noqa: E402


def start_server(exe, model, threads, max_batch):
    return start_serve([exe, "serve", "--port", "0", "--model", model, "--threads", str(threads),
                        "--max-queue", "64", "--max-batch", str(max_batch), "--log-level", "warn",
                        "--warmup-steps", "2"])


def fields(guided: bool, seed: int, steps: int):
    return {"prompt": "a red star on a plain blue background", "steps": steps, "seed": seed,
            "beta": 1.6 if guided else 0, "cfg": 7.5}


def cpu_s(pid: int) -> float:
    """The process's user + system CPU seconds so far."""
    with open("/proc/%d/stat" % pid) as f:
        v = f.read().rsplit(")", 1)[1].split()
    return (int(v[11]) + int(v[12])) / os.sysconf("SC_CLK_TCK")


def load(port, sketch, kinds, clients, per_client, steps):
    """clients threads, each per_client requests; kinds(i) says whether request i is guided. Returns
    (images per second, latencies, failures)."""
    lat, bad, lock = [], [], threading.Lock()

    def client(c):
        for k in range(per_client):
            i = c * per_client + k
            body, ctype = multipart(fields(kinds(i), 1000 + i, steps), sketch)
            st, s, _ = post(port, body, ctype)
            with lock:
                (lat if st == 200 else bad).append(s if st == 200 else st)

    t0 = time.perf_counter()
    th = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in th:
        t.start()
    for t in th:
        t.join()
    return len(lat) / (time.perf_counter() - t0), lat, bad


def window(exe, a, sketch, batches, work_name, kinds, seconds, low_batches):
    """Every max_batch at once, for the same `seconds` window: a server each with `clients` clients sending
    requests back to back, and (low_batches) a server each with one client sending one request at a time. Counts
    what finished inside the window. Returns {key: (images, latencies, cpu seconds)}."""
    servers = {}
    try:
        for b in batches:
            servers[("load", b)] = start_server(exe, a.model, a.threads, b)
        for b in low_batches:
            servers[("low", b)] = start_server(exe, a.model, a.threads, b)
        out = {k: [0, [], 0.0] for k in servers}
        lock = threading.Lock()
        t_end = [0.0]

        def client(key, c):
            port = servers[key][1]
            i = c
            while True:
                body, ctype = multipart(fields(kinds(i), 1000 + i, a.steps), sketch)
                st, s, _ = post(port, body, ctype)
                if time.perf_counter() > t_end[0]:
                    return
                if st == 200:
                    with lock:
                        out[key][0] += 1
                        out[key][1].append(s)
                i += a.clients

        cpu0 = {k: cpu_s(p.pid) for k, (p, _) in servers.items()}
        t_end[0] = time.perf_counter() + seconds
        th = []
        for k in servers:
            for c in range(a.clients if k[0] == "load" else 1):
                th.append(threading.Thread(target=client, args=(k, c), daemon=True))
        for t in th:
            t.start()
        time.sleep(seconds)
        for k, (p, _) in servers.items():
            out[k][2] = cpu_s(p.pid) - cpu0[k]
        return out
    finally:
        for p, _ in servers.values():
            p.terminate()
        for p, _ in servers.values():
            p.wait(60)


def main_window(a, exe, sketch, batches) -> int:
    out = io.StringIO()

    def say(s):
        print(s, flush=True)
        out.write(s + "\n")

    work = {"unguided": lambda i: False, "guided": lambda i: True, "mix": lambda i: i % 2 == 1}
    say("sketchguide serve, bundled model, --threads %d, 50-step requests (cfg 7.5; guided: beta 1.6, stop 0.5)" % a.threads)
    say("every max_batch runs at once in the same %d s window (a busy shared machine hurts all alike): %d clients "
        "each sending requests back to back; low load: one client, one request at a time (alternately guided), at "
        "max_batch 1 and 8 in the same window. Counted: requests that finished inside the window." % (a.window, a.clients))
    say("images/s: wall clock; img/cpu-s: images per CPU-second of that server process")
    for w in a.workloads.split(","):
        l0 = os.getloadavg()[0]
        res = window(exe, a, sketch, batches, w, work[w], a.window, [1, 8] if w == "mix" else [])
        say("")
        say("workload %s: load average (1 min) %.1f at the start, %.1f at the end; nproc %d"
            % (w, l0, os.getloadavg()[0], os.cpu_count()))
        say("%-9s %-8s %7s %10s %7s %10s %7s %8s %8s" % ("max_batch", "clients", "images", "images/s", "ratio",
                                                       "img/cpu-s", "ratio", "p50 s", "p99 s"))
        base = res[("load", batches[0])]
        for k in sorted(res, key=lambda k: (k[0] != "load", k[1])):
            n, lat, cpu = res[k]
            b0n, _, b0c = base if k[0] == "load" else res[("low", 1)]
            say("%-9d %-8s %7d %10.4f %6.2fx %10.3f %6.2fx %8.1f %8.1f" % (
                k[1], str(a.clients) if k[0] == "load" else "1 (low)", n, n / a.window,
                n / b0n if b0n else 0, n / cpu if cpu else 0, (n / cpu) / (b0n / b0c) if b0n and cpu else 0,
                statistics.median(lat) if lat else 0, pct(lat, 0.99) if lat else 0))
        if res.get(("low", 1)) and res[("low", 1)][1] and res[("low", 8)][1]:
            m1, m8 = statistics.median(res[("low", 1)][1]), statistics.median(res[("low", 8)][1])
            say("low load: median latency max_batch 8 / max_batch 1 = %.3f" % (m8 / m1))
    if a.out:
        with open(a.out, "w") as f:
            f.write(out.getvalue())
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "shapes"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--per-client", type=int, default=2)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--low-load", type=int, default=3, help="sequential requests per max_batch for the latency")
    ap.add_argument("--batches", default="1,8,16")
    ap.add_argument("--out", default="")
    ap.add_argument("--window", type=int, default=0,
                    help="seconds: run every max_batch at once in one window per workload instead of one after another")
    ap.add_argument("--workloads", default="mix,unguided,guided", help="with --window")
    a = ap.parse_args()
    exe = os.path.join(a.build, "server", "sketchguide")
    with open(os.path.join(ROOT, "docs", "examples", "star.png"), "rb") as f:
        sketch = f.read()
    batches = [int(b) for b in a.batches.split(",")]
    if a.window:
        return main_window(a, exe, sketch, batches)
    work = {"unguided": lambda i: False, "guided": lambda i: True, "mix": lambda i: i % 2 == 1}
    res = {(b, w): [0.0, [], 0, 0.0] for b in batches for w in work}  # images/s, latencies, failures, images/cpu-s
    low = {b: [] for b in batches if b in (1, 8)}
    loads = [os.getloadavg()[0]]
    out = io.StringIO()

    def say(s):
        print(s, flush=True)
        out.write(s + "\n")

    for r in range(a.rounds):
        for b in batches:
            p, port = start_server(exe, a.model, a.threads, b)
            try:
                if b in low:  # one request at a time, alternating guided and unguided: wall and server CPU
                    for i in range(a.low_load):
                        body, ctype = multipart(fields(i % 2 == 1, 7 + i, a.steps), sketch)
                        c0 = cpu_s(p.pid)
                        st, s, _ = post(port, body, ctype)
                        if st == 200:
                            low[b].append((s, cpu_s(p.pid) - c0))
                for w, kinds in work.items():
                    c0 = cpu_s(p.pid)
                    ips, lat, bad = load(port, sketch, kinds, a.clients, a.per_client, a.steps)
                    ipc = len(lat) / max(cpu_s(p.pid) - c0, 1e-9)
                    e = res[(b, w)]
                    e[0] += ips / a.rounds
                    e[1] += lat
                    e[2] += len(bad)
                    e[3] += ipc / a.rounds
                    say("round %d max_batch %2d %-8s %.3f images/s, %.3f images per server CPU-second (load %.1f)"
                        % (r, b, w, ips, ipc, os.getloadavg()[0]))
            finally:
                p.terminate()
                p.wait(60)
            loads.append(os.getloadavg()[0])
    say("")
    say("sketchguide serve, bundled model, --threads %d, %d clients x %d requests of %d steps per workload, %d round(s);"
        % (a.threads, a.clients, a.per_client, a.steps, a.rounds))
    say("load average (1 min) during the run: %s; nproc %d" % (", ".join("%.1f" % x for x in loads), os.cpu_count()))
    say("(images/s: wall clock; img/cpu-s: images per CPU-second of the server process, which a busy machine's")
    say(" neighbours disturb less; ratios against max_batch %d)" % batches[0])
    say("%-9s %-8s %10s %7s %10s %7s %8s %8s %5s" % ("max_batch", "workload", "images/s", "ratio", "img/cpu-s", "ratio",
                                                   "p50 s", "p99 s", "fails"))
    for w in work:
        base, basec = res[(batches[0], w)][0], res[(batches[0], w)][3]
        for b in batches:
            ips, lat, bad, ipc = res[(b, w)]
            say("%-9d %-8s %10.3f %6.2fx %10.3f %6.2fx %8.2f %8.2f %5d" % (
                b, w, ips, ips / base if base else 0, ipc, ipc / basec if basec else 0,
                statistics.median(lat) if lat else 0, pct(lat, 0.99) if lat else 0, bad))
    if 1 in low and 8 in low and low[1] and low[8]:
        m1, m8 = statistics.median(x[0] for x in low[1]), statistics.median(x[0] for x in low[8])
        c1, c8 = statistics.median(x[1] for x in low[1]), statistics.median(x[1] for x in low[8])
        say("low load (one request at a time, %d each, half guided): median latency max_batch 1 %.2f s, 8 %.2f s: "
            "%.3fx; median server CPU per request %.2f s vs %.2f s: %.3fx" % (len(low[1]), m1, m8, m8 / m1, c1, c8,
                                                                             c8 / c1))
    if a.out:
        with open(a.out, "w") as f:
            f.write(out.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
