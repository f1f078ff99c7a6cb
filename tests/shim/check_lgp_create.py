#!/usr/bin/python3
"""Checks LGPs created by the shim (ts_lgp_create, through test_lgp_create --write) against tools/lgp.py's LGP.

Usage: /usr/bin/python3 tests/shim/check_lgp_create.py BUILD/tests/shim/test_lgp_create
The saved module must load with torch.jit.load, have the Python module's state_dict keys, hold the same initial
weights as torch.manual_seed(seed) followed by lgp.LGP(...), and agree with it in training mode (output, running
statistics, gradients) and in eval mode. ts_rng_randint must give torch.randint's numbers.
"""
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import subprocess
import sys
import tempfile

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tools"))
import lgp as lgpmod  # noqa: E402

CONFIGS = [  # seed, tap channels, latent size, time_dim, out, hidden
    (0, [5, 7], 6, 8, 4, [16, 8]),
    (123, [64, 64, 128, 128, 128, 128, 128, 64, 64], 16, 32, 4, lgpmod.HIDDEN),
    (2**40 + 5, [3], 5, 7, 2, []),
]


def taps_for(chans, size, g):
    """Taps at the latent size, half of it and a quarter of it, in turn."""
    return [torch.randn(2, c, max(1, size >> (i % 3)), max(1, size >> (i % 3)), generator=g) for i, c in enumerate(chans)]


def check(exe: str, tmp: str, seed, chans, size, time_dim, out, hidden) -> None:
    path = os.path.join(tmp, "lgp%d.pt" % seed)
    subprocess.check_call([exe, "--write", path, str(seed), str(sum(chans)), str(size), str(time_dim), str(out),
                           ",".join(map(str, hidden))])
    c = torch.jit.load(path)
    torch.manual_seed(seed)
    p = lgpmod.LGP(sum(chans), size, time_dim, hidden, out)
    assert list(c.state_dict().keys()) == list(p.state_dict().keys())
    for k, v in p.state_dict().items():
        assert torch.equal(c.state_dict()[k], v), "initial %s differs" % k
    assert c.training and c.time_dim == time_dim and c.latent_size == size and c.out_channels == out
    g = torch.Generator().manual_seed(seed % 1000)
    taps = taps_for(chans, size, g)
    t = torch.randint(0, 1000, (2,), generator=g)
    target = torch.randn(2, out, size, size, generator=g)
    losses = []
    for net in (c, p):  # training mode: batch statistics, running statistics, gradients
        loss = (net(taps, t) - target).pow(2).sum(1).mean()
        loss.backward()
        losses.append(loss.item())
    assert losses[0] == losses[1], losses
    for (k, a), (_, b) in zip(c.named_parameters(), p.named_parameters()):
        assert torch.equal(a.grad, b.grad), "gradient of %s differs" % k
    for k, v in p.state_dict().items():
        assert torch.equal(c.state_dict()[k], v), "%s differs after a training-mode forward" % k
    c.eval()
    p.eval()
    with torch.no_grad():
        assert torch.equal(c(taps, t), p(taps, t))
        assert torch.equal(c(taps, t[0].clone()), p(taps, t[0].clone()))  # 0-dim t
    q = lgpmod.LGP(sum(chans), size, time_dim, hidden, out)
    q.load_state_dict(c.state_dict())  # the C module's weights go straight into Python's
    print("seed %d: %d taps, hidden %s, time_dim %d: identical to tools/lgp.py" % (seed, len(chans), hidden, time_dim))


def main() -> int:
    exe = sys.argv[1]
    with tempfile.TemporaryDirectory() as tmp:
        for cfg in CONFIGS:
            check(exe, tmp, *cfg)
    for seed, lo, hi, n in ((0, 0, 1000, 20), (5, 0, 3, 7), (2**33, -5, 40000, 300)):
        got = [int(x) for x in subprocess.check_output([exe, "--randint", str(seed), str(lo), str(hi), str(n)]).split()]
        want = torch.randint(lo, hi, (n,), generator=torch.Generator().manual_seed(seed)).tolist()
        assert got == want, "randint seed %d" % seed
    print("randint: identical to torch.randint")
    return 0


if __name__ == "__main__":
    sys.exit(main())
