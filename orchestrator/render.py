"""Pure rendering: (deployment, host, secrets, templates) → the files a host should hold.

No I/O: template sources come in as text, secrets as already-resolved values.
"""

from __future__ import annotations

import hashlib
import re
import shlex
from dataclasses import dataclass, field
from typing import Literal

import jinja2

from .errors import ConfigError
from .model import ArgValue, Deployment, Host, ModelSource, VllmInstall
from .runners import Runner, RunnerName, Supervisord, log_path, program, runner_for
from .upload import UploadSpec

Role = Literal["unit", "env"]
ROLES: tuple[Role, ...] = ("env", "unit")
UNIT_MODE = 0o644
ENV_MODE = 0o600
_SAFE_WORD = re.compile(r"^[A-Za-z0-9_@%+=:,./-]+$")


@dataclass(frozen=True)
class Layout:
    """Where a deployment's files live on a host, and which runner manages it.

    Paths under the user's home start with ``~/``; commands expand them.
    """

    scope: Literal["system", "user"]
    name: str
    runner_name: RunnerName = "systemd"
    conf_dir: str | None = None

    @classmethod
    def of(cls, host: Host, name: str) -> Layout:
        return cls(host.scope, name, host.runner, host.supervisor_conf_dir)

    @property
    def runner(self) -> Runner:
        return runner_for(self.runner_name, self.scope, conf_dir=self.conf_dir)

    @property
    def unit_path(self) -> str:
        runner = self.runner
        if isinstance(runner, Supervisord):
            return runner.conf_path(f"orch-{self.name}")
        base = "/etc/systemd/system" if self.scope == "system" else "~/.config/systemd/user"
        return f"{base}/orch-{self.name}.service"

    @property
    def env_path(self) -> str:
        base = "/etc/orch" if self.scope == "system" else "~/.config/orch"
        return f"{base}/{self.name}.env"

    @property
    def state_dir(self) -> str:
        return f"/var/lib/orch/{self.name}" if self.scope == "system" else f"~/.local/state/orch/{self.name}"

    @property
    def env_file_directive(self) -> str:
        """The env file as the unit names it (``%h`` is the user's home in user units)."""
        return self.env_path.replace("~/", "%h/", 1)

    def path(self, role: Role) -> str:
        return self.unit_path if role == "unit" else self.env_path


@dataclass(frozen=True)
class DesiredFile:
    role: Role
    path: str
    content: str
    mode: int

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content.encode()).hexdigest()


@dataclass(frozen=True)
class Desired:
    """The files of one deployment on one host; ``None`` files mean 'absent'."""

    layout: Layout
    unit_name: str
    files: tuple[DesiredFile, ...] | None
    secret_keys: frozenset[str] = field(default_factory=frozenset)
    # Where this state comes from; recorded in the revision manifest.
    origin: str = "apply"
    vllm: VllmInstall | None = None
    upload: UploadSpec | None = None
    fetch: ModelSource | None = None  # a hub download (hf, modelscope)
    python: str = "python3"  # the host's Python that runs hub downloads: the deployment's venv

    @property
    def present(self) -> bool:
        return self.files is not None

    def file(self, role: Role) -> DesiredFile | None:
        return next((f for f in self.files or () if f.role == role), None)


@dataclass(frozen=True)
class TemplateSource:
    name: str
    text: str


@dataclass(frozen=True)
class TemplateSources:
    unit: TemplateSource
    env: TemplateSource
    supervisor: TemplateSource

    def for_runner(self, runner: RunnerName) -> TemplateSource:
        return self.supervisor if runner == "supervisord" else self.unit


def systemd_quote(word: str) -> str:
    """Quote one ExecStart= argument so systemd passes it through verbatim.

    systemd expands ``%`` specifiers and ``$VAR`` even in quotes, so both are doubled.
    """
    escaped = word.replace("%", "%%").replace("$", "$$")
    if _SAFE_WORD.match(word):
        return escaped
    return '"' + escaped.replace("\\", "\\\\").replace('"', '\\"') + '"'


def env_quote(value: str) -> str:
    """Quote a value for an EnvironmentFile= (double quotes, shell-style escapes)."""
    return '"' + re.sub(r'(["\\$`])', r"\\\1", value) + '"'


def argv(dep: Deployment) -> list[str]:
    """The vLLM command line; no secret ever appears in it."""
    head = _launcher(dep)
    flags: dict[str, ArgValue] = {
        "--served-model-name": dep.served_name,
        "--host": dep.bind,
        "--port": dep.port,
        "--tensor-parallel-size": dep.tensor_parallel_size,
    }
    if dep.pipeline_parallel_size > 1:
        flags["--pipeline-parallel-size"] = dep.pipeline_parallel_size
    if dep.accelerator == "cuda":
        flags["--gpu-memory-utilization"] = dep.gpu_memory_utilization
    if dep.max_model_len is not None:
        flags["--max-model-len"] = dep.max_model_len
    if dep.dtype is not None:
        flags["--dtype"] = dep.dtype
    flags.update(dep.args)
    return head + _flag_words(flags)


def _launcher(dep: Deployment) -> list[str]:
    bindir = f"{dep.venv}/bin/" if dep.venv else ""
    if dep.launcher.kind == "serve":
        return [f"{bindir}vllm", "serve", dep.model_path]
    return [venv_python(dep), "-m", "vllm.entrypoints.openai.api_server", "--model", dep.model_path]


def _flag_words(flags: dict[str, ArgValue]) -> list[str]:
    words: list[str] = []
    for flag, value in flags.items():
        if value is None or value is False:
            continue
        words.append(flag)
        if value is not True:
            words.append(str(value))
    return words


def environment(dep: Deployment, secrets: dict[str, str]) -> list[tuple[str, str]]:
    """The env file's variables in a stable order: devices, playbook env, secrets."""
    items: list[tuple[str, str]] = []
    if dep.accelerator == "cuda":
        items.append(("CUDA_DEVICE_ORDER", "PCI_BUS_ID"))
        items.append(("CUDA_VISIBLE_DEVICES", ",".join(str(g) for g in dep.gpus)))
    items.extend(sorted(dep.env.items()))
    items.extend(sorted(secrets.items()))
    return items


def render(
    dep: Deployment,
    host: Host,
    *,
    secrets: dict[str, str],
    templates: TemplateSources,
    upload: UploadSpec | None = None,
) -> Desired:
    """Render the unit and env file of ``dep`` for ``host``."""
    layout = Layout.of(host, dep.name)
    context: dict[str, object] = {
        "deployment": dep,
        "host": host,
        "scope": host.scope,
        "argv": argv(dep),
        "env": environment(dep, secrets),
        "env_file": layout.env_file_directive,
        "program": program(dep.unit_name),
        "log_file": log_path(dep.unit_name),
    }
    files = (
        DesiredFile("env", layout.env_path, _render(templates.env, context), ENV_MODE),
        DesiredFile("unit", layout.unit_path, _render(templates.for_runner(host.runner), context), UNIT_MODE),
    )
    return Desired(
        layout,
        dep.unit_name,
        files,
        frozenset(secrets),
        vllm=dep.vllm,
        upload=upload,
        fetch=dep.fetch,
        python=venv_python(dep),
    )


def venv_python(dep: Deployment) -> str:
    return f"{dep.venv}/bin/python" if dep.venv else "python3"


def absent(dep: Deployment, host: Host) -> Desired:
    """The desired state of a destroyed deployment."""
    return Desired(Layout.of(host, dep.name), dep.unit_name, None)


def from_revision(
    dep: Deployment, host: Host, contents: dict[Role, str], *, secret_keys: frozenset[str], origin: str
) -> Desired:
    """The desired state that an earlier revision's files describe."""
    layout = Layout.of(host, dep.name)
    files = (
        DesiredFile("env", layout.env_path, contents["env"], ENV_MODE),
        DesiredFile("unit", layout.unit_path, contents["unit"], UNIT_MODE),
    )
    return Desired(layout, dep.unit_name, files, secret_keys, origin)


_ENV = jinja2.Environment(
    undefined=jinja2.StrictUndefined,
    autoescape=False,
    keep_trailing_newline=True,
    trim_blocks=True,
    lstrip_blocks=True,
)
_ENV.filters["sdquote"] = systemd_quote
_ENV.filters["envquote"] = env_quote
_ENV.filters["shquote"] = shlex.quote
_ENV.filters["shjoin"] = shlex.join


def _render(source: TemplateSource, context: dict[str, object]) -> str:
    try:
        return _ENV.from_string(source.text).render(context)
    except jinja2.TemplateSyntaxError as exc:
        raise ConfigError(f"template syntax: {exc.message}", file=source.name, line=exc.lineno) from None
    except jinja2.TemplateError as exc:
        raise ConfigError(f"template: {exc.message}", file=source.name) from None


def parse_env(text: str) -> dict[str, str]:
    """Read back an env file written by ``env_quote`` (the subset of systemd's syntax orch writes)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if not sep or key.startswith("#"):
            continue
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = re.sub(r'\\(["\\$`])', r"\1", value[1:-1])
        out[key.strip()] = value
    return out
