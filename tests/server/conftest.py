"""Shared fixtures for the command-line tests: the built `sketchguide` binary (SKETCHGUIDE_BIN, set by meson) and paths."""
import os
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tools"))
SHARED = os.environ.get("SKETCHGUIDE_SHARED", os.path.join(os.path.dirname(ROOT), "shared"))
BUNDLED = os.path.join(ROOT, "models", "shapes")


def wait_for(cond, timeout=60.0, what="condition"):
    """Polls cond() until it returns something true (returned), or fails after timeout seconds."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = cond()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError("timed out waiting for " + what)


def batch_args():
    """The servers' --max-batch from SG_TEST_MAX_BATCH (`SG_TEST_MAX_BATCH=8 meson test openapi-conformance`: every
    server a suite starts batches that many jobs; docs/batching.md): ["--max-batch", N], or [] when it is unset. Put
    it before a test's own arguments, so that a test's --max-batch comes later and wins."""
    n = os.environ.get("SG_TEST_MAX_BATCH")
    return ["--max-batch", n] if n else []


def binary() -> str:
    """The binary under test: $SKETCHGUIDE_BIN (set by meson), else build/server/sketchguide; skips without one."""
    exe = os.environ.get("SKETCHGUIDE_BIN", os.path.join(ROOT, "build", "server", "sketchguide"))
    if not os.path.exists(exe):
        pytest.skip("no sketchguide binary at %s" % exe)
    return exe


@pytest.fixture(scope="session")
def sg():
    """Runs the binary: sg(*args, input=None) -> CompletedProcess (text mode, never raises on a non-zero exit)."""
    exe = binary()

    def run(*args, input=None, env=None, text=True, cwd=None):
        e = dict(os.environ, OPENBLAS_NUM_THREADS="1")
        e.update(env or {})
        return subprocess.run([exe] + [str(a) for a in args], input=input, capture_output=True, text=text, env=e,
                              cwd=cwd, timeout=600)
    return run
