#!/usr/bin/env python3
"""Runs one libFuzzer target for a bounded number of executions (the meson suite `fuzz`) or for a while (long runs,
docs/fuzzing.md), then reports its executions, libFuzzer's coverage (cov: edges, ft: features) and, given a
coverage build, the line coverage of the sources under test. Exits 0 when nothing was found, 1 with the finding's
report and reproducer, 77 (meson's skip) with --skip.

  run_fuzz.py --runs 20000 --work DIR [--dict F] [--max-len N] [--cov COVBIN --cov-source F...] FUZZBIN SEEDS...
  run_fuzz.py --time 3600 --keep --work DIR FUZZBIN SEEDS... [-- MORE LIBFUZZER FLAGS]
"""
import argparse
import os
import re
import resource
import shutil
import subprocess
import sys
import time

FINDINGS = ("crash-", "leak-", "timeout-", "oom-")  # libFuzzer's artifacts (slow-unit- is only a note)


def parse_args(argv):
    extra = []
    if "--" in argv:
        extra = argv[argv.index("--") + 1:]
        argv = argv[:argv.index("--")]
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--skip", metavar="REASON", help="say why the target cannot run and exit 77")
    ap.add_argument("--runs", type=int, help="executions (bounded run; the seed is fixed: -seed=1)")
    ap.add_argument("--time", type=int, help="seconds (long run; a random seed)")
    ap.add_argument("--work", help="working folder: corpus/ (inputs found), findings, fuzz.log")
    ap.add_argument("--keep", action="store_true", help="keep (and grow) the working corpus of an earlier run")
    ap.add_argument("--dict", help="a libFuzzer dictionary")
    ap.add_argument("--max-len", type=int, default=4096, help="longest input in bytes (default 4096)")
    ap.add_argument("--rss-limit-mb", type=int, default=2048, help="memory limit (default 2048)")
    ap.add_argument("--timeout", type=int, default=120,
                    help="seconds one input may take (default 120: generous, so that a loaded machine is no finding)")
    ap.add_argument("--cov", metavar="COVBIN", help="the target's coverage build (replay.c, -fcoverage-mapping)")
    ap.add_argument("--cov-source", action="append", default=[], help="a source file to report line coverage of")
    ap.add_argument("--llvm-profdata", default="llvm-profdata")
    ap.add_argument("--llvm-cov", default="llvm-cov")
    ap.add_argument("--symbolizer", help="llvm-symbolizer for the sanitizers' stack traces")
    ap.add_argument("binary", nargs="?")
    ap.add_argument("seeds", nargs="*")
    args = ap.parse_args(argv)
    if not args.skip and (not args.binary or not args.work or (args.runs is None) == (args.time is None)):
        ap.error("give FUZZBIN, --work and one of --runs or --time")
    return args, extra


def fuzz(args, extra, corpus):
    """Runs libFuzzer on corpus (written to) and the seed folders (read). Returns (rc, log text, CPU seconds)."""
    cmd = [args.binary, "-max_len=%d" % args.max_len, "-rss_limit_mb=%d" % args.rss_limit_mb,
           "-timeout=%d" % args.timeout, "-print_final_stats=1", "-artifact_prefix=%s/" % args.work]
    cmd += ["-seed=1", "-runs=%d" % args.runs] if args.runs is not None else ["-max_total_time=%d" % args.time]
    if args.dict:
        cmd.append("-dict=%s" % args.dict)
    cmd += extra + [corpus] + args.seeds
    env = dict(os.environ)
    # not strict_string_checks: it makes every strtol on the vocabulary scan the rest of it (minutes)
    env.setdefault("ASAN_OPTIONS", "detect_leaks=1:check_initialization_order=1:detect_stack_use_after_return=1")
    env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1")
    if args.symbolizer:
        env.setdefault("ASAN_SYMBOLIZER_PATH", args.symbolizer)
    log_path = os.path.join(args.work, "fuzz.log")
    print("$ " + " ".join(cmd), flush=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(log_path, "w") as log:
        rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    with open(log_path, errors="replace") as f:
        return rc, f.read(), cpu


def line_coverage(args, corpus):
    """Replays corpus and the seeds through the coverage build. Returns {source: (lines hit, lines, branches hit,
    branches)} for the --cov-source files, or a string saying why it could not."""
    for tool in (args.llvm_profdata, args.llvm_cov):
        if not shutil.which(tool):
            return "%s not found (Debian: llvm)" % tool
    raw = os.path.join(args.work, "cov.profraw")
    data = os.path.join(args.work, "cov.profdata")
    env = dict(os.environ, LLVM_PROFILE_FILE=raw)
    r = subprocess.run([args.cov, corpus] + args.seeds, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        return "the coverage build failed on the corpus: " + (r.stderr.strip().splitlines() or ["?"])[-1]
    subprocess.run([args.llvm_profdata, "merge", "-sparse", "-o", data, raw], check=True)
    r = subprocess.run([args.llvm_cov, "report", args.cov, "-instr-profile=" + data],
                       capture_output=True, text=True, check=True)
    out = {}
    # llvm-cov report's columns: Filename, Regions, Missed, Cover, Functions, Missed, Executed, Lines, Missed,
    # Cover, Branches, Missed, Cover; file names lose their common prefix, so they are matched as path tails.
    wanted = {os.path.realpath(p): p for p in args.cov_source}
    for line in r.stdout.splitlines():
        f = line.split()
        if len(f) < 13 or not f[7].isdigit() or not f[10].isdigit():
            continue
        for real, given in wanted.items():
            if real == f[0] or real.endswith("/" + f[0]):
                out[given] = (int(f[7]) - int(f[8]), int(f[7]), int(f[10]) - int(f[11]), int(f[10]))
    return out if out else "no coverage rows for " + ", ".join(args.cov_source)


def main(argv):
    args, extra = parse_args(argv)
    if args.skip:
        print("SKIP: " + args.skip)
        return 77
    name = os.path.basename(args.binary)
    os.makedirs(args.work, exist_ok=True)
    for old in os.listdir(args.work):
        if old.startswith(FINDINGS + ("slow-unit-",)):
            os.remove(os.path.join(args.work, old))
    corpus = os.path.join(args.work, "corpus")
    if not args.keep:
        shutil.rmtree(corpus, ignore_errors=True)
    os.makedirs(corpus, exist_ok=True)
    started = time.monotonic()
    rc, log, cpu = fuzz(args, extra, corpus)
    wall = time.monotonic() - started
    found = sorted(f for f in os.listdir(args.work) if f.startswith(FINDINGS))
    if rc != 0 or found:
        print(log[-12000:])
        print("FINDING: %s exited %d; input(s): %s" % (name, rc, ", ".join(os.path.join(args.work, f) for f in found)
                                                       or "none saved"))
        for f in found:
            print("reproduce: %s %s   (or the replay build, without libFuzzer)" % (args.binary,
                                                                                 os.path.join(args.work, f)))
        print("save the input under tests/fuzz/crashes-found/%s/ once fixed, so that its replay test keeps it fixed"
              % name.replace("fuzz_", ""))
        return 1
    # the last status line: "#N DONE cov: ..." (or "#N pulse/NEW ..."), or "#N: cov: ..." in -fork mode
    status = re.findall(r"^#(\d+):?\s+(?:[A-Za-z]+\s+)?cov: (\d+) ft: (\d+) corp: (\d+)(?:/(\S+))?", log, re.M)
    stats = dict(re.findall(r"stat::(\w+):\s+(\d+)", log))
    if not status:
        print(log[-4000:])
        print("ERROR: no statistics from %s" % name)
        return 1
    last = status[-1]
    runs = int(stats.get("number_of_executed_units", last[0]))
    m = {1: last[1], 2: last[2], 3: last[3], 4: last[4] or "?"}
    seeds = sum(len(os.listdir(s)) for s in args.seeds if os.path.isdir(s))
    print("%s: %d executions in %.1f s (%.0f/s wall, %.0f per CPU second), cov: %s ft: %s, corpus %s inputs (%s) "
          "from %d seeds, %d new, peak rss %s MB, no findings" %
          (name, runs, wall, runs / max(wall, 1e-9), runs / max(cpu, 1e-9), m[1], m[2], m[3], m[4], seeds,
           int(stats.get("new_units_added", 0)), stats.get("peak_rss_mb", "?")))
    if args.cov:
        cov = line_coverage(args, corpus)
        if isinstance(cov, str):
            print("%s: line coverage not measured: %s" % (name, cov))
        else:
            for path, (hit, lines, bhit, branches) in sorted(cov.items()):
                print("%s: %s: lines %d of %d (%.1f%%), branches %d of %d (%.1f%%) by the corpus" %
                      (name, "/".join(path.split("/")[-2:]), hit, lines, 100.0 * hit / max(lines, 1), bhit, branches,
                       100.0 * bhit / max(branches, 1)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
