"""Preflight: can a deployment start on its host? Facts read in one command, judged by pure checks.

GPUs named and free enough (``gpu_memory_utilization × total`` — vLLM refuses
to start otherwise, after a long wait), the share of each GPU that the host's orch
deployments are given (at most 1 in all), the processes on them (the deployment's own,
its leftovers, other orch deployments' by name, foreign ones), the port, the launcher
and its vLLM version, the model folder and the fit of the model in the GPUs' memory.
CPU deployments skip the GPU checks. A deployment's own live processes (the unit's
main PID and its descendants) never count against it; see ``sharing`` for the rest.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ..core.layout import Layout, RunnerName
from ..core.model import Deployment, Host
from ..host import procs, pyreads, runners, siblings
from ..host.commands import MARK
from ..host.markers import decode
from ..host.procs import Proc
from ..host.pyreads import Ask
from ..host.siblings import Sibling
from . import gpu, ports, sharing
from .fit import FitConfigError, estimate_fit
from .gpu import Check, Gpu, GpuProcess, NvidiaSmiParseError

MIB = 1024**2


@dataclass(frozen=True)
class DeploymentProbe:
    main_pid: int = 0
    launcher_ok: bool = False
    vllm_version: str = ""
    model_is_dir: bool = False
    model_config: dict[str, Any] | None = None
    model_files: str = ""  # a digest of the model folder's file names and sizes (nodes compare it)


@dataclass(frozen=True)
class HostProbe:
    """What preflight read on one host."""

    gpus: tuple[Gpu, ...] = ()
    processes: tuple[GpuProcess, ...] = ()
    smi_error: str = ""
    parents: dict[int, int] = field(default_factory=dict)
    # The process managers the host has: systemd as PID 1, a supervisorctl.
    runners: frozenset[str] = frozenset({"systemd", "supervisord"})
    # None when the host could not list its listening ports (neither ``ss`` nor /proc/net/tcp).
    listeners: dict[int, frozenset[int]] | None = field(default_factory=dict)
    deployments: dict[str, DeploymentProbe] = field(default_factory=dict)
    uid: int | None = None  # the login's (or sudo's) uid: a user unit's mark names it
    marked: tuple[Proc, ...] = ()  # every process a runner marked as an orch deployment's (host.procs)
    siblings: tuple[Sibling, ...] = ()  # the orch deployments whose files are on the host
    # "address:port" of another node → "open", "refused" (reachable, nothing listens) or why not reached.
    peers: dict[str, str] = field(default_factory=dict)

    def descendants(self, pid: int) -> frozenset[int]:
        """``pid`` and every process below it."""
        if pid <= 0:
            return frozenset()
        found, frontier = {pid}, [pid]
        while frontier:
            parent = frontier.pop()
            children = [child for child, p in self.parents.items() if p == parent and child not in found]
            found.update(children)
            frontier.extend(children)
        return frozenset(found)


def launcher_python(dep: Deployment) -> str:
    """The launcher's own Python as shell words (the venv's path quoted; a script's interpreter line)."""
    if dep.venv:
        return shlex.quote(f"{dep.venv}/bin/python")
    # `vllm` is a script; its first line names its Python (maybe `/usr/bin/env python3`: two words).
    return (
        "python3"
        if dep.launcher.kind == "api_server"
        else "$(sed -n '1s/^#! *//p' \"$(command -v vllm)\" 2>/dev/null)"
    )


def launcher_exe(dep: Deployment) -> str:
    bindir = f"{dep.venv}/bin/" if dep.venv else ""
    if dep.launcher.kind == "router":
        return f"{bindir}vllm-router"
    return f"{bindir}{'vllm' if dep.launcher.kind == 'serve' else 'python' if bindir else 'python3'}"


def script(
    host: Host,
    deployments: list[Deployment],
    *,
    peers: tuple[tuple[str, int], ...] = (),
    after_facts: bool = False,
) -> str:
    """One shell script reading everything preflight judges, for every deployment of a host but the
    vLLM versions (``asks``: read in the Python processes that end the facts script). ``peers``: the
    other nodes' addresses and ports, tried from this host; ``after_facts``: the script follows
    ``facts.gather``'s, which read the marked processes and each unit's main PID already (``joined``
    takes them from there)."""
    parts = [f'echo "{MARK}peers"', *map(_peer_script, peers)]
    if any(d.accelerator == "cuda" for d in deployments):
        parts += [
            f'echo "{MARK}gpus"',
            f'{gpu.QUERY_GPUS} 2>&1 || echo "{MARK}smi-failed $?"',
            f'echo "{MARK}apps"',
            f"{gpu.QUERY_PROCESSES} 2>/dev/null",
        ]
    parts += [
        f'echo "{MARK}ps"',
        "ps -eo pid=,ppid=",
        ports.SCRIPT,
        f'echo "{MARK}runners"',
        "[ -d /run/systemd/system ] && echo systemd",
        "command -v supervisorctl >/dev/null && echo supervisord",
        f'echo "{MARK}uid"',
        f'echo "{procs.UID}"',
        *([] if after_facts else [f'echo "{MARK}marked"', procs.LISTING]),
        f'echo "{MARK}siblings"',
        siblings.script(host.supervisor_conf_dir),
    ]
    models = list(dict.fromkeys(d.model_path for d in deployments))  # each folder read once
    # The digest of a folder's files is read only for the nodes of a multi-node deployment to compare.
    digests = {d.model_path for d in deployments if d.nodes}
    parts += [_model_script(i, model, digest=model in digests) for i, model in enumerate(models)]
    parts += [
        _deployment_script(host, d, main_pid=not after_facts, model=models.index(d.model_path))
        for d in deployments
    ]
    return "; ".join(parts)


def asks(deployments: list[Deployment]) -> list[Ask]:
    """The vLLM version each launcher's Python imports, in the deployment's own env (the part of it that
    can change the answer: PATH, PYTHONPATH…; never a secret)."""
    return [Ask(d.name, "version", launcher_python(d), env=pyreads.relevant_env(d.env)) for d in deployments]


def joined(probe: HostProbe, *, marked: tuple[Proc, ...], main_pids: Mapping[str, int]) -> HostProbe:
    """``probe`` (read with ``after_facts``) completed with what the facts read: the marked processes and
    each deployment's main PID."""
    deps = {name: replace(d, main_pid=main_pids.get(name, 0)) for name, d in probe.deployments.items()}
    deps.update({n: DeploymentProbe(main_pid=pid) for n, pid in main_pids.items() if n not in deps})
    return replace(probe, marked=marked, deployments=deps)


def _peer_script(peer: tuple[str, int]) -> str:
    """A TCP connect to another node (bash's /dev/tcp; the address travels as an argument, never as code)."""
    name, address = shlex.quote(f"{peer[0]}:{peer[1]}"), shlex.quote(peer[0])
    try_it = f"""timeout 3 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ {address} {int(peer[1])} 2>&1"""
    tried = f'r=$({try_it}); echo {name} $? "$r"'
    return f"if command -v bash >/dev/null; then {tried}; else echo {name} 127 no bash; fi"


def _model_script(i: int, path: str, *, digest: bool) -> str:
    """Into shell variables: whether the model folder is one, its config.json (base64) and (``digest``)
    a digest of its file names and sizes."""
    model = shlex.quote(path)
    listing = f"cd {model} && find -L . -type f -printf '%P %s\\n' | LC_ALL=C sort | sha256sum"
    return (
        f'orch_md{i}=""; test -d {model} && orch_md{i}=dir; '
        f"orch_mc{i}=$(base64 -w0 -- {model}/config.json 2>/dev/null); "
        + (f"orch_mf{i}=$({{ {listing}; }} 2>/dev/null)" if digest else f'orch_mf{i}=""')
    )


def _deployment_script(host: Host, dep: Deployment, *, main_pid: bool, model: int) -> str:
    exe = launcher_exe(dep)
    check_exe = (
        f"command -v {shlex.quote(exe)} >/dev/null" if "/" not in exe else f"test -x {shlex.quote(exe)}"
    )
    pid = runners.of(Layout.of(host, dep.name)).main_pid(dep.unit_name)
    # The launcher is looked up in the deployment's own environment (PATH…): the plain env of the
    # playbook, never a secret.
    env = "".join(f"export {shlex.quote(f'{k}={v}')}; " for k, v in sorted(dep.env.items()))
    launcher = f'echo "{MARK}launcher"; {check_exe} && echo ok'
    return "; ".join(
        [
            f"echo {shlex.quote(f'{MARK}dep {dep.name}')}",
            *([f'echo "{MARK}mainpid"', f"{pid} 2>/dev/null"] if main_pid else []),
            # (a path needs no env: no subshell for it)
            f"( {env}{launcher} )" if env and "/" not in exe else f"{{ {launcher}; }}",
            f'echo "{MARK}model"',
            f'[ -n "$orch_md{model}" ] && echo dir',
            f'echo "{MARK}config"',
            f"printf '%s\\n' \"$orch_mc{model}\"",
            f'echo "{MARK}files"',
            f"printf '%s\\n' \"$orch_mf{model}\"",
        ]
    )


def parse(output: str) -> HostProbe:
    head: list[str] = []
    blocks: dict[str, list[str]] = {}
    current: list[str] = head
    for line in output.splitlines():
        if line.startswith(f"{MARK}dep "):
            current = blocks.setdefault(line.split(" ", 1)[1].strip(), [])
        else:
            current.append(line)
    sec = _sections("\n".join(head))
    gpus, procs_on_gpus, smi_error = _parse_smi(sec)
    uid = "".join(sec.get("uid", [])).strip()
    return HostProbe(
        gpus=gpus,
        processes=procs_on_gpus,
        smi_error=smi_error,
        parents=_parse_ps(sec.get("ps", [])),
        listeners=ports.parse(sec),
        runners=frozenset(line.strip() for line in sec.get("runners", []) if line.strip()),
        deployments={name: _parse_deployment(_sections("\n".join(body))) for name, body in blocks.items()},
        uid=int(uid) if uid.isdigit() else None,
        marked=procs.parse(sec.get("marked", [])),
        siblings=siblings.parse("\n".join(sec.get("siblings", []))),
        peers=dict(_parse_peer(line) for line in sec.get("peers", []) if len(line.split()) >= 2),
    )


def _parse_peer(line: str) -> tuple[str, str]:
    peer, code, *said = line.split()
    text = " ".join(said)
    verdict = (
        "open" if code == "0" else "refused" if "refused" in text else "timed out" if code == "124" else ""
    )
    verdict = "not tried (no bash on the host)" if text == "no bash" else verdict
    return peer, verdict or text.rsplit(": ", 1)[-1] or f"exit code {code}"


def _sections(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    key = ""
    for line in text.splitlines():
        if line.startswith(f"{MARK}sib ") and key == "siblings":
            out[key].append(line)  # a sibling's block stays within the siblings section
        elif line.startswith(MARK):
            key = line[len(MARK) :].split(" ", 1)[0]
            out[key] = [line] if key == "smi-failed" else []
        elif key:
            out[key].append(line)
    return out


def _parse_smi(sec: dict[str, list[str]]) -> tuple[tuple[Gpu, ...], tuple[GpuProcess, ...], str]:
    if "gpus" not in sec:
        return (), (), ""
    if "smi-failed" in sec:
        return (), (), " ".join(sec["gpus"]).strip() or "nvidia-smi failed"
    try:
        return gpu.parse_gpus("\n".join(sec["gpus"])), gpu.parse_processes("\n".join(sec.get("apps", []))), ""
    except NvidiaSmiParseError as exc:
        return (), (), str(exc)


def _parse_ps(lines: list[str]) -> dict[int, int]:
    out = {}
    for line in lines:
        fields = line.split()
        if len(fields) == 2 and fields[0].isdigit() and fields[1].isdigit():
            out[int(fields[0])] = int(fields[1])
    return out


def _parse_deployment(sec: dict[str, list[str]]) -> DeploymentProbe:
    def first(key: str) -> str:
        return next((line.strip() for line in sec.get(key, []) if line.strip()), "")

    pid = first("mainpid")
    config_text = decode(first("config")) if first("config") else ""
    try:
        config = json.loads(config_text) if config_text else None
    except json.JSONDecodeError:
        config = None
    return DeploymentProbe(
        main_pid=int(pid) if pid.isdigit() else 0,
        launcher_ok=first("launcher") == "ok",
        vllm_version=first("version"),
        model_is_dir=first("model") == "dir",
        model_config=config if isinstance(config, dict) else None,
        model_files=first("files").split(" ")[0],
    )


# ---------------------------------------------------------------- pure checks


def view(dep: Deployment, probe: HostProbe, host: Host) -> sharing.View:
    """The host's processes sorted out for ``dep``: its own, its leftovers, other deployments', foreign."""
    own = probe.deployments.get(dep.name, DeploymentProbe())
    uid = probe.uid if probe.uid is not None else -1
    owner = procs.owner_of(Layout.of(host, dep.name), uid)
    return sharing.view(owner, probe.descendants(own.main_pid), probe.marked, probe.siblings)


def checks(
    dep: Deployment,
    probe: HostProbe,
    *,
    host: Host,
    peers: Sequence[Deployment] = (),
    reap: bool = False,
) -> list[Check]:
    """Every verdict for one deployment on one host.

    ``peers``: the verb's other deployments on the host (their GPU shares as the playbook gives them);
    ``reap``: the verb ends the deployment's leftover processes before it starts.
    """
    own = probe.deployments.get(dep.name, DeploymentProbe())
    v = view(dep, probe, host)
    orphans = frozenset(p.pid for p in v.orphans)
    port = ports.check_port(dep, probe.listeners, own=v.live, orphans=orphans, who=v.who, reap=reap)
    out = [check_runner(host.runner, probe), port, check_launcher(dep, own)]
    if dep.launcher.kind != "router":  # the router serves no model of its own
        out.append(check_model(dep, own))
    found = sharing.holders(probe.gpus, probe.processes, v)
    if dep.accelerator == "cuda":
        out += gpu_checks(dep, probe, v, found, peers=peers, reap=reap)
        out.append(check_fit(dep, probe, own))
    return out + sharing.orphan_check(v, found, reap=reap)


def check_runner(runner: RunnerName, probe: HostProbe) -> Check:
    if runner in probe.runners:
        return Check("runner", True, "ok", f"{runner} is there")
    other = "supervisord" if runner == "systemd" else "systemd"
    hint = f"; set runner: {other} for this host in the inventory" if other in probe.runners else ""
    what = "systemd is not PID 1" if runner == "systemd" else "supervisorctl is not installed"
    return Check("runner", False, "error", f"{what} on this host{hint}")


def check_launcher(dep: Deployment, own: DeploymentProbe) -> Check:
    exe = launcher_exe(dep)
    if dep.vllm and own.vllm_version != dep.vllm.version:
        found = own.vllm_version or "none"
        return Check(
            "launcher",
            True,
            "ok",
            f"{dep.vllm.package}=={dep.vllm.version} will be installed (found {found})",
        )
    if not own.launcher_ok:
        return Check("launcher", False, "error", f"launcher {exe} not found on the host (install vLLM there)")
    if not own.vllm_version:
        return Check("launcher", True, "warn", f"{exe} exists but its vLLM version could not be read")
    return Check("launcher", True, "ok", f"{exe}: vLLM {own.vllm_version}")


def check_model(dep: Deployment, own: DeploymentProbe) -> Check:
    path = dep.model_path
    if not path.startswith("/"):
        return Check("model", True, "ok", f"{path} is a hub id: vLLM downloads it at start (HF_ENDPOINT)")
    if dep.fetch is not None and own.model_config is None:
        return Check("model", True, "ok", f"model {path} will come from {dep.fetch.describe()}")
    if not own.model_is_dir:
        return Check("model", False, "error", f"model path {path} does not exist on the host")
    if own.model_config is None:
        return Check("model", False, "error", f"{path} has no readable config.json: not a model folder")
    return Check("model", True, "ok", f"model {path} present")


def gpu_checks(
    dep: Deployment,
    probe: HostProbe,
    v: sharing.View,
    found: Sequence[sharing.Holder],
    *,
    peers: Sequence[Deployment],
    reap: bool,
) -> list[Check]:
    if probe.smi_error or not probe.gpus:
        reason = probe.smi_error or "nvidia-smi listed no GPU"
        return [Check("gpus-exist", False, "error", f"cannot read GPUs: {reason}")]
    exist = gpu.check_gpus_exist(probe.gpus, dep.gpus)
    if not exist.ok:
        return [exist]
    return [
        exist,
        *sharing.free_memory_checks(dep, probe.gpus, found, reap=reap),
        *sharing.share_checks(dep, probe.gpus, found, v, peers=peers, reap=reap),
        sharing.foreign_check(found, dep.gpus),
    ]


def check_fit(dep: Deployment, probe: HostProbe, own: DeploymentProbe) -> Check:
    cards = [g.cuda_total_mib for g in probe.gpus if g.index in dep.gpus and g.cuda_total_mib]
    if own.model_config is None or not cards:
        return Check("fit", True, "warn", "fit not estimated (no config.json or no GPU memory figures)")
    try:
        est = estimate_fit(
            own.model_config,
            card_memory_bytes=min(cards) * MIB,
            tensor_parallel_size=dep.tensor_parallel_size,
            gpu_memory_utilization=dep.gpu_memory_utilization,
            max_model_len=dep.max_model_len,
            enforce_eager=bool(dep.args.get("--enforce-eager")),
        )
    except FitConfigError as exc:
        return Check("fit", True, "warn", f"fit not estimated: {exc}")
    summary = (
        f"weights {est.weight_bytes_per_rank / 1024**3:.1f} GiB/rank, KV cache ≈ {est.kv_tokens:,} tokens, "
        f"{est.max_concurrency:.1f}× at max_model_len {est.max_model_len}"
    )
    if est.verdict == "no-fit":
        return Check("fit", False, "error", f"does not fit: {'; '.join(est.reasons)} ({summary})")
    if est.verdict == "tight":
        return Check("fit", True, "warn", f"tight: {summary}")
    return Check("fit", True, "ok", summary)


def gpu_status(dep: Deployment, probe: HostProbe, host: Host) -> dict[str, Any]:
    """Per GPU of the deployment: the card's memory and utilisation, the deployment's own memory and who
    else holds memory there (other deployments by name); its TP balance (for ``status``)."""
    if dep.accelerator != "cuda" or not probe.gpus:
        return {}
    found = sharing.holders(probe.gpus, probe.processes, view(dep, probe, host))
    return sharing.gpu_status(dep, probe.gpus, found)
