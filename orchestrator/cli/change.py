"""The verbs that reach hosts to compute or make changes: plan, apply, rollback, destroy.

``validate`` and ``plan --offline`` are in offline.py.
"""

from __future__ import annotations

import argparse

from rich.markup import escape

from .. import failpoints
from ..core import render
from ..core.load import Loaded, Target
from ..hostrun import HostRun, Result
from ..plan import TargetPlan
from ..session import DesiredOf, Session, from_revisions, manifest_meta, rendered
from .common import EXIT_CHANGES, EXIT_ERROR, EXIT_OK, confirm, loaded_of, secrets_of, targets_of
from .output import Checks, RichReporter, err, out, show_notices, show_summary
from .planout import show_plans


def cmd_plan(args: argparse.Namespace) -> int:
    loaded = loaded_of(args)
    targets = targets_of(loaded, args)
    secrets = secrets_of(loaded)
    with Session(loaded, targets) as session:
        session.gather(with_preflight=True)
        if not args.json:
            show_notices(session)
        plans = session.plans(rendered(loaded, secrets), meta={})
        errors = session.host_errors()
        checks = session.preflight()
    show_plans(plans, errors, as_json=args.json, checks=checks)
    if errors or _blocking(plans, checks):
        return EXIT_ERROR
    return EXIT_CHANGES if any(p.changed for p in plans) else EXIT_OK


def _blocking(plans: list[TargetPlan], checks: Checks) -> list[str]:
    """Preflight errors of deployments that the plan would (re)start."""
    return [
        f"{p.host} {p.deployment}: {c.message}"
        for p in plans
        if p.restarts
        for c in checks.get((p.host, p.deployment), [])
        if not c.ok
    ]


# ---------------------------------------------------------------- apply / rollback / destroy


def cmd_apply(args: argparse.Namespace) -> int:
    loaded = loaded_of(args)
    desired_of = rendered(loaded, secrets_of(loaded))
    return _converge(args, loaded, desired_of, verb="apply")


def cmd_rollback(args: argparse.Namespace) -> int:
    loaded = loaded_of(args)
    return _converge(args, loaded, from_revisions(args.to), verb="rollback")


def cmd_destroy(args: argparse.Namespace) -> int:
    loaded = loaded_of(args)

    def absent(run: HostRun, t: Target) -> render.Desired:
        return render.absent(t.deployment, t.host)

    args.no_rollback, args.force = True, False
    return _converge(args, loaded, absent, verb="destroy")


def _converge(args: argparse.Namespace, loaded: Loaded, desired_of: DesiredOf, *, verb: str) -> int:
    targets = targets_of(loaded, args)
    reporter = RichReporter()
    with Session(loaded, targets, reporter=reporter) as session:
        session.lock(verb, wait_s=args.lock_timeout)
        session.gather(with_preflight=verb != "destroy")
        show_notices(session)
        plans = session.plans(desired_of, meta=manifest_meta(loaded, verb=verb))
        errors = session.host_errors()
        checks = session.preflight()
        failpoints.reach("after-facts")
        show_plans(plans, errors, as_json=False, checks=checks)
        if not any(p.changed for p in plans):
            out.print("[green]Nothing to do.[/green]")
            return _summary([*session.execute(plans), *errors]) if errors else EXIT_OK
        blocking = _blocking(plans, checks)
        if blocking and not args.force:
            err.print(
                f"[red]preflight failed[/red] ({len(blocking)} problem(s)); nothing was changed. "
                "Fix them, or pass --force to apply anyway."
            )
            return EXIT_ERROR
        for line in blocking:
            err.print(f"[yellow]warning: --force: going on despite:[/yellow] {escape(line)}")
        if not confirm(args, f"{verb.capitalize()} these changes?"):
            err.print("cancelled: nothing was changed")
            return EXIT_ERROR
        with reporter.live():
            results = session.execute(plans, restore=not args.no_rollback)
    return _summary([*results, *errors])


def _summary(results: list[Result]) -> int:
    show_summary(results)
    return EXIT_OK if all(r.ok for r in results) else EXIT_ERROR
