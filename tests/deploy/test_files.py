"""The deployment files without a container engine or a cluster: deploy/Dockerfile (stages, user, health check, port,
settings by environment, the runtime packages against the binary's shared libraries, COPY sources against .dockerignore),
deploy/healthcheck.sh against a live server, the Kubernetes manifests (the official schemas through kubernetes-models,
then the fields this service relies on: probe routes, ports, grace period against the drain, the HPA's metric against
the live /metrics) and deploy/nginx.conf's settings against the service's limits. Each checker is also shown a broken
copy, which it must reject."""
import copy
import fnmatch
import json
import os
import re
import shutil
import socket
import subprocess
import sys

import pytest
import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "server"))
from conftest import ROOT, binary  # noqa: E402
from test_http import clean_env, srv  # noqa: E402,F401  (srv: a live server for the module)

DOCKERFILE = os.path.join(ROOT, "deploy", "Dockerfile")
K8S = os.path.join(ROOT, "deploy", "k8s")
NGINX_CONF = os.path.join(ROOT, "deploy", "nginx.conf")
VARIANTS = ("cpu", "cuda")


def print_config(env=None):
    """`sketchguide serve --print-config` under clean_env() plus env: the settings in force, as a dict."""
    r = subprocess.run([binary(), "serve", "--print-config"], env=clean_env(**(env or {})), capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def setting_names():
    """The SKETCHGUIDE_* variable of every setting."""
    return {"SKETCHGUIDE_" + k.upper() for k in print_config()}


# ---------------------------------------------------------------------------------------------------------------------
# Dockerfile

def parse_dockerfile(text):
    """Instructions as (KEYWORD, arguments) with continuation lines joined and comments dropped; stages as dicts
    {name, base, instructions}; the global ARGs before the first FROM as a dict."""
    logical, cur = [], ""
    for line in text.splitlines():
        if not cur and (line.lstrip().startswith("#") or not line.strip()):
            continue
        if cur and line.lstrip().startswith("#"):
            continue  # a comment inside a continued instruction
        if line.rstrip().endswith("\\"):
            cur += line.rstrip()[:-1] + " "
            continue
        logical.append(cur + line)
        cur = ""
    assert not cur, "the Dockerfile ends inside a continued line"
    glob, stages = {}, []
    for line in logical:
        kw, _, args = line.strip().partition(" ")
        kw, args = kw.upper(), args.strip()
        if kw == "FROM":
            m = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", args, re.I)
            assert m, "bad FROM: " + args
            stages.append({"base": m.group(1), "name": m.group(2), "ins": []})
        elif not stages:
            assert kw == "ARG", "only ARG may come before the first FROM: " + line
            k, _, v = args.partition("=")
            glob[k] = v
        else:
            stages[-1]["ins"].append((kw, args))
    return glob, stages


def chain(stages, variant):
    """The stages the final image of `variant` is made of, base first (following FROM <stage>), and the external base."""
    by_name = {s["name"]: s for s in stages if s["name"]}
    out, s = [], stages[-1]
    while True:
        out.insert(0, s)
        base = s["base"].replace("${VARIANT}", variant).replace("$VARIANT", variant)
        if base not in by_name:
            return out, base
        s = by_name[base]


def stage_named(stages, variant, name):
    return {s["name"]: s for s in stages}[name.replace("${VARIANT}", variant)]


def apt_packages(stage_list):
    """The packages of every `apt-get install` in these stages."""
    pk = []
    for s in stage_list:
        for kw, args in s["ins"]:
            if kw != "RUN":
                continue
            for part in re.split(r"&&|;", args):
                m = re.search(r"apt-get install(.*)", part)
                if m:
                    pk += [w for w in m.group(1).split() if not w.startswith("-")]
    return pk


def env_of(stage_list):
    env = {}
    for s in stage_list:
        for kw, args in s["ins"]:
            if kw == "ENV":
                for k, v in re.findall(r"(\w+)=(\"[^\"]*\"|\S+)", args):
                    env[k] = v.strip('"')
    return env


def last(stage_list, kw):
    found = [a for s in stage_list for k, a in s["ins"] if k == kw]
    return found[-1] if found else None


def dockerfile_problems(text):
    """What is wrong with the Dockerfile's structure, per variant: a list of sentences (empty when all is well)."""
    p = []
    glob, stages = parse_dockerfile(text)
    if glob.get("VARIANT") != "cpu":
        p.append("the build argument VARIANT must default to cpu")
    names = [s["name"] for s in stages]
    for variant in VARIANTS:
        final, base = chain(stages, variant)
        build = stage_named(stages, variant, "build")
        bchain, bbase = chain(stages[:stages.index(build) + 1], variant)
        if base != "debian:bookworm-slim":
            p.append("%s: the runtime must be based on debian:bookworm-slim, not %s" % (variant, base))
        if bbase != "debian:bookworm":
            p.append("%s: the build must be based on debian:bookworm, not %s" % (variant, bbase))
        if any(s is build for s in final):
            p.append("%s: the runtime image must not contain the build stage" % variant)
        if not any(k == "RUN" and "meson setup" in a and "ninja" in a for s in bchain for k, a in s["ins"]):
            p.append("%s: the build stage does not run meson and ninja" % variant)
        user = last(final, "USER")
        if not user or user.split(":")[0] in ("root", "0"):
            p.append("%s: the image must run as a non-root USER, not %r" % (variant, user))
        env = env_of(final)
        if env.get("SKETCHGUIDE_HOST") != "0.0.0.0":
            p.append("%s: SKETCHGUIDE_HOST must be 0.0.0.0 in a container" % variant)
        expose = last(final, "EXPOSE")
        if not expose or expose.split("/")[0] != env.get("SKETCHGUIDE_PORT"):
            p.append("%s: EXPOSE %s differs from SKETCHGUIDE_PORT %s" % (variant, expose, env.get("SKETCHGUIDE_PORT")))
        hc = last(final, "HEALTHCHECK")
        m = re.search(r"CMD\s+(\[.*\])", hc or "")
        if not m:
            p.append("%s: no HEALTHCHECK CMD in exec form" % variant)
        else:
            exe = json.loads(m.group(1))[0]
            if not any(k == "COPY" and a.split()[-1] == exe for s in final for k, a in s["ins"]):
                p.append("%s: the HEALTHCHECK runs %s, which no COPY puts there" % (variant, exe))
        if "serve" not in (last(final, "CMD") or "") or "sketchguide" not in (last(final, "ENTRYPOINT") or ""):
            p.append("%s: the image must start `sketchguide serve`" % variant)
        for s in final + bchain:
            for kw, a in s["ins"]:
                m = re.search(r"--from=(\S+)", a) if kw == "COPY" else None
                if m and m.group(1) not in names:
                    p.append("COPY --from=%s names no stage" % m.group(1))
    # hadolint's rules that apply here: DL3009 (apt lists removed), DL3015 (--no-install-recommends), DL3000 (absolute
    # WORKDIR), DL3020 (COPY, not ADD), DL3007 (no :latest), DL3027 (apt-get, not apt).
    for s in stages:
        if s["base"].endswith(":latest") or (":" not in s["base"] and "$" not in s["base"] and
                                             s["base"] not in names):
            p.append("FROM %s: pin a tag" % s["base"])
        for kw, a in s["ins"]:
            if kw == "ADD":
                p.append("ADD: use COPY")
            if kw == "WORKDIR" and not a.startswith("/"):
                p.append("WORKDIR %s is not absolute" % a)
            if kw == "RUN" and "apt-get install" in a:
                if "--no-install-recommends" not in a:
                    p.append("apt-get install without --no-install-recommends")
                if "rm -rf /var/lib/apt/lists/*" not in a or "apt-get update" not in a:
                    p.append("apt-get install must follow apt-get update and clean the lists in the same RUN")
            if kw == "RUN" and re.search(r"(^|[;&|]\s*)apt\s", a):
                p.append("RUN uses apt instead of apt-get")
    return p


def dockerignore_patterns():
    lines = open(os.path.join(ROOT, ".dockerignore"), encoding="utf-8").read().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


def ignored(path, patterns):
    """Whether the build context leaves out `path` (relative, with /), by .dockerignore's rules: the last matching
    pattern wins, `!` re-includes, a pattern that matches a folder leaves out everything in it, `**` any depth."""
    parts = path.split("/")
    out = False
    for pat in patterns:
        neg = pat.startswith("!")
        pat = pat[1:] if neg else pat
        pat = pat.strip("/")
        hit = False
        for i in range(1, len(parts) + 1):
            prefix = "/".join(parts[:i])
            if fnmatch.fnmatchcase(prefix, pat) or ("**/" in pat and fnmatch.fnmatchcase(prefix, pat.replace("**/", ""))):
                hit = True
        if hit:
            out = not neg
    return out


def test_dockerfile_structure():
    text = open(DOCKERFILE, encoding="utf-8").read()
    # no `# syntax=` directive: it makes BuildKit fetch its frontend from a registry, and the build stops offline
    assert text.startswith("# ") and not re.match(r"#\s*syntax\s*=", text, re.I), "the file's purpose, no syntax line"
    assert dockerfile_problems(text) == []


@pytest.mark.parametrize("breakage, expect", [
    (("USER 10001:10001", "USER root"), "non-root USER"),
    (("EXPOSE 8080", "EXPOSE 9090"), "EXPOSE"),
    (("FROM debian:bookworm-slim AS runtime-base", "FROM debian:bookworm AS runtime-base"), "bookworm-slim"),
    (("ARG VARIANT=cpu", "ARG VARIANT=cuda"), "VARIANT"),
    (("/usr/local/bin/sketchguide-healthcheck\n", "/usr/local/bin/hc\n"), "HEALTHCHECK"),
    ((" --no-install-recommends libtorch1.13", " libtorch1.13"), "no-install-recommends"),
    (("COPY --from=build /opt/build", "COPY --from=builder /opt/build"), "names no stage"),
])
def test_dockerfile_checker_rejects(breakage, expect):
    text = open(DOCKERFILE, encoding="utf-8").read()
    assert breakage[0] in text
    problems = dockerfile_problems(text.replace(breakage[0], breakage[1], 1))
    assert any(expect in q for q in problems), problems


def test_dockerfile_copies_exist_and_are_in_the_context():
    _, stages = parse_dockerfile(open(DOCKERFILE, encoding="utf-8").read())
    pats = dockerignore_patterns()
    sources = []
    for s in stages:
        for kw, a in s["ins"]:
            if kw == "COPY" and "--from=" not in a:
                words = [w for w in a.split() if not w.startswith("--")]
                sources += words[:-1]
    assert "models/shapes" in sources and "deploy/healthcheck.sh" in sources and "." in sources
    for src in sources:
        assert os.path.exists(os.path.join(ROOT, src)), src
        if src != ".":
            assert not ignored(src, pats), "%s is left out of the build context by .dockerignore" % src
    # The build needs the whole meson tree; nothing built or installed here goes in.
    for f in ("meson.build", "meson_options.txt", "shim/torchshim.cpp", "server/meson.build", "tests/meson.build",
              "models/shapes/model.json", "config/sketchguide.json"):
        assert not ignored(f, pats), f
    for f in ("build/build.ninja", "build-deploy/x", "node_modules/yaml/package.json", ".git/HEAD",
              "tools/__pycache__/x.pyc", "models/sd15/unet.pt"):
        assert ignored(f, pats), f
    assert os.access(os.path.join(ROOT, "deploy", "healthcheck.sh"), os.X_OK)


def dpkg_owners(paths):
    """{path: package} for the files dpkg knows among paths (tried as given, resolved and across the /usr merge)."""
    cands = {}
    for p in paths:
        for q in {p, os.path.realpath(p)}:
            for r in {q, re.sub(r"^/usr/lib/", "/lib/", q), re.sub(r"^/lib/", "/usr/lib/", q)}:
                cands.setdefault(r, p)
    out = subprocess.run(["dpkg", "-S"] + sorted(cands), capture_output=True, text=True).stdout
    owners = {}
    for line in out.splitlines():
        pkgs, _, f = line.partition(": ")
        if f in cands and "," not in pkgs:
            owners.setdefault(cands[f], pkgs.split(":")[0])
    return owners


def installed_packages():
    """{package: (essential or required, [dependency groups, each a list of alternatives])} and {virtual: [providers]}."""
    fmt = "${Package}\\t${Essential}\\t${Priority}\\t${Provides}\\t${Pre-Depends}, ${Depends}\\t${db:Status-Abbrev}\\n"
    out = subprocess.run(["dpkg-query", "-W", "-f=" + fmt], capture_output=True, text=True, check=True).stdout
    pk, provides = {}, {}

    def names(field):
        return [[re.sub(r"[:\s(].*", "", alt.strip()) for alt in group.split("|")]
                for group in field.split(",") if group.strip()]
    for line in out.splitlines():
        name, ess, prio, prov, deps, status = line.split("\t")
        if not status.startswith("ii"):
            continue
        pk[name] = (ess == "yes" or prio == "required", names(deps))
        for g in names(prov):
            provides.setdefault(g[0], []).append(name)
    return pk, provides


def closure(seed, pk, provides):
    """The packages apt installs for `seed` (alternatives: one already chosen, else the first, as apt does)."""
    have, todo = set(), list(seed)
    while todo:
        name = todo.pop()
        if name in have:
            continue
        have.add(name)
        for group in pk.get(name, (False, []))[1]:
            real = [provides.get(a, [a])[0] if a not in pk else a for a in group]
            if not any(r in have for r in real):
                todo.append(real[0])
    return have


def test_runtime_packages_cover_the_binarys_libraries():
    """Every library `ldd` lists comes from a package that the runtime stage installs (or that comes with those or with
    bookworm-slim); every library the binary names itself (NEEDED) from a package named in the Dockerfile or in the
    base. Read from this machine's dpkg database: this Debian 12 is the build stage's Debian."""
    exe = binary()
    _, stages = parse_dockerfile(open(DOCKERFILE, encoding="utf-8").read())
    listed = set(apt_packages(chain(stages, "cpu")[0]))
    ldd = subprocess.run(["ldd", exe], capture_output=True, text=True, check=True).stdout
    libs = dict(re.findall(r"^\s*(\S+) => (/\S+)", ldd, re.M))
    assert libs, ldd
    needed = re.findall(r"NEEDED\s+(\S+)", subprocess.run(["objdump", "-p", exe], capture_output=True, text=True,
                                                         check=True).stdout)
    assert needed
    owners = dpkg_owners(libs.values())
    missing = sorted(lib for lib, p in libs.items() if p not in owners)
    assert not missing, "libraries dpkg does not know: %s" % missing
    pk, provides = installed_packages()
    base = closure([n for n, (req, _) in pk.items() if req] + ["apt"], pk, provides)
    image = closure(listed | base, pk, provides)
    for lib in needed:
        if lib in libs:  # ld-linux is listed by its path alone
            assert owners[libs[lib]] in listed | base, "%s (package %s) is not installed by the runtime stage" % (
                lib, owners[libs[lib]])
    absent = sorted("%s (%s)" % (lib, owners[p]) for lib, p in libs.items() if owners[p] not in image)
    assert not absent, "libraries the runtime image would lack: %s" % absent
    # The build stage has the -dev package of every pkg-config dependency of meson.build.
    build = set(apt_packages(chain(stages[:[s["name"] for s in stages].index("build-cpu") + 1], "cpu")[0]))
    meson = open(os.path.join(ROOT, "meson.build"), encoding="utf-8").read()
    for dep in re.findall(r"dependency\('([\w.+-]+)'\)", meson):
        pcs = [os.path.join(d, dep + ".pc") for d in ("/usr/lib/x86_64-linux-gnu/pkgconfig", "/usr/share/pkgconfig")]
        pc = [p for p in pcs if os.path.exists(p)]
        assert pc, "no pkg-config file for %s" % dep
        assert dpkg_owners(pc)[pc[0]] in build, "the build stage lacks the package of %s" % dep


def test_container_settings_are_real_and_applied():
    """The image's environment is accepted by `serve --print-config` and puts the service on 0.0.0.0 and its port."""
    _, stages = parse_dockerfile(open(DOCKERFILE, encoding="utf-8").read())
    names = setting_names()
    for variant in VARIANTS:
        env = env_of(chain(stages, variant)[0])
        unknown = [k for k in env if k.startswith("SKETCHGUIDE_") and k not in names]
        assert not unknown, unknown
        cfg = print_config({k: v for k, v in env.items() if k.startswith("SKETCHGUIDE_")})
        assert cfg["host"] == "0.0.0.0" and str(cfg["port"]) == env["SKETCHGUIDE_PORT"]
        assert cfg["devices"] == {"cpu": "cpu", "cuda": "cuda"}[variant]
    # The CUDA runtime copies the libtorch folder the CUDA build was configured with.
    text = open(DOCKERFILE, encoding="utf-8").read()
    torch_dir = re.search(r"-Dtorch_dir=(\S+)", text).group(1)
    assert re.search(r"COPY --from=build %s/lib " % re.escape(torch_dir), text)


def test_healthcheck_script(srv, tmp_path):
    script = os.path.join(ROOT, "deploy", "healthcheck.sh")
    # the script's own read limit (2 s, for Docker) raised: a busy machine may answer later, which is not unhealthy
    ok = subprocess.run([script], env=dict(os.environ, SKETCHGUIDE_PORT=str(srv.port),
                                           SKETCHGUIDE_HEALTHCHECK_TIMEOUT_S="120"), capture_output=True, timeout=180)
    assert ok.returncode == 0, ok.stderr
    with socket.socket() as s:  # a port that refuses
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    bad = subprocess.run([script], env=dict(os.environ, SKETCHGUIDE_PORT=str(closed)), capture_output=True, timeout=180)
    assert bad.returncode != 0


# ---------------------------------------------------------------------------------------------------------------------
# Kubernetes

def validate_k8s(*paths):
    node = shutil.which("node")
    assert node, "node is needed (setup.sh installs it)"
    assert os.path.isdir(os.path.join(ROOT, "node_modules", "kubernetes-models")), "run setup.sh (npm ci)"
    return subprocess.run([node, os.path.join(HERE, "validate_k8s.js")] + list(paths), capture_output=True, text=True,
                          cwd=ROOT, timeout=120)


def test_manifests_match_the_kubernetes_schemas():
    r = validate_k8s(K8S)
    assert r.returncode == 0, r.stderr
    seen = [json.loads(line) for line in r.stdout.splitlines()]
    files = set()
    for d, _, fs in os.walk(K8S):
        files |= {os.path.relpath(os.path.join(d, f), ROOT) for f in fs if f.endswith(".yaml")}
    assert {os.path.relpath(os.path.join(ROOT, s["file"]), ROOT) for s in seen} == files
    kinds = {s["kind"] for s in seen}
    assert {"Deployment", "Service", "ConfigMap", "PodDisruptionBudget", "HorizontalPodAutoscaler",
            "Kustomization"} <= kinds


@pytest.mark.parametrize("doc, expect", [
    ("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec:\n  replicas: two\n"
     "  selector: {matchLabels: {a: b}}\n  template:\n    metadata: {labels: {a: b}}\n"
     "    spec: {containers: [{name: c, image: i}]}\n", "replicas must be integer"),
    ("apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {ports: [{port: 80, targetPort: http}]}\n---\n"
     "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec:\n"
     "  selector: {matchLabels: {a: b}}\n  template:\n    metadata: {labels: {a: b}}\n"
     "    spec: {containers: [{name: c, image: i, readinessProbe: {httpGet: {path: /readyz}}}]}\n",
     "document 1: data/spec/template/spec/containers/0/readinessProbe/httpGet must have required property port"),
    ("apiVersion: apps/v1\nkind: Deploymnet\nmetadata: {name: x}\n", "unknown kind"),
    ("apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: [missing.yaml]\n", "does not exist"),
])
def test_schema_validator_rejects(tmp_path, doc, expect):
    f = tmp_path / "bad.yaml"
    f.write_text(doc)
    r = validate_k8s(str(f))
    assert r.returncode == 1 and expect in r.stderr, r.stderr


def load_variant(name):
    """The documents `kubectl apply -k deploy/k8s/<name>` applies (resources followed through kustomizations)."""
    def walk(d):
        k = yaml.safe_load(open(os.path.join(d, "kustomization.yaml")))
        for r in k["resources"]:
            p = os.path.normpath(os.path.join(d, r))
            yield from walk(p) if os.path.isdir(p) else yaml.safe_load_all(open(p))
    return [x for x in walk(os.path.join(K8S, name)) if x]


def http_stop_grace():
    """The seconds `serve` gives the drained jobs' answers to go out after the drain (server/cmd_serve.c)."""
    src = open(os.path.join(ROOT, "server", "cmd_serve.c"), encoding="utf-8").read()
    return float(re.search(r"sg_http_stop\(http, ([\d.]+)\)", src).group(1))


def one(docs, kind):
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, "%d %s" % (len(found), kind)
    return found[0]


def manifest_problems(docs, variant, routes_ok, metrics_text, settings):
    """What is wrong with one variant's documents: probe routes (routes_ok(path) -> bool asks a live server), ports,
    labels, settings, grace period against the drain, resources, HPA target and metric (against metrics_text, a live
    /metrics). Returns a list of sentences."""
    p = []
    cm, svc, pdb = one(docs, "ConfigMap"), one(docs, "Service"), one(docs, "PodDisruptionBudget")
    dep, hpa = one(docs, "Deployment"), one(docs, "HorizontalPodAutoscaler")
    pod = dep["spec"]["template"]
    spec = pod["spec"]
    (c,) = spec["containers"]
    env = dict(cm["data"]) if any(e.get("configMapRef", {}).get("name") == cm["metadata"]["name"]
                                  for e in c.get("envFrom", [])) else {}
    if not env:
        p.append("the container does not read the ConfigMap (envFrom)")
    env.update({e["name"]: e["value"] for e in c.get("env", []) if "value" in e})
    unknown = [k for k in env if k.startswith("SKETCHGUIDE_") and k not in settings]
    if unknown:
        p.append("not settings: %s" % unknown)
    ports = {pt.get("name"): pt["containerPort"] for pt in c.get("ports", [])}
    if str(env.get("SKETCHGUIDE_PORT")) not in {str(v) for v in ports.values()}:
        p.append("SKETCHGUIDE_PORT %s is not a container port %s" % (env.get("SKETCHGUIDE_PORT"), ports))

    def port_of(x):
        return ports.get(x) if isinstance(x, str) else x
    want = {"readinessProbe": "/readyz", "livenessProbe": "/healthz", "startupProbe": None}
    for probe, path in want.items():
        pr = c.get(probe)
        if not pr or "httpGet" not in pr:
            p.append("no %s with httpGet" % probe)
            continue
        g = pr["httpGet"]
        if path and g["path"] != path:
            p.append("%s on %s, not %s" % (probe, g["path"], path))
        if not routes_ok(g["path"]):
            p.append("%s: %s is not a route that answers 200" % (probe, g["path"]))
        if str(port_of(g["port"])) != str(env.get("SKETCHGUIDE_PORT")):
            p.append("%s: port %s is not the service's port" % (probe, g["port"]))
    st = c.get("startupProbe", {})
    if st.get("periodSeconds", 10) * st.get("failureThreshold", 3) < 120:
        p.append("the startupProbe allows less than 2 minutes for the model to load")
    if port_of(svc["spec"]["ports"][0]["targetPort"]) not in ports.values():
        p.append("the Service's targetPort is not a container port")
    labels = pod["metadata"]["labels"]
    for what, sel in (("Service", svc["spec"]["selector"]), ("PodDisruptionBudget", pdb["spec"]["selector"]["matchLabels"]),
                      ("Deployment", dep["spec"]["selector"]["matchLabels"])):
        if not sel or any(labels.get(k) != v for k, v in sel.items()):
            p.append("the %s's selector does not select the pods" % what)
    ann = pod["metadata"].get("annotations", {})
    if str(ann.get("prometheus.io/port")) not in {str(v) for v in ports.values()} or \
            ann.get("prometheus.io/path") != "/metrics":
        p.append("the scrape annotations do not point at /metrics on the container port")
    # Shutdown: preStop, then SIGTERM and the drain, then the drained answers; all within the grace period.
    cmd = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    pre = float(cmd[1]) if len(cmd) == 2 and cmd[0] == "sleep" else None
    if pre is None or pre <= 0:
        p.append("the preStop hook must be `sleep N` (N > 0), so that endpoints go before the drain starts")
    defaults = json.load(open(os.path.join(ROOT, "config", "sketchguide.json")))
    drain = float(env.get("SKETCHGUIDE_DRAIN_SECONDS", defaults["drain_seconds"]))
    collect = float(env.get("SKETCHGUIDE_COLLECT_SECONDS", defaults["collect_seconds"]))
    grace = spec.get("terminationGracePeriodSeconds", 30)
    if pre is not None and grace <= pre + drain + collect + http_stop_grace():
        p.append("terminationGracePeriodSeconds %s <= preStop %s + drain %s + collect %s + %s" % (
            grace, pre, drain, collect, http_stop_grace()))
    req = c.get("resources", {}).get("requests", {})
    if "cpu" not in req or "memory" not in req or "memory" not in c.get("resources", {}).get("limits", {}):
        p.append("cpu and memory requests and a memory limit are needed")
    ref = hpa["spec"]["scaleTargetRef"]
    if (ref["kind"], ref["name"]) != ("Deployment", dep["metadata"]["name"]):
        p.append("the HPA does not scale the Deployment")
    (m,) = hpa["spec"]["metrics"]
    if variant == "gpu":
        lim = c["resources"].get("limits", {})
        if int(lim.get("nvidia.com/gpu", 0)) != 1:
            p.append("a GPU replica needs the limit nvidia.com/gpu: 1")
        if not spec.get("nodeSelector") and not spec.get("affinity"):
            p.append("a GPU replica needs a node selector")
        if not any(t.get("key") == "nvidia.com/gpu" for t in spec.get("tolerations", [])):
            p.append("a GPU replica needs the nvidia.com/gpu toleration")
        if env.get("SKETCHGUIDE_DEVICES", "").split(":")[0] != "cuda":
            p.append("a GPU replica must set SKETCHGUIDE_DEVICES to cuda")
        name = m.get("pods", {}).get("metric", {}).get("name") if m["type"] == "Pods" else None
        if not name or not re.search(r"^# TYPE %s gauge$" % re.escape(name), metrics_text, re.M):
            p.append("the HPA's metric %s is not a gauge of /metrics" % name)
    elif not (m["type"] == "Resource" and m["resource"]["name"] == "cpu"):
        p.append("the CPU variant's HPA should scale on cpu")
    return p


def live_routes(server):
    return lambda path: server.request("GET", path)[0] == 200


def test_manifests_fields(srv):
    metrics = srv.request("GET", "/metrics")[2].decode()
    settings = setting_names()
    for variant in ("cpu", "gpu"):
        assert manifest_problems(load_variant(variant), variant, live_routes(srv), metrics, settings) == []
    rule = yaml.safe_load(yaml.safe_load(open(os.path.join(K8S, "gpu", "prometheus-adapter-rules.yaml")))["data"]
                          ["config.yaml"])["rules"][0]
    metric = one(load_variant("gpu"), "HorizontalPodAutoscaler")["spec"]["metrics"][0]["pods"]["metric"]["name"]
    assert rule["seriesQuery"].startswith(metric + "{") and rule["name"]["as"] == metric
    assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}


def _set(path, value):
    def f(docs):
        d = one(docs, path[0])
        for k in path[1:-1]:
            d = d[k]
        d[path[-1]] = value
    return f


def _container(edit):
    def f(docs):
        edit(one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0])
    return f


@pytest.mark.parametrize("variant, breakage, expect", [
    ("cpu", _set(("Deployment", "spec", "template", "spec", "terminationGracePeriodSeconds"), 60), "terminationGrace"),
    ("cpu", _container(lambda c: c["readinessProbe"]["httpGet"].update(path="/ready")), "readinessProbe"),
    ("cpu", _container(lambda c: c["livenessProbe"]["httpGet"].update(port=9000)), "livenessProbe: port"),
    ("cpu", _set(("ConfigMap", "data", "SKETCHGUIDE_PORT"), "9000"), "SKETCHGUIDE_PORT"),
    ("cpu", _set(("ConfigMap", "data", "SKETCHGUIDE_MAX_QEUE"), "4"), "not settings"),
    ("cpu", _set(("Service", "spec", "selector"), {"app.kubernetes.io/name": "other"}), "Service's selector"),
    ("gpu", _set(("HorizontalPodAutoscaler", "spec", "metrics"),
                 [{"type": "Pods", "pods": {"metric": {"name": "sketchguide_queue_length"},
                                            "target": {"type": "AverageValue", "averageValue": "2"}}}]), "metric"),
    ("gpu", _container(lambda c: c["resources"]["limits"].pop("nvidia.com/gpu")), "nvidia.com/gpu"),
])
def test_manifest_checker_rejects(srv, variant, breakage, expect):
    docs = copy.deepcopy(load_variant(variant))
    breakage(docs)
    metrics = srv.request("GET", "/metrics")[2].decode()
    problems = manifest_problems(docs, variant, live_routes(srv), metrics, setting_names())
    assert any(expect in q for q in problems), problems


# ---------------------------------------------------------------------------------------------------------------------
# nginx

def nginx_size(v):
    m = re.fullmatch(r"(\d+)([kKmMgG]?)", v)
    return int(m.group(1)) * {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[m.group(2).lower()]


def nginx_seconds(v):
    m = re.fullmatch(r"(\d+)(ms|s|m|h)?", v)
    return int(m.group(1)) * {"ms": 0.001, "s": 1, None: 1, "m": 60, "h": 3600}[m.group(2)]


def test_nginx_conf_fits_the_service():
    text = open(NGINX_CONF, encoding="utf-8").read()
    assert text.startswith("# ")
    cfg = print_config(yaml.safe_load(open(os.path.join(K8S, "common", "configmap.yaml")))["data"])
    assert nginx_size(re.search(r"client_max_body_size (\S+);", text).group(1)) == cfg["max_body_bytes"]
    server_level = text[text.index("    server {"):text.index("        location")]
    nu = re.search(r"proxy_next_upstream ([^;]+);", server_level).group(1).split()
    assert {"error", "timeout", "http_503", "non_idempotent"} <= set(nu)
    assert nginx_seconds(re.search(r"proxy_read_timeout (\S+);", server_level).group(1)) > \
        cfg["default_timeout_ms"] / 1000
    assert int(re.search(r"proxy_next_upstream_tries (\d+);", server_level).group(1)) >= 2
    assert re.search(r"proxy_request_buffering on;", server_level)
    up = re.search(r"upstream sketchguide \{(.*?)\n    \}", text, re.S).group(1)
    assert re.search(r"^\s*server \S+ max_fails=\d+ fail_timeout=\d+s;", up, re.M)
    assert nginx_seconds(re.search(r"keepalive_timeout (\S+);", up).group(1)) < cfg["connection_timeout_s"]
    events = re.search(r"location ~ \^/v1/jobs/\[\^/\]\+/events\$ \{(.*?)\n        \}", text, re.S).group(1)
    assert "proxy_buffering off;" in events
    jobs = re.search(r"location /v1/jobs/ \{(.*?)\n        \}", text, re.S).group(1)
    assert "http_404" in jobs and "proxy_next_upstream_tries 0;" in jobs
