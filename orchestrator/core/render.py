"""Pure rendering: (deployment, host, secrets, templates) → the files a host should hold.

No I/O: template sources come in as text, secrets as already-resolved values. Templates
run in Jinja's immutable sandbox and cannot read files (no include, import or extends), so
rendering a playbook's template runs no code of its author on the controller.
"""

from __future__ import annotations

import functools
import hashlib
import json
import shlex
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import jinja2
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from pydantic import BaseModel

from ..errors import ConfigError
from . import nodes
from .layout import Layout, Role, RunnerName, log_path, program
from .masking import Masker, env_secrets
from .model import ArgValue, Deployment, Host, ModelSource, VllmInstall
from .quoting import env_quote as env_quote
from .quoting import parse_env as parse_env
from .quoting import systemd_quote as systemd_quote
from .secrets import refs

UNIT_MODE = 0o644
ENV_MODE = 0o600
MAX_RENDERED = 1 << 20  # a rendered file larger than this is a template's mistake


@dataclass(frozen=True)
class FileSum:
    path: str  # relative to the model folder
    size: int
    sha256: str


@dataclass(frozen=True)
class UploadSpec:
    """A controller folder, its checksums, and where it goes on the host."""

    local_dir: str
    dest: str
    files: tuple[FileSum, ...]

    def manifest_json(self, paths: set[str] | None = None) -> str:
        """The checksums of ``paths`` (default: all files), as the host keeps them."""
        data = {
            f.path: {"size": f.size, "sha256": f.sha256}
            for f in self.files
            if paths is None or f.path in paths
        }
        return json.dumps(data, indent=1, sort_keys=True) + "\n"


@dataclass(frozen=True)
class DesiredFile:
    role: Role
    path: str
    content: str
    mode: int

    @property
    def sha256(self) -> str:
        return digest(self.content)


def digest(content: str) -> str:
    """The checksum a revision's manifest records for one of its files."""
    return hashlib.sha256(content.encode()).hexdigest()


@dataclass(frozen=True)
class Desired:
    """The files of one deployment on one host; ``None`` files mean 'absent'.

    ``secret_keys`` name the env variables that hold secrets, ``secret_values`` are their values
    (plan masks them wherever a diff shows them), ``plain_keys``, when known, the env variables
    that hold none (any other key of an env file is masked as if secret). ``env`` is the env
    file's variables as a mapping: those it is rendered from, or those an earlier revision's file
    holds (secrets included: never shown).
    """

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
    secret_values: tuple[str, ...] = field(default=(), repr=False)
    plain_keys: frozenset[str] | None = None
    env: Mapping[str, str] = field(default_factory=dict, repr=False)
    node: nodes.NodeRole | None = None  # this host's part in a multi-node deployment

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


def argv(dep: Deployment, node: nodes.NodeRole | None = None) -> list[str]:
    """The vLLM command line (or vLLM's router's, or a node's); no secret ever appears in it."""
    head = _launcher(dep)
    if dep.launcher.kind == "router":
        own: dict[str, ArgValue] = {"--host": dep.bind, "--port": dep.port, **dep.args}
        return [*head, "--worker-urls", *dep.launcher.workers, *_flag_words(own)]
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
    if dep.router is not None:  # a replica's drain counts the requests in its handlers (observe/router.py)
        flags["--enable-server-load-tracking"] = True
    flags.update(dep.args)
    return head + _flag_words(flags) if node is None else nodes.argv(dep, node, head, _flag_words(flags))


def _launcher(dep: Deployment) -> list[str]:
    bindir = f"{dep.venv}/bin/" if dep.venv else ""
    if dep.launcher.kind == "serve":
        return [f"{bindir}vllm", "serve", dep.model_path]
    if dep.launcher.kind == "router":
        return [f"{bindir}vllm-router"]
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


def environment(
    dep: Deployment, secrets: dict[str, str], node: nodes.NodeRole | None = None
) -> list[tuple[str, str]]:
    """The env file's variables in a stable order: devices, the node's own, playbook env, secrets."""
    items: list[tuple[str, str]] = []
    if dep.accelerator == "cuda":
        items.append(("CUDA_DEVICE_ORDER", "PCI_BUS_ID"))
        items.append(("CUDA_VISIBLE_DEVICES", ",".join(str(g) for g in (node.gpus if node else dep.gpus))))
    items.extend(nodes.environment(node) if node else [])
    items.extend(sorted({**dep.env, **dict(node.env if node else ())}.items()))
    items.extend(sorted(secrets.items()))
    return items


def render(
    dep: Deployment,
    host: Host,
    *,
    secrets: dict[str, str],
    templates: TemplateSources,
    upload: UploadSpec | None = None,
    node: nodes.NodeRole | None = None,
) -> Desired:
    """Render the unit and env file of ``dep`` for ``host`` (``node``: its role in a multi-node deployment).

    An error in a template is one ConfigError naming its file, with no secret in its message.
    """
    layout = Layout.of(host, dep.name)
    hide = Masker.build(secrets.values())
    env = environment(dep, secrets, node)
    context: dict[str, object] = {
        "deployment": dep,
        "host": host,
        "scope": host.scope,
        "argv": argv(dep, node),
        "env": env,
        "node": node,
        "env_file": layout.env_file_directive,
        "program": program(dep.unit_name),
        "log_file": log_path(dep.unit_name),
    }
    unit = templates.for_runner(host.runner)
    files = (
        DesiredFile("env", layout.env_path, _render(templates.env, context, hide), ENV_MODE),
        DesiredFile("unit", layout.unit_path, _render(unit, context, hide), UNIT_MODE),
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
        secret_values=tuple(secrets.values()),
        plain_keys=plain_keys(dep, node),
        env=dict(env),
        node=node,
    )


def plain_keys(dep: Deployment, node: nodes.NodeRole | None = None) -> frozenset[str]:
    """The env variables of ``dep`` that hold no secret."""
    return frozenset(key for key, _ in environment(dep, {}, node))


def venv_python(dep: Deployment) -> str:
    return f"{dep.venv}/bin/python" if dep.venv else "python3"


def absent(dep: Deployment, host: Host, node: nodes.NodeRole | None = None) -> Desired:
    """The desired state of a destroyed deployment (plan masks the secrets of the files it removes)."""
    layout = Layout.of(host, dep.name)
    keys = frozenset(refs(dep))
    return Desired(layout, dep.unit_name, None, keys, plain_keys=plain_keys(dep, node), node=node)


def from_revision(
    dep: Deployment,
    host: Host,
    contents: dict[Role, str],
    *,
    secret_keys: frozenset[str] | None = None,
    origin: str,
    node: nodes.NodeRole | None = None,
) -> Desired:
    """The desired state that an earlier revision's files (read from the host) describe.

    ``secret_keys``: the revision's env keys that may hold secrets (by default every key its env
    file holds). Those the deployment declares as plain env hold none; the values of the others
    are read back from the env file, to be masked.
    """
    layout = Layout.of(host, dep.name)
    files = (
        DesiredFile("env", layout.env_path, contents["env"], ENV_MODE),
        DesiredFile("unit", layout.unit_path, contents["unit"], UNIT_MODE),
    )
    env = parse_env(contents["env"])
    plain = plain_keys(dep, node)
    keys = ((frozenset(env) if secret_keys is None else secret_keys) - plain) | frozenset(refs(dep))
    values = tuple(env_secrets(env, keys))
    return Desired(
        layout, dep.unit_name, files, keys, origin, secret_values=values, plain_keys=plain, env=env, node=node
    )


class _NoFiles(jinja2.BaseLoader):
    """Refuses every name: ``include``, ``import`` and ``extends`` cannot reach a file."""

    def get_source(self, environment: jinja2.Environment, template: str) -> tuple[str, str | None, None]:
        raise jinja2.TemplateNotFound(template, f"{template!r}: include, import and extends are not allowed")


class _Sandbox(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox, narrowed to the data of orch's models and to sizes a file can have."""

    intercepted_binops = frozenset({"*", "**"})

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        # Every check below and in Jinja's sandbox looks at the type of ``obj`` and the name only,
        # never at the value: the answer is kept per (type, name), a template reads the same few.
        key = (type(obj), attr)
        safe = _SAFE.get(key)
        if safe is None:
            safe = self._safe(obj, attr, value)
            if len(_SAFE) < MAX_SAFE_KEPT:
                _SAFE[key] = safe
        return safe

    def _safe(self, obj: Any, attr: str, value: Any) -> bool:
        if isinstance(obj, BaseModel) and not _model_attribute(type(obj), attr):
            return False  # Pydantic's own methods include parse_file, which reads a file
        return super().is_safe_attribute(obj, attr, value)

    def call_binop(self, context: jinja2.runtime.Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and isinstance(right, int) and abs(right) > 1024:
            raise SecurityError(f"exponent {right} is too large")
        if operator == "*" and _repeats(left, right) > MAX_RENDERED:
            raise SecurityError("the product is too large")
        return super().call_binop(context, operator, left, right)


_SAFE: dict[tuple[type, str], bool] = {}
MAX_SAFE_KEPT = 4096  # a template that makes up names cannot grow it without bound


def _model_attribute(cls: type[BaseModel], attr: str) -> bool:
    """A field, or a property or method that orch's models define (not one Pydantic defines)."""
    if attr in cls.model_fields:
        return True
    return any(attr in vars(k) for k in cls.__mro__ if issubclass(k, BaseModel) and k is not BaseModel)


def _repeats(left: Any, right: Any) -> int:
    """How many items ``left * right`` makes when it repeats a string or a sequence; 0 otherwise."""
    for seq, n in ((left, right), (right, left)):
        if isinstance(seq, str | list | tuple) and isinstance(n, int):
            return len(seq) * n
    return 0


_ENV = _Sandbox(
    loader=_NoFiles(),
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


@functools.lru_cache(maxsize=64)
def _compiled(text: str) -> jinja2.Template:
    """A template compiled once per text: a playbook of many deployments renders the same few."""
    return _ENV.from_string(text)


def _render(source: TemplateSource, context: Mapping[str, object], hide: Masker) -> str:
    try:
        text = _compiled(source.text).render(context)
    except jinja2.TemplateSyntaxError as exc:
        message = _one_line(f"template syntax: {exc.message}", hide)
        raise ConfigError(message, file=source.name, line=exc.lineno) from None
    except Exception as exc:  # the template's own code failed: its error, never a traceback
        what = "template" if isinstance(exc, jinja2.TemplateError) else f"template: {type(exc).__name__}"
        line = _template_line(exc.__traceback__)
        raise ConfigError(_one_line(f"{what}: {exc}", hide), file=source.name, line=line) from None
    if len(text) > MAX_RENDERED:
        raise ConfigError(f"template: the rendered file is over {MAX_RENDERED} characters", file=source.name)
    return text


def _one_line(message: str, hide: Masker) -> str:
    return " ".join(hide.text(message).split())


def _template_line(tb: TracebackType | None) -> int | None:
    """The template line that failed: Jinja rewrites the traceback so template frames carry it."""
    line = None
    for frame in _frames(tb):
        if frame.tb_frame.f_code.co_filename == "<template>":
            line = frame.tb_lineno
    return line


def _frames(tb: TracebackType | None) -> Iterator[TracebackType]:
    while tb is not None:
        yield tb
        tb = tb.tb_next
