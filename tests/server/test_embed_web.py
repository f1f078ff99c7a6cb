"""server/embed_web.py, the build step that embeds server/web/: the C table it writes, and its refusals."""
import os
import re
import subprocess
import sys

from conftest import ROOT

EMBED = os.path.join(ROOT, "server", "embed_web.py")


def run(out, *files):
    return subprocess.run([sys.executable, EMBED, str(out)] + [str(f) for f in files], capture_output=True, text=True)


def test_table(tmp_path):
    web = tmp_path / "web"
    web.mkdir()
    (web / "meson.build").write_text("# ignored\n")
    (web / "index.html").write_bytes(b"<!doctype html>\n")
    (web / "app.js").write_bytes(bytes(range(256)))
    (web / "empty.css").write_bytes(b"")
    out = tmp_path / "assets.c"
    r = run(out, web / "index.html", web / "app.js", web / "empty.css")
    assert r.returncode == 0, r.stderr
    c = out.read_text()
    rows = re.findall(r'\{"([^"]+)", "([^"]+)", f(\d+), (\d+), "\\"([0-9a-f]{20})\\""\}', c)
    assert [(n, t, int(size)) for n, t, _, size, _ in rows] == [
        ("app.js", "text/javascript; charset=utf-8", 256), ("empty.css", "text/css; charset=utf-8", 0),
        ("index.html", "text/html; charset=utf-8", 16)]  # sorted by name
    assert "SG_WEB_N_ASSETS = 3;" in c
    arrays = dict(re.findall(r"static const unsigned char f(\d+)\[\d+\] = \{\n(.*?)\};", c, re.S))
    data = bytes(int(v) for v in re.findall(r"\d+", arrays[rows[0][2]]))
    assert data == bytes(range(256))
    assert len({r[4] for r in rows}) == 3  # content tags differ


def test_refusals(tmp_path):
    web = tmp_path / "web"
    web.mkdir()
    (web / "index.html").write_text("x")
    (web / "stray.js").write_text("y")
    r = run(tmp_path / "a.c", web / "index.html")
    assert r.returncode != 0 and "not listed" in r.stderr and "stray.js" in r.stderr
    (web / "stray.js").unlink()
    (web / "Bad.html").write_text("z")
    r = run(tmp_path / "a.c", web / "index.html", web / "Bad.html")
    assert r.returncode != 0 and "[a-z0-9._-]" in r.stderr
    (web / "Bad.html").unlink()
    (web / "x.exe").write_text("z")
    r = run(tmp_path / "a.c", web / "index.html", web / "x.exe")
    assert r.returncode != 0 and "no content type" in r.stderr
    assert not (tmp_path / "a.c").exists()


def test_the_build_embeds_every_file_of_server_web():
    """server/web/meson.build lists exactly the folder's files (the build would fail otherwise; checked here too
    so that the failure names the file)."""
    folder = os.path.join(ROOT, "server", "web")
    listed = re.findall(r"'([^']+)'", re.search(r"files\(([^)]*)\)", open(os.path.join(folder, "meson.build")).read())
                        .group(1))
    assert sorted(listed) == sorted(n for n in os.listdir(folder) if n != "meson.build")
