"""Steps every verb shares: load the playbook, pick its targets, read secrets, ask to go on."""

from __future__ import annotations

import argparse
import sys

from ..core.load import Loaded, Target, load
from ..core.secrets import resolve
from ..errors import SecretError
from .output import err

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


def confirm(args: argparse.Namespace, question: str) -> bool:
    if args.yes or not sys.stdin.isatty():
        return True
    answer = err.input(f"{question} [y/N] ")
    return answer.strip().lower() in ("y", "yes")
