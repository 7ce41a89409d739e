"""The verbs that reach no host: ``validate`` and ``plan --offline``.

They import only the core (Pydantic, YAML, Jinja) and, for a plan, the printer: no transport,
no HTTP client, so they start fast. ``validate`` prints without rich.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from ..core.yamlread import printable
from ..desired import renderer
from ..errors import ConfigError
from .common import EXIT_CHANGES, EXIT_OK, loaded_of, placeholders, targets_of


def cmd_validate(args: argparse.Namespace) -> int:
    loaded = loaded_of(args)
    render_target = renderer(loaded, placeholders(loaded), checksums=False)
    targets = loaded.targets()
    for t in targets:
        render_target(t, "")
    n_dep, n_hosts = len(loaded.playbook.deployments), len({t.host_name for t in targets})
    if args.json:
        print(json.dumps({"valid": True, "deployments": n_dep, "hosts": n_hosts}, indent=2))
    else:
        path = printable(str(args.playbook), limit=4096)
        print(f"{_green('ok')}: {path}: {n_dep} deployment(s) on {n_hosts} host(s)")
    return EXIT_OK


def cmd_plan_offline(args: argparse.Namespace) -> int:
    from .. import facts
    from ..plan import plan_target
    from .planout import show_plans, show_rollout

    loaded = loaded_of(args)
    if args.out:
        raise ConfigError("an offline plan compares with nothing and cannot be saved", file=str(args.out))
    # Compared with nothing, the files show secrets as *** anyway: no secret value is read.
    render_target = renderer(loaded, placeholders(loaded))
    plans = [
        plan_target(
            host=t.host_name,
            deployment=t.deployment.name,
            desired=render_target(t, ""),
            facts=facts.DeploymentFacts(),
        )
        for t in targets_of(loaded, args)
    ]
    show_plans(plans, [], as_json=args.json, offline=True)
    if not args.json:
        show_rollout(plans, loaded.playbook.deployments)
    return EXIT_CHANGES


def _green(text: str) -> str:
    """``text`` in green on a colour terminal (as rich decides it: a tty, NO_COLOR unset, TERM not dumb)."""
    tty = sys.stdout.isatty() or bool(os.environ.get("FORCE_COLOR"))
    plain = "NO_COLOR" in os.environ or os.environ.get("TERM") == "dumb"
    return f"\x1b[32m{text}\x1b[0m" if tty and not plain else text
