"""The verbs that reach hosts to compute or make changes: plan, apply, rollback, destroy.

``validate`` and ``plan --offline`` are in offline.py.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.markup import escape

from .. import failpoints, outputs, planfile
from ..core import render
from ..core.load import Loaded, Target, load
from ..errors import ConfigError
from ..hostrun import HostRun, Result
from ..plan import TargetPlan
from ..session import DesiredOf, Session, from_revisions, manifest_meta, rendered
from .common import EXIT_CHANGES, EXIT_ERROR, EXIT_OK, confirm, loaded_of, secrets_of, targets_of, trace_of
from .output import Checks, RichReporter, err, out, show_notices, show_summary
from .planout import show_plans, show_rollout


def cmd_plan(args: argparse.Namespace) -> int:
    loaded = loaded_of(args)
    targets = targets_of(loaded, args)
    secrets = secrets_of(loaded)  # the host's env file is compared with the one these values make
    with Session(loaded, targets, trace=trace_of(args)) as session:
        session.gather(to_plan=True)
        if not args.json:
            show_notices(session)
        plans = session.probe(session.plans(rendered(loaded, secrets), meta={}))
        errors = session.host_errors()
        checks = session.preflight()
    show_plans(plans, errors, as_json=args.json, checks=checks)
    if not args.json:
        show_rollout(plans, loaded.playbook.deployments)
    if errors or _blocking(plans, checks):
        if args.out:
            err.print(f"[red]plan not saved[/red] to {escape(str(args.out))}: it has errors")
        return EXIT_ERROR
    if args.out:
        _save_plan(args.out, loaded, plans)
    return EXIT_CHANGES if any(p.changed for p in plans) else EXIT_OK


def _save_plan(path: Path, loaded: Loaded, plans: list[TargetPlan]) -> None:
    saved = planfile.save(plans, loaded, manifest_meta(loaded))
    outputs.write_text(path, saved.to_json())
    err.print(
        f"saved the plan to {escape(str(path))}; `orch apply {escape(str(path))}` carries out exactly it"
    )


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
    saved = _saved_plan(args.playbook)
    if saved is not None:
        return _apply_saved(args, saved)
    loaded = loaded_of(args)
    desired_of = rendered(loaded, secrets_of(loaded))
    return _converge(args, loaded, desired_of, verb="apply")


def _saved_plan(path: Path) -> planfile.SavedPlan | None:
    """The saved plan at ``path``, or None when it is not one (a playbook, or unreadable: load says why)."""
    try:
        with path.open("rb") as fh:
            if not planfile.looks_like_plan(fh.read(4096)):
                return None
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    return planfile.SavedPlan.from_json(text, file=str(path))


def _apply_saved(args: argparse.Namespace, saved: planfile.SavedPlan) -> int:
    """Carry out a saved plan: its playbook, inventory, targets; refused if what it relied on changed."""
    if args.inventory or args.limit or args.deployment or args.reap:
        raise ConfigError(
            "a saved plan fixes its inventory, targets and changes: -i, --limit, --deployment and --reap "
            "do not apply",
            file=str(args.playbook),
        )
    loaded = load(Path(saved.playbook), inventory_override=Path(saved.inventory))
    if loaded.digest != saved.sources:
        raise ConfigError(
            f"the playbook or its inventory changed since the plan {args.playbook} was made; make a new plan",
            file=saved.playbook,
        )
    wanted = {t.key for t in saved.targets}
    targets = [t for t in loaded.targets() if (t.host_name, t.deployment.name) in wanted]
    args.yes = True  # the plan was reviewed when it was made
    return _converge(
        args, loaded, rendered(loaded, secrets_of(loaded)), verb="apply", targets=targets, saved=saved
    )


def cmd_rollback(args: argparse.Namespace) -> int:
    loaded = loaded_of(args)
    return _converge(args, loaded, from_revisions(args.to), verb="rollback")


def cmd_destroy(args: argparse.Namespace) -> int:
    loaded = loaded_of(args)

    def absent(run: HostRun, t: Target) -> render.Desired:
        return render.absent(t.deployment, t.host, t.node)

    args.no_rollback, args.force = True, False
    return _converge(args, loaded, absent, verb="destroy")


def _converge(
    args: argparse.Namespace,
    loaded: Loaded,
    desired_of: DesiredOf,
    *,
    verb: str,
    targets: list[Target] | None = None,
    saved: planfile.SavedPlan | None = None,
) -> int:
    targets = targets_of(loaded, args) if targets is None else targets
    reporter = RichReporter()
    reap = bool(getattr(args, "reap", False))
    with Session(loaded, targets, reporter=reporter, trace=trace_of(args)) as session:
        session.lock(verb, wait_s=args.lock_timeout)
        judged = verb != "destroy"  # preflight judges what would start; destroy starts nothing
        session.gather(to_plan=judged)
        show_notices(session)
        plans = session.plans(desired_of, meta=manifest_meta(loaded, verb=verb), reap=reap)
        plans = session.probe(plans) if judged else plans
        errors = session.host_errors()
        checks = session.preflight(reap=reap)
        failpoints.reach("after-facts")
        if saved is not None and _stale(saved, plans, errors):
            return EXIT_ERROR
        show_plans(plans, errors, as_json=False, checks=checks)
        show_rollout(plans, loaded.playbook.deployments)
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


def _stale(saved: planfile.SavedPlan, plans: list[TargetPlan], errors: list[Result]) -> bool:
    lines = [f"{e.host} {e.deployment}: {e.message}" for e in errors] + planfile.refusals(saved, plans)
    for line in lines:
        err.print(f"[red]✗[/red] {escape(line)}")
    if lines:
        err.print("[red]the saved plan no longer holds[/red]; nothing was changed. Make a new plan.")
    return bool(lines)


def _summary(results: list[Result]) -> int:
    show_summary(results)
    return EXIT_OK if all(r.ok for r in results) else EXIT_ERROR
