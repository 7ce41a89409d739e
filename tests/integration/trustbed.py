"""What the trust tests share: a site of stand-in deployments on real test hosts, and the host's truth.

The truth of a deployment is read on the host itself, never through orch: the live env file, the
revision ``current`` names and its env file, the pending record, and the environment of the process
the runner actually runs (``/proc/MAINPID/environ``). A deployment is *truthful* when all of them agree.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import standin
from orchcli import orch
from standin import VENV

from orchestrator.core.quoting import parse_env

INVENTORY = """\
known_hosts: {known_hosts}
connect_timeout_s: 5
defaults:
  ssh_key: {key}
hosts:
{hosts}
"""

DEPLOYMENT = """\
  - name: {name}
    hosts: [{hosts}]
    model: /srv/models/standin
    served_model_name: standin
    accelerator: cpu
    port: {port}
    launcher: {{kind: api_server, venv: {venv}}}
    env: {{DEMO: "{demo}", STANDIN_DELAY_S: "{delay}", STANDIN_BROKEN: "{broken}"}}
    readiness: {{timeout_s: {timeout}, interval_s: 0.5}}
"""


@dataclass
class Site:
    """A folder with an inventory of test hosts, where playbooks are written."""

    testbed: Any
    dir: Path
    hosts: dict[str, Any]  # th1 → TestHost
    written: dict[str, Path] = field(default_factory=dict)  # deployment → its latest playbook

    def playbook(
        self,
        file: str,
        name: str,
        hosts: list[str],
        *,
        port: int,
        demo: str,
        delay: float = 0,
        broken: bool = False,
        timeout: float = 30,
        extra: str = "",
    ) -> Path:
        body = DEPLOYMENT.format(
            name=name,
            hosts=", ".join(hosts),
            port=port,
            venv=VENV,
            demo=demo,
            delay=delay,
            broken="1" if broken else "0",
            timeout=timeout,
        )
        path = self.dir / file
        path.write_text(f"inventory: inventory.yml\ndeployments:\n{body}{extra}")
        self.written[name] = path
        return path

    def clean(self) -> None:
        """Destroy every deployment the tests made (through orch), so later tests find the hosts bare."""
        for path in self.written.values():
            orch("destroy", path, "-y", "--lock-timeout", "30s")
        for host in self.hosts.values():
            self.testbed.ssh(host, "rm -rf /srv/models/frozen /var/lib/orch/* /tmp/orch-upload-*")

    def sh(self, host: str, command: str, *, timeout: float = 60) -> str:
        proc = self.testbed.ssh(self.hosts[host], command, timeout=timeout)
        assert proc.returncode == 0, f"{host}: {command}: {proc.returncode} {proc.stderr}"
        return str(proc.stdout)

    def truth(self, host: str, name: str) -> dict[str, Any]:
        """What the host holds and runs for deployment ``name``, read without orch."""
        d = f"/var/lib/orch/{name}"
        script = (
            f"cat /etc/orch/{name}.env 2>/dev/null; echo @@; c=$(cat {d}/current 2>/dev/null); echo $c; echo @@; "
            f'[ -n "$c" ] && cat {d}/revisions/$c/vllm.env 2>/dev/null; echo @@; cat {d}/pending 2>/dev/null; '
            f"echo @@; pid=$(systemctl show -p MainPID --value orch-{name}.service); "
            "[ \"$pid\" -gt 0 ] && tr '\\0' '\\n' </proc/$pid/environ | grep ^DEMO=; "
            f"echo @@; systemctl is-active orch-{name}.service; true"
        )
        live, current, recorded, pending, process, active = self.sh(host, script).split("@@\n")
        return {
            "live": parse_env(live).get("DEMO"),
            "current": int(current) if current.strip() else None,
            "recorded": parse_env(recorded).get("DEMO"),
            "pending": pending.strip() or None,
            "process": process.strip().removeprefix("DEMO=") or None,
            "active": active.strip(),
        }

    def assert_truthful(self, host: str, name: str, demo: str) -> dict[str, Any]:
        """Everything agrees, and it is ``demo``: what runs, the files, the record called current."""
        t = self.truth(host, name)
        assert t == {
            **t,
            "live": demo,
            "recorded": demo,
            "pending": None,
            "process": demo,
            "active": "active",
        }, t
        return t


def site_on(testbed: Any, folder: Path) -> Iterator[Site]:
    """Hosts th1..th3 with the stand-in installed, an inventory of them in ``folder``; destroyed after."""
    hosts = testbed.up(3)
    for h in hosts:
        standin.install(testbed, h)
    lines = "\n".join(f"  {h.name}: {{address: {h.address}}}" for h in hosts)
    (folder / "inventory.yml").write_text(
        INVENTORY.format(known_hosts=testbed.known_hosts_path, key=testbed.key_path, hosts=lines)
    )
    made = Site(testbed, folder, {h.name: h for h in hosts})
    yield made
    made.clean()


def status(site: Site, playbook: Path) -> dict[tuple[str, str], dict[str, Any]]:
    proc = orch("status", playbook, "--json")
    rows = json.loads(proc.stdout)["deployments"]
    return {(r["host"], r["deployment"]): r for r in rows}


def start(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """``orch ARGS`` in the background (its output kept for the test log)."""
    return subprocess.Popen(
        [sys.executable, "-m", "orchestrator", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )


def finish(proc: subprocess.Popen[str], timeout: float = 300) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()  # leave no process (nor its pipes) behind for a later test to trip on
        out, err = proc.communicate()
        print(f"$ {' '.join(map(str, proc.args))}  → killed after {timeout} s\n{out}\n{err}")  # type: ignore[arg-type]
        raise
    print(f"$ {' '.join(map(str, proc.args))}  → {proc.returncode}\n{out}\n{err}")  # type: ignore[arg-type]
    return proc.returncode, out, err


def wait_stopped(proc: subprocess.Popen[str], timeout: float = 120) -> None:
    """Until ``proc`` has stopped itself (a ``NAME:stop`` failpoint)."""
    deadline = time.monotonic() + timeout
    stat = Path(f"/proc/{proc.pid}/stat")
    while time.monotonic() < deadline:
        fields = stat.read_text().rsplit(")", 1)[-1].split()
        if fields[0] == "T":
            return
        assert proc.poll() is None, f"orch ended ({proc.returncode}) before reaching its failpoint"
        time.sleep(0.05)
    raise AssertionError("orch did not reach its failpoint")


def resume(proc: subprocess.Popen[str]) -> None:
    os.kill(proc.pid, signal.SIGCONT)
