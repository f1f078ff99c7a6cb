"""deploy/nginx.conf in front of three real `sketchguide serve` replicas on loopback ports, with Debian's nginx: async jobs
found on their own replica, and a load of synchronous generations during which one replica is SIGKILLed and another
drained with SIGTERM. Pass criteria (strict, because one replica stays alive throughout, so nginx always has somewhere to
retry): every request answers 200 with a PNG of the model's size; the drained replica exits 0 after finishing every job
it accepted, each answered 200 and received by a client; requests started after a replica's exit never name it as the
replica that answered; the surviving replica keeps answering; nginx's log and the replicas' own counts agree. Nothing
here measures time. The checks are balancer.py's, shared with test_image.py, which runs them against containers."""
import os
import re
import signal
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "server"))
import balancer  # noqa: E402  (render_conf, the nginx front and the checks, shared with test_image.py)
from balancer import CONF, render_conf  # noqa: E402
from test_http import Server  # noqa: E402  (tests/server's `sketchguide serve` wrapper)


class ProcessReplica(Server):
    """A `sketchguide serve` process as balancer.py's replica."""

    def __init__(self):
        # drain and collect limits no busy machine reaches: the test checks that every accepted job finishes and that
        # the job held through the drain is fetched
        super().__init__("--drain-seconds", "600", "--collect-seconds", "600", "--max-queue", "16")

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(120)

    def drain(self):
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(900)


@pytest.fixture
def cluster():
    replicas = []
    front = None
    try:
        for _ in range(3):
            replicas.append(ProcessReplica())
        front = balancer.Front(replicas)
        yield front
    finally:
        if front:
            front.close()
        for r in replicas:
            if r.proc.poll() is None:
                r.stop()
            r.close()


def test_render_conf_keeps_the_upstream_parameters(tmp_path):
    text = render_conf(CONF, [1001, 1002, 1003], 2000, "/tmp/x")
    up = re.search(r"upstream sketchguide \{(.*?)\n    \}", text, re.S).group(1)
    servers = re.findall(r"^\s*server (\S+)(.*);$", up, re.M)
    assert [s[0] for s in servers] == ["127.0.0.1:1001", "127.0.0.1:1002", "127.0.0.1:1003"]
    assert len({s[1] for s in servers}) == 1 and "max_fails=" in servers[0][1] and "fail_timeout=" in servers[0][1]
    assert "listen 127.0.0.1:2000;" in text and "/tmp/x/access.log" in text
    broken = tmp_path / "nginx.conf"
    broken.write_text(open(CONF).read().replace("listen 8080;", ""))
    with pytest.raises(AssertionError, match="listen"):
        render_conf(str(broken), [1], 2, "/tmp/x")


def test_async_jobs_are_found_on_their_replica(cluster):
    balancer.check_async_jobs_found_on_their_replica(cluster)


def test_kill_and_drain_under_load(cluster):
    balancer.check_kill_and_drain_under_load(cluster)
