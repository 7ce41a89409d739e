"""The verbs that compute or make changes: validate, plan, apply, rollback, destroy."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from rich.markup import escape

from .. import facts, failpoints, multinode, outputs, planfile, rollout
from ..core import render
from ..core.load import Loaded, Target, load
from ..core.secrets import refs as secret_refs
from ..errors import ConfigError
from ..hostrun import HostRun, Result
from ..plan import TargetPlan, plan_target
from ..session import DesiredOf, Session, from_revisions, manifest_meta, rendered, renderer
from .common import EXIT_CHANGES, EXIT_ERROR, EXIT_OK, confirm, loaded_of, secrets_of, targets_of
from .output import Checks, RichReporter, err, out, show_notices, show_plans, show_summary


def cmd_validate(args: argparse.Namespace) -> int:
    loaded = loaded_of(args)
    # Validation never reads a secret: a placeholder no template text can be confused with stands in.
    placeholders = {
        d.name: dict.fromkeys(secret_refs(d), "orch-validate-placeholder")
        for d in loaded.playbook.deployments
    }
    render_target = renderer(loaded, placeholders)
    for t in loaded.targets():
        render_target(t, "")
    n_dep, n_hosts = len(loaded.playbook.deployments), len({t.host_name for t in loaded.targets()})
    if args.json:
        out.print_json(data={"valid": True, "deployments": n_dep, "hosts": n_hosts})
    else:
        out.print(f"[green]ok[/green]: {args.playbook}: {n_dep} deployment(s) on {n_hosts} host(s)")
    return EXIT_OK


def cmd_plan(args: argparse.Namespace) -> int:
    loaded = loaded_of(args)
    targets = targets_of(loaded, args)
    secrets = secrets_of(loaded)
    if args.offline and args.out:
        raise ConfigError("an offline plan compares with nothing and cannot be saved", file=str(args.out))
    if args.offline:
        return _plan_offline(targets, renderer(loaded, secrets), as_json=args.json)
    with Session(loaded, targets) as session:
        session.gather(with_preflight=True)
        if not args.json:
            show_notices(session)
        plans = session.plans(rendered(loaded, secrets), meta={})
        errors = session.host_errors()
        checks = session.preflight()
    show_plans(plans, errors, as_json=args.json, checks=checks)
    if not args.json:
        show_rollout(loaded, plans)
    if errors or _blocking(plans, checks):
        if args.out:
            err.print(f"[red]plan not saved[/red] to {escape(str(args.out))}: it has errors")
        return EXIT_ERROR
    if args.out:
        _save_plan(args.out, loaded, plans)
    return EXIT_CHANGES if any(p.changed for p in plans) else EXIT_OK


def _save_plan(path: Path, loaded: Loaded, plans: list[TargetPlan]) -> None:
    meta = manifest_meta(loaded)
    saved = planfile.save(
        plans,
        playbook=str(loaded.path.resolve()),
        inventory=str(loaded.inventory_path.resolve()),
        sources=loaded.digest,
        made=meta["created"],
        by=meta["by"],
        orch=meta["orch_version"],
    )
    outputs.write_text(path, saved.to_json())
    err.print(
        f"saved the plan to {escape(str(path))}; `orch apply {escape(str(path))}` carries out exactly it"
    )


def show_rollout(loaded: Loaded, plans: list[TargetPlan]) -> None:
    lines = rollout.describe(plans, {d.name: d for d in loaded.playbook.deployments}) + multinode.describe(
        plans
    )
    for line in lines:
        out.print(f"[bold]{escape(line)}[/bold]")


def _blocking(plans: list[TargetPlan], checks: Checks) -> list[str]:
    """Preflight errors of deployments that the plan would (re)start."""
    return [
        f"{p.host} {p.deployment}: {c.message}"
        for p in plans
        if p.restarts
        for c in checks.get((p.host, p.deployment), [])
        if not c.ok
    ]


def _plan_offline(
    targets: list[Target], render_target: Callable[[Target, str], render.Desired], *, as_json: bool
) -> int:
    plans = [
        plan_target(
            host=t.host_name,
            deployment=t.deployment.name,
            desired=render_target(t, ""),
            facts=facts.DeploymentFacts(),
        )
        for t in targets
    ]
    show_plans(plans, [], as_json=as_json, offline=True)
    return EXIT_CHANGES


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
    if args.inventory or args.limit or args.deployment:
        raise ConfigError(
            "a saved plan fixes its inventory and targets: -i, --limit and --deployment do not apply",
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
    with Session(loaded, targets, reporter=reporter) as session:
        session.lock(verb, wait_s=args.lock_timeout)
        session.gather(with_preflight=verb != "destroy")
        show_notices(session)
        plans = session.plans(desired_of, meta=manifest_meta(loaded, verb=verb))
        errors = session.host_errors()
        checks = session.preflight()
        failpoints.reach("after-facts")
        if saved is not None and _stale(saved, plans, errors):
            return EXIT_ERROR
        show_plans(plans, errors, as_json=False, checks=checks)
        show_rollout(loaded, plans)
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
