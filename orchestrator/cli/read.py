"""The verbs that only read: status, revisions, logs, metrics, monitoring, preflight."""

from __future__ import annotations

import argparse
import json
import threading
import time
from typing import Any

from rich.live import Live
from rich.markup import escape

from .. import outputs, status
from ..observe import monitoring
from ..session import Session
from .common import EXIT_ERROR, EXIT_OK, loaded_of, targets_of, trace_of
from .output import (
    check_json,
    err,
    heading,
    metrics_table,
    out,
    result_json,
    revisions_table,
    show_checks,
    show_host_errors,
    show_table,
    status_table,
)


def cmd_status(args: argparse.Namespace) -> int:
    loaded = loaded_of(args)
    targets, trace = targets_of(loaded, args), trace_of(args)
    if not args.watch:
        rows, errors = status.status_rows(loaded, targets, trace=trace)
        fleets = status.fleets(loaded, rows)
        if args.json:
            out.print_json(data={"deployments": rows, "fleets": fleets})
        else:
            show_table(status_table(rows))
            for f in fleets:
                out.print(_fleet_line(f))
        return EXIT_ERROR if errors else EXIT_OK
    with Live(console=out, auto_refresh=False) as live:
        while True:
            live.update(status_table(status.status_rows(loaded, targets, trace=trace)[0]), refresh=True)
            time.sleep(args.watch)


def _fleet_line(f: dict[str, Any]) -> str:
    runs = "; ".join(f"revision {rev} on {', '.join(hosts)}" for rev, hosts in f["revisions"].items())
    if f["in_router"] is None:
        routed = f"router {escape(f['router'])} not reachable: {escape(f['router_error'])}"
    else:
        routed = f"in the router {escape(f['router'])}: {', '.join(f['in_router']) or 'none'}"
    head = f"[bold]{escape(f['deployment'])}[/bold]: {f['replicas']} replica(s)"
    return f"{head}; {escape(runs) or 'none runs'}; {routed}"


def cmd_revisions(args: argparse.Namespace) -> int:
    loaded = loaded_of(args)
    rows, errors = status.revision_rows(loaded, targets_of(loaded, args), trace=trace_of(args))
    if args.json:
        out.print_json(data={"revisions": rows, "errors": [result_json(e) for e in errors]})
    else:
        show_table(revisions_table(rows))
    return EXIT_ERROR if errors else EXIT_OK


def cmd_logs(args: argparse.Namespace) -> int:
    loaded = loaded_of(args)
    lock = threading.Lock()

    def show(host: str, deployment: str, line: str) -> None:
        with lock:
            if args.json:  # one object a line, so that a follower can read each as it comes
                data = {"host": host, "deployment": deployment, "line": line}
                out.print(json.dumps(data), markup=False, soft_wrap=True)
            else:
                out.print(f"[cyan]{escape(host)}[/cyan] {escape(deployment)} | {escape(line)}")

    errors = status.logs(
        loaded,
        targets_of(loaded, args),
        lines=args.lines,
        follow=args.follow,
        on_line=show,
        trace=trace_of(args),
    )
    for e in errors:
        err.print(f"[red]✗ {escape(e.host)}[/red]: {escape(e.message)}")
    return EXIT_ERROR if errors else EXIT_OK


def cmd_metrics(args: argparse.Namespace) -> int:
    loaded = loaded_of(args)
    results = status.scrape(targets_of(loaded, args), trace=trace_of(args))
    if args.json:
        data = [
            {"host": t.host_name, "deployment": t.deployment.name}
            | ({"error": m} if isinstance(m, str) else m.to_dict())
            for t, m in results
        ]
        out.print_json(data={"metrics": data})
    else:
        for t, m in results:
            heading(f"[bold]{escape(t.host_name)} · {escape(t.deployment.name)}[/bold]")
            if isinstance(m, str):
                out.print(f"[red]{escape(m)}[/red]")
            else:
                show_table(metrics_table(m))
    return EXIT_ERROR if any(isinstance(m, str) for _, m in results) else EXIT_OK


def cmd_monitoring(args: argparse.Namespace) -> int:
    loaded = loaded_of(args)
    targets = targets_of(loaded, args)
    revisions, errors = status.current_revisions(loaded, targets, trace=trace_of(args))
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
        if t.node is None or t.node.serves  # a headless node has no API and no /metrics
    ]
    files = monitoring.files(monitored, gpu_exporter_port=args.gpu_exporter_port)
    written = outputs.write_files(args.out, files)
    if args.json:
        data = {"written": [str(p) for p in written], "targets": len(monitored)}
        out.print_json(data=data | {"errors": [result_json(e) for e in errors]})
    else:
        out.print(f"wrote {', '.join(str(p) for p in written)} ({len(monitored)} targets)")
    for e in errors:
        err.print(f"[yellow]warning:[/yellow] {escape(e.host)}: revision unknown: {escape(e.message)}")
    return EXIT_OK


def cmd_preflight(args: argparse.Namespace) -> int:
    loaded = loaded_of(args)
    targets = targets_of(loaded, args)
    with Session(loaded, targets, trace=trace_of(args)) as session:
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
            heading(f"[bold]{escape(host)} · {escape(dep)}[/bold]")
            show_checks(cs, quiet=False)
        show_host_errors(errors)
    failed = errors or any(not c.ok for cs in checks.values() for c in cs)
    return EXIT_ERROR if failed else EXIT_OK
