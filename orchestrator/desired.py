"""The desired state of a playbook's targets: its templates rendered on the controller.

Kept apart from session.py so that the verbs that reach no host (validate, plan --offline) import
no transport. Each template file is read once, and each template text compiled once
(``core.render``), however many deployments and hosts share it.
"""

from __future__ import annotations

from collections.abc import Callable

from .core import nodes, render
from .core.load import Loaded, Target
from .core.model import Templates
from .core.render import Desired, TemplateSources, UploadSpec
from .core.sources import templates_for


def renderer(
    loaded: Loaded, secrets_of: dict[str, dict[str, str]], *, checksums: bool = True
) -> Callable[[Target, str], Desired]:
    """Render a target's files; ``checksums=False`` leaves out a local model's upload (and its reads).

    The renderer takes the vLLM version found on the target's host ("" when not known), which decides
    a multi-node deployment's backend when it says ``auto``.
    """
    by_choice: dict[Templates, TemplateSources] = {}
    for d in loaded.playbook.deployments:
        if d.templates not in by_choice:
            by_choice[d.templates] = templates_for(loaded, d)
    sources = {d.name: by_choice[d.templates] for d in loaded.playbook.deployments}
    uploads = _uploads(loaded) if checksums else {}

    def render_target(target: Target, version: str = "") -> Desired:
        dep = target.deployment
        return render.render(
            dep,
            target.host,
            secrets=secrets_of[dep.name],
            templates=sources[dep.name],
            upload=uploads.get(dep.name),
            node=nodes.resolved(target.node, version) if target.node else None,
        )

    return render_target


def _uploads(loaded: Loaded) -> dict[str, UploadSpec]:
    """The checksums of each controller folder a deployment uploads (cached by size and mtime)."""
    from .provision import upload  # validate needs no checksums: it does not import this

    return {
        d.name: upload.local_spec(loaded.resolve(d.fetch.local), d.fetch.dest)
        for d in loaded.playbook.deployments
        if d.fetch is not None and d.fetch.local is not None
    }
