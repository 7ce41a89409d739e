"""The ``orch`` command: verbs → calls → exit codes; no logic of its own, no host, no shell.

Exit codes: 0 success (``plan``: no changes), 2 ``plan`` has changes, 1 error.
Only OrchError is caught: it prints as one red line, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from rich.live import Live
from rich.markup import escape

from .. import __version__, facts, failpoints, outputs, status
from ..core import render
from ..core.load import Loaded, Target, load
from ..core.secrets import refs as secret_refs
from ..core.secrets import resolve
from ..errors import ConfigError, OrchError, SecretError
from ..hostrun import HostRun, Result
from ..observe import bench, monitoring
from ..plan import TargetPlan, plan_target
from ..session import DesiredOf, Session, from_revisions, logs, manifest_meta, rendered, renderer
from .args import parser
from .output import (
    Checks,
    RichReporter,
    check_json,
    err,
    metrics_table,
    out,
    result_json,
    revisions_table,
    run_bench,
    show_checks,
    show_host_errors,
    show_notices,
    show_plans,
    show_summary,
    status_table,
)

EXIT_OK, EXIT_ERROR, EXIT_CHANGES = 0, 1, 2


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(VERBS[args.verb](args))
    except OrchError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}")
        return EXIT_ERROR
    except KeyboardInterrupt:
        err.print("[red]interrupted[/red]")
        return 130


# ---------------------------------------------------------------- shared steps


def _load(args: argparse.Namespace) -> Loaded:
    return load(args.playbook, inventory_override=args.inventory)


def _targets(loaded: Loaded, args: argparse.Namespace) -> list[Target]:
    limit = set(args.limit) if getattr(args, "limit", None) else None
    targets = loaded.targets(limit=limit, deployment=getattr(args, "deployment", None))
    if limit:
        unknown = limit - set(loaded.inventory.hosts)
        if unknown:
            raise ConfigError(
                f"--limit names unknown host {sorted(unknown)[0]!r}", file=str(loaded.inventory_path)
            )
    if not targets:
        raise ConfigError("no deployment matches --limit/--deployment", file=str(loaded.path))
    return targets


def _secrets(loaded: Loaded) -> dict[str, dict[str, str]]:
    try:
        return {d.name: resolve(d, base=loaded.path.parent) for d in loaded.playbook.deployments}
    except SecretError as exc:
        raise SecretError(f"{loaded.path}: {exc}") from None


def _confirm(args: argparse.Namespace, question: str) -> bool:
    if args.yes or not sys.stdin.isatty():
        return True
    answer = err.input(f"{question} [y/N] ")
    return answer.strip().lower() in ("y", "yes")


# ---------------------------------------------------------------- validate / plan


def cmd_validate(args: argparse.Namespace) -> int:
    loaded = _load(args)
    # Validation never reads a secret: a placeholder no template text can be confused with stands in.
    secrets_of = {
        d.name: dict.fromkeys(secret_refs(d), "orch-validate-placeholder")
        for d in loaded.playbook.deployments
    }
    render_target = renderer(loaded, secrets_of)
    for t in loaded.targets():
        render_target(t)
    n_dep, n_hosts = len(loaded.playbook.deployments), len({t.host_name for t in loaded.targets()})
    if args.json:
        out.print_json(data={"valid": True, "deployments": n_dep, "hosts": n_hosts})
    else:
        out.print(f"[green]ok[/green]: {args.playbook}: {n_dep} deployment(s) on {n_hosts} host(s)")
    return EXIT_OK


def cmd_plan(args: argparse.Namespace) -> int:
    loaded = _load(args)
    targets = _targets(loaded, args)
    secrets_of = _secrets(loaded)
    if args.offline:
        return _plan_offline(targets, renderer(loaded, secrets_of), as_json=args.json)
    with Session(loaded, targets) as session:
        session.gather(with_preflight=True)
        if not args.json:
            show_notices(session)
        plans = session.plans(rendered(loaded, secrets_of), meta={})
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


def _plan_offline(
    targets: list[Target], render_target: Callable[[Target], render.Desired], *, as_json: bool
) -> int:
    plans = [
        plan_target(
            host=t.host_name,
            deployment=t.deployment.name,
            desired=render_target(t),
            facts=facts.DeploymentFacts(),
        )
        for t in targets
    ]
    show_plans(plans, [], as_json=as_json, offline=True)
    return EXIT_CHANGES


# ---------------------------------------------------------------- apply / rollback / destroy


def cmd_apply(args: argparse.Namespace) -> int:
    loaded = _load(args)
    desired_of = rendered(loaded, _secrets(loaded))
    return _converge(args, loaded, desired_of, verb="apply")


def cmd_rollback(args: argparse.Namespace) -> int:
    loaded = _load(args)
    return _converge(args, loaded, from_revisions(args.to), verb="rollback")


def cmd_destroy(args: argparse.Namespace) -> int:
    loaded = _load(args)

    def absent(run: HostRun, t: Target) -> render.Desired:
        return render.absent(t.deployment, t.host)

    args.no_rollback, args.force = True, False
    return _converge(args, loaded, absent, verb="destroy")


def _converge(args: argparse.Namespace, loaded: Loaded, desired_of: DesiredOf, *, verb: str) -> int:
    targets = _targets(loaded, args)
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
        if not _confirm(args, f"{verb.capitalize()} these changes?"):
            err.print("cancelled: nothing was changed")
            return EXIT_ERROR
        with reporter.live():
            results = session.execute(plans, restore=not args.no_rollback)
    return _summary([*results, *errors])


def _summary(results: list[Result]) -> int:
    show_summary(results)
    return EXIT_OK if all(r.ok for r in results) else EXIT_ERROR


# ---------------------------------------------------------------- status / revisions / logs / metrics


def cmd_status(args: argparse.Namespace) -> int:
    loaded = _load(args)
    targets = _targets(loaded, args)
    if not args.watch:
        rows, errors = status.status_rows(loaded, targets)
        if args.json:
            out.print_json(data={"deployments": rows})
        else:
            out.print(status_table(rows))
        return EXIT_ERROR if errors else EXIT_OK
    with Live(console=out, auto_refresh=False) as live:
        while True:
            live.update(status_table(status.status_rows(loaded, targets)[0]), refresh=True)
            time.sleep(args.watch)


def cmd_revisions(args: argparse.Namespace) -> int:
    loaded = _load(args)
    rows, errors = status.revision_rows(loaded, _targets(loaded, args))
    if args.json:
        out.print_json(data={"revisions": rows, "errors": [result_json(e) for e in errors]})
    else:
        out.print(revisions_table(rows))
    return EXIT_ERROR if errors else EXIT_OK


def cmd_logs(args: argparse.Namespace) -> int:
    loaded = _load(args)
    lock = threading.Lock()

    def show(host: str, deployment: str, line: str) -> None:
        with lock:
            out.print(f"[cyan]{escape(host)}[/cyan] {escape(deployment)} | {escape(line)}")

    errors = logs(loaded, _targets(loaded, args), lines=args.lines, follow=args.follow, on_line=show)
    for e in errors:
        err.print(f"[red]✗ {escape(e.host)}[/red]: {escape(e.message)}")
    return EXIT_ERROR if errors else EXIT_OK


def cmd_metrics(args: argparse.Namespace) -> int:
    loaded = _load(args)
    results = status.scrape(_targets(loaded, args))
    if args.json:
        data = [
            {"host": t.host_name, "deployment": t.deployment.name}
            | ({"error": m} if isinstance(m, str) else m.to_dict())
            for t, m in results
        ]
        out.print_json(data={"metrics": data})
    else:
        for t, m in results:
            out.rule(f"[bold]{escape(t.host_name)} · {escape(t.deployment.name)}[/bold]", align="left")
            out.print(f"[red]{escape(m)}[/red]" if isinstance(m, str) else metrics_table(m))
    return EXIT_ERROR if any(isinstance(m, str) for _, m in results) else EXIT_OK


def cmd_bench(args: argparse.Namespace) -> int:
    if args.compare:
        a, b = (_read_bench(p) for p in args.compare)
        out.print(bench.format_compare(a, b, labels=(args.compare[0].stem, args.compare[1].stem)))
        return EXIT_OK
    if args.playbook is None:
        raise ConfigError("bench needs a PLAYBOOK (or --compare A.json B.json)", file="orch bench")
    if min(args.num_requests, args.concurrency, args.output_len) < 1:
        raise ConfigError(
            "--num-requests, --concurrency and --output-len must be at least 1", file="orch bench"
        )
    loaded = _load(args)
    target, revision, ep = status.bench_target(loaded, _targets(loaded, args))
    cfg = bench.BenchConfig(
        base_url=ep.base_url,
        model=ep.served_name,
        num_requests=args.num_requests,
        concurrency=args.concurrency,
        request_rate=args.request_rate,
        input_len=args.input_len,
        output_len=args.output_len,
        prompt=args.prompt,
        seed=args.seed,
        api_key=ep.api_key,
        endpoint=args.endpoint,
    )
    result = bench.with_tags(
        run_bench(cfg),
        deployment=target.deployment.name,
        host=target.host_name,
        revision=str(revision or "-"),
        orch_version=__version__,
    )
    title = f"{target.deployment.name} on {target.host_name}, revision {revision or '-'}"
    out.print(bench.format_table(result, title=title))
    if args.save:
        outputs.write_text(args.save, result.to_json())
        out.print(f"saved {args.save}")
    return EXIT_OK if result.completed else EXIT_ERROR


def _read_bench(path: Path) -> bench.BenchResult:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", file=str(path)) from exc
    try:
        return bench.BenchResult.from_json(text) if '"orch-bench/' in text else bench.from_vllm_json(text)
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"not a bench result: {exc}", file=str(path)) from exc


def cmd_monitoring(args: argparse.Namespace) -> int:
    loaded = _load(args)
    targets = _targets(loaded, args)
    revisions, errors = status.current_revisions(loaded, targets)
    monitored = [
        monitoring.MonitorTarget(
            deployment=t.deployment.name,
            host=t.host_name,
            address=t.host.address,
            port=t.deployment.port,
            revision=revisions.get((t.host_name, t.deployment.name)),
            served_name=t.deployment.served_name,
        )
        for t in targets
    ]
    files = monitoring.files(monitored, gpu_exporter_port=args.gpu_exporter_port)
    written = outputs.write_files(args.out, files)
    out.print(f"wrote {', '.join(str(p) for p in written)} ({len(monitored)} targets)")
    for e in errors:
        err.print(f"[yellow]warning:[/yellow] {escape(e.host)}: revision unknown: {escape(e.message)}")
    return EXIT_OK


def cmd_preflight(args: argparse.Namespace) -> int:
    loaded = _load(args)
    targets = _targets(loaded, args)
    with Session(loaded, targets) as session:
        session.gather(with_preflight=True)
        checks = session.preflight()
        errors = session.host_errors()
    if args.json:
        data = [
            {"host": h, "deployment": d, "checks": [check_json(c) for c in cs]}
            for (h, d), cs in checks.items()
        ]
        out.print_json(data={"preflight": data, "errors": [result_json(e) for e in errors]})
    else:
        for (host, dep), cs in checks.items():
            out.rule(f"[bold]{escape(host)} · {escape(dep)}[/bold]", align="left")
            show_checks(cs, quiet=False)
        show_host_errors(errors)
    failed = errors or any(not c.ok for cs in checks.values() for c in cs)
    return EXIT_ERROR if failed else EXIT_OK


VERBS: dict[str, Callable[[argparse.Namespace], int]] = {
    "preflight": cmd_preflight,
    "metrics": cmd_metrics,
    "bench": cmd_bench,
    "monitoring": cmd_monitoring,
    "validate": cmd_validate,
    "plan": cmd_plan,
    "apply": cmd_apply,
    "rollback": cmd_rollback,
    "destroy": cmd_destroy,
    "status": cmd_status,
    "revisions": cmd_revisions,
    "logs": cmd_logs,
}


if __name__ == "__main__":
    sys.exit(main())
