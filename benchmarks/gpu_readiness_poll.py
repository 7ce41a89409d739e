#!/usr/bin/env python3
"""The readiness lag on the GPU machine: how long after a restarted vLLM server can first answer does
`orch apply` declare it ready? Run by benchmarks/gpu_readiness.sh (which stages vLLM, orch, supervisord).

The measurement is benchmarks/readiness.py's (the CPU test bed): a poller thread, independent of orch,
sends a one-token chat completion to the server every 50 ms (a new one every 50 ms, up to 8 in flight) and
keeps the first answer after the old server went away; orch's moment is when it prints "ready after" (its
output is read line by line as it comes). Here the host is this machine (`connection: local`, `runner:
supervisord`), the server the real GPU vLLM on GPU 0. One clock for everything: CLOCK_BOOTTIME, the clock
of /proc/PID/stat's start time, so that the restarted vLLM process's own start is on it too:
vLLM's own start-up = the poller's first answer − the new process's start. The old server's stop is
split three ways, each from orch's restart command: the poller's first failed request (the server stops
answering), the old main process's exit and the last exit of its process tree (an ExitWatcher reading
/proc every 10 ms; a zombie counts as exited).

Rounds: the first apply (when the site has none yet), then restarts (each apply changes env ORCH_ROUND),
then one `orch rollback -y`, then `orch destroy -y`. State lives in --site, so that a second call on the
same warm machine goes on where the first stopped; before each round it checks that the round (as long
as the slowest so far, plus a margin) ends before --deadline (time.time()), else it stops. Every round is
appended to SITE/rounds.jsonl and the Markdown report rewritten to --out after each.

`--local-test DIR` replaces the GPU parts for a dry run without a GPU: `accelerator: cpu`, PYTHONPATH=DIR
(a stand-in `vllm` package there) and the site's own supervisord conf folder.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

PERIOD_S = 0.05
IN_FLIGHT = 8
NAME = "ready"  # the deployment; supervisord's program is orch-ready
READY = re.compile(
    r"ready after ([\d.]+)s(?: \(process started ([\d.]+)s → vLLM up ([\d.-]+)s? → first answer)?"
)
GPU_DEPLOYMENT = """\
    gpus: [0]
    gpu_memory_utilization: 0.3
    args: {{--enforce-eager: true}}
    env: {{PYTHONPATH: /tmp/site, NCCL_NVLS_ENABLE: "0", TORCH_SYMM_MEM_DISABLE_MULTICAST: "1", NVSHMEM_DISABLE_NVLS: "1", ORCH_ROUND: "{round}"}}
"""
LOCAL_DEPLOYMENT = """\
    accelerator: cpu
    env: {{PYTHONPATH: {site}, STANDIN_DELAY_S: "{delay}", ORCH_ROUND: "{round}"}}
"""


def now() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def process_start(pid: int) -> float | None:
    """When process ``pid`` started, on CLOCK_BOOTTIME (/proc/PID/stat's field 22, in clock ticks)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[19]) / os.sysconf("SC_CLK_TCK")


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it, from /proc's parent links."""
    parent: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parent[int(stat.parent.name)] = int(fields[1])
    tree, todo = [pid], [pid]
    while todo:
        pid = todo.pop()
        kids = [k for k, ppid in parent.items() if ppid == pid]
        tree += kids
        todo += kids
    return tree


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@dataclass
class ExitWatcher:
    """Times, on CLOCK_BOOTTIME, when the old main process and the last process of its tree exit."""

    main: int
    tree: list[int]
    main_gone: float | None = None
    tree_gone: float | None = None
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stop.is_set() and self.tree_gone is None:
            left = [pid for pid in self.tree if alive(pid)]
            if self.main_gone is None and self.main not in left:
                self.main_gone = now()
            if not left:
                self.tree_gone = now()
            time.sleep(0.01)


@dataclass
class Poller:
    """Sends a chat completion every PERIOD_S; once armed, keeps the first failure (the old server has
    gone, or none was there) and the first answer to a request sent after it (the new server answers)."""

    url: str
    model: str
    armed: float = float("inf")  # failures before this (now()) do not count
    failed_at: float | None = None
    first_ok: float | None = None
    sent: int = 0
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self) -> None:
        body = {"model": self.model, "messages": [{"role": "user", "content": "ping"}], "max_tokens": 1}
        with httpx.Client(timeout=60) as client, ThreadPoolExecutor(IN_FLIGHT) as pool:
            flying: set[Future[None]] = set()
            while not self.stop.is_set():
                tick = now()
                if len(flying) < IN_FLIGHT:
                    fut = pool.submit(self._one, client, body, tick)
                    flying.add(fut)
                    fut.add_done_callback(flying.discard)
                    self.sent += 1
                time.sleep(max(0.0, tick + PERIOD_S - now()))

    def _one(self, client: httpx.Client, body: dict[str, object], sent_at: float) -> None:
        try:
            ok = client.post(self.url, json=body).status_code == 200
        except httpx.HTTPError:
            ok = False
        at = now()
        with self.lock:
            if not ok and sent_at >= self.armed and self.failed_at is None:
                self.failed_at = at
            if ok and self.failed_at is not None and sent_at > self.failed_at:
                self.first_ok = at if self.first_ok is None else min(self.first_ok, at)


class Bench:
    def __init__(self, opts: argparse.Namespace) -> None:
        self.site: Path = opts.site
        self.out: Path = opts.out
        self.raw: Path = opts.raw or self.out / "raw"
        self.raw.mkdir(parents=True, exist_ok=True)
        self.out.mkdir(parents=True, exist_ok=True)
        self.local: Path | None = opts.local_test
        self.delay = opts.standin_delay
        self.pb = self.site / "pb.yml"
        self.url = f"http://127.0.0.1:{opts.port}/v1/chat/completions"
        self.port = opts.port
        self.deadline = opts.deadline
        self.state_path = self.site / "state.json"
        self.rows_path = self.site / "rounds.jsonl"
        self.state: dict[str, Any] = (
            json.loads(self.state_path.read_text()) if self.state_path.exists() else {"round": -1}
        )

    # --- the site
    def write_site(self, rnd: int) -> None:
        conf = ""
        if self.local:
            conf = f", supervisor_conf_dir: {self.site / 'conf.d'}"
            (self.site / "conf.d").mkdir(parents=True, exist_ok=True)
        (self.site / "inventory.yml").write_text(
            f"hosts:\n  gpubox: {{address: 127.0.0.1, connection: local, runner: supervisord{conf}}}\n"
        )
        extra = (
            LOCAL_DEPLOYMENT.format(site=self.local, delay=self.delay, round=rnd)
            if self.local
            else GPU_DEPLOYMENT.format(round=rnd)
        )
        self.pb.write_text(
            "inventory: inventory.yml\ndeployments:\n"
            f"  - name: {NAME}\n    hosts: [gpubox]\n    model: /tmp/models/tiny\n    served_model_name: tiny\n"
            f"    max_model_len: 512\n    port: {self.port}\n    launcher: {{kind: api_server}}\n"
            f"{extra}    readiness: {{timeout_s: 480, interval_s: 2}}\n"
        )

    def save_state(self) -> None:
        self.state_path.write_text(json.dumps(self.state))

    def rows(self) -> list[dict[str, Any]]:
        if not self.rows_path.exists():
            return []
        return [json.loads(line) for line in self.rows_path.read_text().splitlines() if line.strip()]

    def supervisor_pid(self) -> int:
        out = subprocess.run(
            ["supervisorctl", "pid", f"orch-{NAME}"], capture_output=True, text=True, check=False
        ).stdout.strip()
        return int(out) if out.isdigit() else 0

    # --- one round: a verb that (re)starts the server, timed by orch and by the poller
    def round(self, kind: str, verb: list[str]) -> dict[str, Any]:
        label = f"{len(self.rows()) + 1:02d}-{kind}"
        old_pid = self.supervisor_pid()
        poller = Poller(self.url, "tiny")
        thread = threading.Thread(target=poller.run, daemon=True)
        thread.start()
        time.sleep(1.0)  # the old server (if any) answers the poller before orch begins
        watcher = ExitWatcher(old_pid, descendants(old_pid)) if old_pid else None
        if watcher:
            threading.Thread(target=watcher.run, daemon=True).start()
        poller.armed = now()
        wall0 = time.time()
        t_cmd = now()
        proc = subprocess.Popen(
            [sys.executable, "-m", "orchestrator", *verb, "-y", str(self.pb)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "COLUMNS": "200"},
        )
        assert proc.stdout is not None
        declared, match, lines = None, None, []
        for line in proc.stdout:
            lines.append(line)
            found = READY.search(line)
            if found and declared is None:
                declared, match = now(), found
        rc = proc.wait()
        t_end = now()
        (self.raw / f"{label}.txt").write_text("".join(lines))
        while declared is not None and poller.first_ok is None and now() < declared + 30:
            time.sleep(0.05)  # a poller request sent before orch's answer may still be coming
        poller.stop.set()
        thread.join()
        if watcher:
            watcher.stop.set()
        new_pid = self.supervisor_pid()
        started = process_start(new_pid) if new_pid else None
        row: dict[str, Any] = {
            "label": label,
            "kind": kind,
            "rc": rc,
            "wall_start": wall0,
            "command_s": round(t_end - t_cmd, 3),
            "old_pid": old_pid,
            "new_pid": new_pid,
            "sent": poller.sent,
        }
        if match is not None and declared is not None:
            ready_after = float(match.group(1))
            restart_sent = declared - ready_after  # orch's own zero: the restart command sent
            row |= {
                "ready_after_s": ready_after,
                "orch_started_s": None if match.group(2) is None else float(match.group(2)),
                "orch_up_s": None if match.group(3) in (None, "-") else float(match.group(3)),
                "declared_from_command_s": round(declared - t_cmd, 3),
            }
            if poller.first_ok is not None:
                row |= {
                    "lag_s": round(declared - poller.first_ok, 3),
                    "first_answer_s": round(poller.first_ok - restart_sent, 3),
                    "first_answer_from_command_s": round(poller.first_ok - t_cmd, 3),
                }
                if started is not None:
                    row |= {
                        "process_start_s": round(started - restart_sent, 3),
                        "vllm_own_startup_s": round(poller.first_ok - started, 3),
                    }
            # The old server's stop, from the restart command: it stops answering, its main process
            # exits, its last process exits.
            for key, at in (
                ("old_refuses_s", poller.failed_at if old_pid else None),
                ("old_main_exit_s", watcher.main_gone if watcher else None),
                ("old_tree_exit_s", watcher.tree_gone if watcher else None),
            ):
                if at is not None:
                    row[key] = round(at - restart_sent, 3)
            if watcher:
                row["old_tree_size"] = len(watcher.tree)
        if poller.failed_at is not None:  # from the verb's launch, not from the restart command
            row["old_gone_s"] = round(poller.failed_at - t_cmd, 3)
        with self.rows_path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"{label}: {json.dumps(row)}", file=sys.stderr, flush=True)
        self.report()
        return row

    def fits(self, margin: float = 10.0) -> bool:
        restarts = [r["command_s"] for r in self.rows() if r["kind"] != "first"]
        need = (max(restarts) if restarts else 100.0) * 1.1 + margin
        left = self.deadline - time.time()
        if need > left:
            print(f"stopping: the next round may take {need:.0f} s, {left:.0f} s left", file=sys.stderr)
            return False
        return True

    def run(self, restarts: int, rollback: bool) -> int:
        if self.state["round"] < 0:
            self.state["round"] = 0
            self.write_site(0)
            self.save_state()
            if self.round("first", ["apply"])["rc"] != 0:
                return 1
        done = sum(1 for r in self.rows() if r["kind"] == "restart")
        while done < restarts and self.fits():
            self.state["round"] += 1
            self.write_site(self.state["round"])
            self.save_state()
            if self.round("restart", ["apply"])["rc"] != 0:
                return 1
            done += 1
        if done < restarts:
            return 0
        if rollback and not any(r["kind"] == "rollback" for r in self.rows()):
            if not self.fits():
                return 0
            if self.round("rollback", ["rollback"])["rc"] != 0:
                return 1
        if not self.state.get("destroyed"):
            out = subprocess.run(
                [sys.executable, "-m", "orchestrator", "destroy", "-y", str(self.pb)],
                capture_output=True,
                text=True,
                check=False,
            )
            (self.raw / "destroy.txt").write_text(out.stdout + out.stderr)
            self.state["destroyed"] = out.returncode == 0
            self.save_state()
        return 0

    # --- the report
    def report(self) -> None:
        rows = self.rows()
        shutil.copy(self.rows_path, self.out / "rounds.jsonl")
        (self.out / "report.md").write_text(report(rows))


def fmt(value: Any, spec: str = ".2f", unit: str = " s") -> str:
    return "-" if value is None else f"{value:{spec}}{unit}"


def old_stop(r: dict[str, Any]) -> str:
    keys = ("old_refuses_s", "old_main_exit_s", "old_tree_exit_s")
    if not any(k in r for k in keys):
        return "-"
    return " → ".join(fmt(r.get(k), ".2f", "") for k in keys) + " s"


def report(rows: list[dict[str, Any]]) -> str:
    load = os.getloadavg()
    lines = [
        f"{platform.node()}: {os.cpu_count()} cores, load average {load[0]:.1f} / {load[1]:.1f} / "
        f"{load[2]:.1f} when written\n",
        "| # | verb | orch: ready after (from the restart) | orch: started → up → answer | "
        "poller's first answer (from the restart) | lag: orch ready − first answer | "
        "vLLM's own start-up (process start → first answer) | process started (from the restart) | "
        "old server: refuses → main exits → all exited (from the restart) | whole command |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        split = (
            f"{fmt(r.get('orch_started_s'), '.2f', '')} → {fmt(r.get('orch_up_s'), '.2f', '')} → "
            f"{fmt(r.get('ready_after_s'), '.2f', '')} s"
        )
        verb = {"first": "apply (first start)", "restart": "apply (restart)", "rollback": "rollback"}
        failed = "" if r["rc"] == 0 else f" (exit {r['rc']})"
        lines.append(
            f"| {r['label']} | {verb.get(r['kind'], r['kind'])}{failed} "
            f"| {fmt(r.get('ready_after_s'))} | {split} | {fmt(r.get('first_answer_s'), '.3f')} "
            f"| {fmt(r.get('lag_s'), '+.3f')} | {fmt(r.get('vllm_own_startup_s'))} "
            f"| {fmt(r.get('process_start_s'))} | {old_stop(r)} | {fmt(r.get('command_s'))} |"
        )
    restarts = [r["lag_s"] for r in rows if r["kind"] == "restart" and "lag_s" in r]
    if restarts:
        lines.append(
            f"\nlag over the {len(restarts)} restarts: p50 {statistics.median(restarts):+.3f} s, "
            f"max {max(restarts):+.3f} s, min {min(restarts):+.3f} s; target ≤ 0.3 s: "
            f"{'held' if max(restarts) <= 0.3 else 'NOT held'}"
        )
    every = [r["lag_s"] for r in rows if "lag_s" in r]
    if every:
        lines.append(
            f"lag over all {len(every)} rounds (first start and rollback too): p50 "
            f"{statistics.median(every):+.3f} s, max {max(every):+.3f} s"
        )
    for r in rows:
        if r["kind"] == "rollback" and "vllm_own_startup_s" in r:
            over = r["ready_after_s"] - r["vllm_own_startup_s"]
            lines.append(
                f"rollback: ready after {r['ready_after_s']:.2f} s from the restart, vLLM's own start-up "
                f"{r['vllm_own_startup_s']:.2f} s: {over:+.2f} s beyond it (target ≤ +1 s: "
                f"{'held' if over <= 1.0 else 'NOT held'}); the whole command {r['command_s']:.2f} s"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--site", type=Path, required=True, help="the playbook's folder; state kept there")
    ap.add_argument("--out", type=Path, required=True, help="report.md and rounds.jsonl")
    ap.add_argument("--raw", type=Path, help="each round's orch output (default: OUT/raw)")
    ap.add_argument("--restarts", type=int, default=5)
    ap.add_argument("--rollback", action="store_true", help="then one `orch rollback -y`")
    ap.add_argument("--deadline", type=float, default=float("inf"), help="time.time() to end by")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--local-test", type=Path, help="a folder with a stand-in vllm package: no GPU")
    ap.add_argument("--standin-delay", type=float, default=3.0)
    opts = ap.parse_args()
    opts.site.mkdir(parents=True, exist_ok=True)
    me = process_start(os.getpid())
    print(f"this process started {now() - me:.2f} s ago on CLOCK_BOOTTIME" if me else "", file=sys.stderr)
    sys.exit(Bench(opts).run(opts.restarts, opts.rollback))


if __name__ == "__main__":
    main()
