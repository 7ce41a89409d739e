#!/usr/bin/env python3
"""How long after a restarted vLLM server can first answer does `orch apply` declare it ready?

Run as root from the repository root: `.venv/bin/python benchmarks/readiness.py [--rounds N] [--orch DIR]`.
It holds the test bed's lock, brings up one test host and deploys the real vLLM CPU server with the
tiny model (as tests/integration/test_core_path.py does), then runs N applies (default 12) that each
change one env variable, so that each restarts the server. During each apply a poller thread, independent
of orch, sends a one-token chat completion to the server every 50 ms (a new one every 50 ms, up to 8 in
flight) and keeps the time of the first answer after the old server went away. orch's moment is when it
prints "ready after" (its stderr is read line by line as it comes). Both clocks are this process's
time.monotonic(). `--orch DIR` runs orch from another checkout (to measure an older gate).

`--rollbacks K` then runs K times an apply that changes the env again and an `orch rollback -y` to the
revision before it, and for each rollback sets its "ready after" (counted from the restart) beside
vLLM's own start-up: from the new server process's start (its /proc/PID/stat start time, on the kernel's
boot clock, which the test host shares) to the poller's first answer.
Writes Markdown to stdout; benchmarks/readiness.md keeps the recorded run.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from testbed.hosts import Testbed, exclusive  # noqa: E402

PERIOD_S = 0.05
IN_FLIGHT = 8
PORT = 8000
PLAYBOOK = """\
inventory: inventory.yml
deployments:
  - name: ready
    hosts: [th1]
    model: /srv/models/tiny
    served_model_name: tiny
    accelerator: cpu
    port: {port}
    max_model_len: 512
    dtype: bfloat16
    launcher: {{kind: api_server, venv: /opt/vllm}}
    env: {{VLLM_CPU_KVCACHE_SPACE: "1", ORCH_BENCH_ROUND: "r{round}"}}
    readiness: {{timeout_s: 900}}
"""
READY = re.compile(
    r"ready after ([\d.]+)s(?: \(process started ([\d.]+)s → vLLM up ([\d.-]+)s? → first answer)?"
)


@dataclass
class Poller:
    """Sends a chat completion every PERIOD_S; once armed, keeps the first failure (the old server has
    gone) and the first answer to a request sent after it (the new server answers)."""

    url: str
    armed: float = float("inf")  # failures before this (time.monotonic()) do not count
    failed_at: float | None = None
    first_ok: float | None = None
    sent: int = 0
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self) -> None:
        body = {"model": "tiny", "messages": [{"role": "user", "content": "ping"}], "max_tokens": 1}
        with httpx.Client(timeout=60) as client, ThreadPoolExecutor(IN_FLIGHT) as pool:
            flying: set[Future[None]] = set()
            while not self.stop.is_set():
                tick = time.monotonic()
                if len(flying) < IN_FLIGHT:
                    fut = pool.submit(self._one, client, body, tick)
                    flying.add(fut)
                    fut.add_done_callback(flying.discard)
                    self.sent += 1
                time.sleep(max(0.0, tick + PERIOD_S - time.monotonic()))

    def _one(self, client: httpx.Client, body: dict[str, object], sent_at: float) -> None:
        try:
            ok = client.post(self.url, json=body).status_code == 200
        except httpx.HTTPError:
            ok = False
        now = time.monotonic()
        with self.lock:
            if not ok and sent_at >= self.armed and self.failed_at is None:
                self.failed_at = now
            if ok and self.failed_at is not None and sent_at > self.failed_at:
                self.first_ok = now if self.first_ok is None else min(self.first_ok, now)


@dataclass(frozen=True)
class Round:
    lag_s: float  # orch's "ready" minus the poller's first answer
    ready_after_s: float
    timeline: str
    first_ok: float = 0.0  # the poller's first answer, time.monotonic()
    declared: float = 0.0  # orch's "ready", time.monotonic()


def orch(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *args], cwd=root, capture_output=True, text=True, check=False
    )


def one_round(root: Path, pb: Path, url: str, verb: tuple[str, ...] = ("apply", "-y")) -> Round:
    poller = Poller(url)
    thread = threading.Thread(target=poller.run, daemon=True)
    thread.start()
    time.sleep(1.0)  # the old server answers the poller before orch begins
    poller.armed = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", *verb, str(pb)],
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert proc.stderr is not None and proc.stdout is not None
    declared, match, lines = None, None, []
    for line in proc.stderr:
        lines.append(line)
        found = READY.search(line)
        if found and declared is None:
            declared, match = time.monotonic(), found
    out = proc.stdout.read()
    if proc.wait() != 0 or declared is None or match is None:
        sys.exit(f"{verb[0]} failed ({proc.returncode}):\n{''.join(lines)}\n{out}")
    while poller.first_ok is None and time.monotonic() < declared + 30:
        time.sleep(0.05)  # a poller request sent before orch's answer may still be coming
    poller.stop.set()
    thread.join()
    if poller.first_ok is None:
        sys.exit("the poller never got an answer from the restarted server")
    timeline = "" if match.group(2) is None else f"{match.group(2)} → {match.group(3)} → {match.group(1)} s"
    return Round(declared - poller.first_ok, float(match.group(1)), timeline, poller.first_ok, declared)


@dataclass(frozen=True)
class Rollback:
    round: Round
    startup_s: float  # vLLM's own: the new process's start → the poller's first answer


def process_start(tb: Testbed, unit: str) -> float:
    """When the unit's main process started, on this process's time.monotonic() (via the boot clock)."""
    out = tb.ssh(tb.host(1), f"cut -d' ' -f22 /proc/$(systemctl show -p MainPID --value {unit})/stat")
    ticks = int(out.stdout.strip())
    offset = time.clock_gettime(time.CLOCK_BOOTTIME) - time.monotonic()
    return ticks / os.sysconf("SC_CLK_TCK") - offset


def site(tb: Testbed, folder: Path) -> Path:
    [host] = tb.up(1)
    (folder / "inventory.yml").write_text(
        f"known_hosts: {tb.known_hosts_path}\ndefaults:\n  ssh_key: {tb.key_path}\n"
        f"hosts:\n  th1:\n    address: {host.address}\n"
    )
    return folder / "pb.yml"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--rollbacks", type=int, default=0, help="then K (change, rollback) pairs")
    ap.add_argument("--orch", type=Path, default=ROOT, help="the checkout whose orch runs")
    opts = ap.parse_args()
    tb = Testbed()
    with exclusive(wait=3600), tempfile.TemporaryDirectory() as tmp:
        tb.build()
        tb.down()  # leftovers of an interrupted run: start clean
        try:
            pb = site(tb, Path(tmp))
            url = f"http://{tb.host(1).address}:{PORT}/v1/chat/completions"
            pb.write_text(PLAYBOOK.format(port=PORT, round=0))
            first = orch(opts.orch, "apply", "-y", str(pb))
            if first.returncode != 0:
                sys.exit(f"first apply failed:\n{first.stdout}\n{first.stderr}")
            rounds = []
            for i in range(1, opts.rounds + 1):
                pb.write_text(PLAYBOOK.format(port=PORT, round=i))
                r = one_round(opts.orch, pb, url)
                print(
                    f"round {i}: lag {r.lag_s:+.3f} s, ready after {r.ready_after_s:.2f} s", file=sys.stderr
                )
                rounds.append(r)
            rollbacks = []
            for k in range(1, opts.rollbacks + 1):
                pb.write_text(PLAYBOOK.format(port=PORT, round=f"b{k}"))
                rounds.append(one_round(opts.orch, pb, url))
                back = one_round(opts.orch, pb, url, ("rollback", "-y"))
                started = process_start(tb, "orch-ready.service")
                rollbacks.append(Rollback(back, back.first_ok - started))
                print(f"rollback {k}: ready after {back.ready_after_s:.2f} s, vLLM's own start-up "
                      f"{rollbacks[-1].startup_s:.2f} s", file=sys.stderr)  # fmt: skip
            orch(opts.orch, "destroy", "-y", str(pb))
        finally:
            tb.down()
    report(rounds, opts.orch)
    if rollbacks:
        report_rollbacks(rollbacks)


def report_rollbacks(rollbacks: list[Rollback]) -> None:
    print("\n| rollback | ready after (from the restart) | started → up → answer | vLLM's own start-up | "
          "ready after − start-up | lag |\n|---|---|---|---|---|---|")  # fmt: skip
    for i, b in enumerate(rollbacks, 1):
        r = b.round
        print(f"| {i} | {r.ready_after_s:.2f} s | {r.timeline or '-'} | {b.startup_s:.2f} s | "
              f"{r.ready_after_s - b.startup_s:+.2f} s | {r.lag_s:+.3f} s |")  # fmt: skip
    over = [b.round.ready_after_s - b.startup_s for b in rollbacks]
    print(
        f"\nready after − vLLM's own start-up: median {statistics.median(over):+.2f} s, max {max(over):+.2f} s"
    )


def report(rounds: list[Round], root: Path) -> None:
    lags = [r.lag_s for r in rounds]
    load = os.getloadavg()
    print(
        f"{len(rounds)} restarts of the vLLM CPU server (tiny Qwen2, TP 1) on one test host, orch from {root}"
    )
    print(
        f"{platform.node()}: {os.cpu_count()} cores, load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} at the end\n"
    )
    print(
        "| restart | orch ready − poller's first answer | ready after (from the restart) | started → up → answer |"
    )
    print("|---|---|---|---|")
    for i, r in enumerate(rounds, 1):
        print(f"| {i} | {r.lag_s:+.3f} s | {r.ready_after_s:.2f} s | {r.timeline or '-'} |")
    print(
        f"\nlag: p50 {statistics.median(lags):+.3f} s, p95 {percentile(lags, 0.95):+.3f} s, "
        f"max {max(lags):+.3f} s, min {min(lags):+.3f} s"
    )


if __name__ == "__main__":
    main()
