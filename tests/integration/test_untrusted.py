"""The read-only verbs on an untrusted playbook, on a real host: no field runs as shell, anywhere.

Every field that reaches a host (model path, venv, launcher, vLLM install, env values, args,
served name, model source dests, run_as, dtype, bind, a template, the inventory's
supervisor_conf_dir) carries a ``$(touch …)``-style payload. Fields the model rejects fail
``orch validate`` with one line; the rest go through validate, plan, plan --offline, preflight
and status against a real test host. Afterwards no marker exists on the host or the controller,
and every verb exited 0, 1 or 2 without a traceback. vLLM is never started.
"""

from __future__ import annotations

import glob
import secrets
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from orchcli import orch

pytestmark = pytest.mark.testbed

TOKEN = secrets.token_hex(4)
MARKERS = f"/tmp/orch-pwned-{TOKEN}-"


def payload(n: int) -> str:
    """A different shell form each time, all creating the marker ``n``."""
    marker = f"{MARKERS}{n}"
    return ("$(touch {m})", "`touch {m}`", ";touch {m};", "'$(touch {m})'", '"$(touch {m})"')[n % 5].format(
        m=marker
    )


SSTI = "{{ cycler.__init__.__globals__.os.popen('touch %s').read() }}\n"


def candidates() -> list[dict[str, Any]]:
    """One deployment per hostile field (or group of fields), each on its own port."""
    venv = {"kind": "api_server", "venv": "/opt/vllm"}
    fields: list[dict[str, Any]] = [
        {"model": f"/srv/models/{payload(1)}"},
        {"launcher": {"kind": "api_server", "venv": f"/opt/{payload(2)}"}},
        {"launcher": {"kind": "serve", "venv": f"/opt/v{payload(3)}"}},
        {
            "launcher": {"kind": "api_server"},
            "vllm": {
                "version": "0.0.1",
                "venv": f"/opt/{payload(4)}",
                "python": f"python3 {payload(5)}",
                "index_url": f"http://127.0.0.1:9/{payload(6)}",
                "remove": [payload(7)],
            },
        },
        {"env": {"A": payload(8), "B": payload(9)}},
        {"args": {"--chat-template": payload(10), "--trust-remote-code": True}},
        {"served_model_name": f"x{payload(11)}"},
        {"model": {"source": "path", "dest": f"/srv/{payload(12)}"}},
        {"model": {"source": "upload", "local": "m", "dest": f"/srv/{payload(13)}"}},
        {
            "model": {"source": "hf", "id": "org/name", "revision": "main", "dest": f"/srv/{payload(14)}"},
            "env": {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_ETAG_TIMEOUT": "2"},
        },
        {"dtype": payload(15), "bind": payload(16)},
        {"run_as": payload(17)},
        {"templates": {"unit": "evil.j2"}},
        {"name": f"x{payload(19)}"},
        {"hosts": ["th1sup"]},  # the inventory's hostile supervisor_conf_dir
    ]
    out = []
    for i, extra in enumerate(fields):
        dep: dict[str, Any] = {
            "name": f"u{i}",
            "hosts": ["th1"],
            "model": "/srv/models/tiny",
            "accelerator": "cpu",
            "port": 8300 + i,
            "launcher": venv,
            "readiness": {"enabled": False},
        }
        out.append(dep | extra)
    return out


@pytest.fixture(scope="module")
def site(testbed: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    [host] = testbed.up(1)
    d = tmp_path_factory.mktemp("untrusted")
    inventory = {
        "known_hosts": str(testbed.known_hosts_path),
        "connect_timeout_s": 5,
        "defaults": {"ssh_key": str(testbed.key_path)},
        "hosts": {
            "th1": {"address": host.address},
            "th1sup": {
                "address": host.address,
                "runner": "supervisord",
                "supervisor_conf_dir": f"/etc/supervisor/{payload(20)}",
            },
        },
    }
    (d / "inventory.yml").write_text(yaml.safe_dump(inventory))
    (d / "m").mkdir()
    (d / "m" / "config.json").write_text('{"model_type": "qwen2"}')
    (d / "evil.j2").write_text(SSTI % f"{MARKERS}18")
    return {"dir": d, "host": host, "testbed": testbed}


def write_playbook(site: dict[str, Any], name: str, deployments: list[dict[str, Any]]) -> Path:
    path: Path = site["dir"] / f"{name}.yml"
    path.write_text(yaml.safe_dump({"inventory": "inventory.yml", "deployments": deployments}))
    return path


def assert_clean_exit(proc: Any, allowed: tuple[int, ...] = (0, 1, 2)) -> None:
    assert proc.returncode in allowed, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr


def test_no_payload_runs_on_the_host_or_the_controller(site: dict[str, Any]) -> None:
    accepted, rejected = [], []
    for i, dep in enumerate(candidates()):
        proc = orch("validate", write_playbook(site, f"one-{i}", [dep]), timeout=60)
        assert_clean_exit(proc, (0, 1))
        if proc.returncode == 0:
            accepted.append(dep)
        else:
            rejected.append(dep["name"])
            assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr  # one line, naming file:line
    print(f"accepted {[d['name'] for d in accepted]}, rejected {rejected}")
    assert accepted, "no hostile field passed validation: nothing reached the host"

    pb = write_playbook(site, "all", accepted)
    for verb in (["validate"], ["plan"], ["plan", "--offline"], ["preflight"], ["status"]):
        started = time.monotonic()
        proc = orch(*verb, pb, timeout=300)
        print(f"orch {' '.join(verb)}: exit {proc.returncode} after {time.monotonic() - started:.1f} s")
        assert_clean_exit(proc)

    found = site["testbed"].ssh(site["host"], f"ls -d {MARKERS}* 2>/dev/null; true")
    assert found.returncode == 0 and found.stdout.strip() == "", f"payload ran on the host: {found.stdout}"
    assert glob.glob(f"{MARKERS}*") == [], "payload ran on the controller"
