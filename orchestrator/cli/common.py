"""Steps every verb shares: load the playbook, pick its targets, read secrets, ask to go on."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from ..core.load import Loaded, Target, load
from ..core.secrets import refs, resolve
from ..errors import SecretError

if TYPE_CHECKING:
    from ..trace import Trace

EXIT_OK, EXIT_ERROR, EXIT_CHANGES = 0, 1, 2


def loaded_of(args: argparse.Namespace) -> Loaded:
    return load(args.playbook, inventory_override=args.inventory)


CHANGING = ("plan", "apply", "rollback", "destroy")


def targets_of(loaded: Loaded, args: argparse.Namespace) -> list[Target]:
    return loaded.select(
        limit=getattr(args, "limit", None),
        deployment=getattr(args, "deployment", None),
        whole=getattr(args, "verb", None) in CHANGING,
    )


def secrets_of(loaded: Loaded) -> dict[str, dict[str, str]]:
    try:
        return {d.name: resolve(d, base=loaded.path.parent) for d in loaded.playbook.deployments}
    except SecretError as exc:
        raise SecretError(f"{loaded.path}: {exc}") from None


def placeholders(loaded: Loaded) -> dict[str, dict[str, str]]:
    """Stand-ins for every secret, for the verbs that only render (``validate``, ``plan --offline``).

    Rendered files show secrets as ``***`` anyway, so these verbs never need a value; the stand-in is
    text no template could be confused with, and it is hidden like a real value.
    """
    return {d.name: dict.fromkeys(refs(d), "orch-secret-placeholder") for d in loaded.playbook.deployments}


def trace_of(args: argparse.Namespace) -> Trace | None:
    """What ``-v``/``-vv`` asked to see of the commands run on hosts (None: nothing)."""
    level = getattr(args, "verbose", 0)
    if not level:
        return None
    from ..trace import Trace
    from .output import trace_line

    return Trace(level, trace_line)


def confirm(args: argparse.Namespace, question: str) -> bool:
    if args.yes or not sys.stdin.isatty():
        return True
    from .output import err

    answer = err.input(f"{question} [y/N] ")
    return answer.strip().lower() in ("y", "yes")
