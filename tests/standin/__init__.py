"""The stand-in server (api_server.py) put on test hosts as a venv at /opt/standin, so that a playbook with
``launcher: {kind: api_server, venv: /opt/standin}`` starts it exactly as it would start vLLM's CPU build."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

VENV = "/opt/standin"
SOURCE = Path(__file__).with_name("api_server.py")

_INSTALL = """set -e
[ -x {venv}/bin/python ] || python3 -m venv --without-pip {venv}
sp=$(echo {venv}/lib/python3*/site-packages)
mkdir -p "$sp/vllm/entrypoints/openai" /srv/models/standin
touch "$sp/vllm/__init__.py" "$sp/vllm/entrypoints/__init__.py" "$sp/vllm/entrypoints/openai/__init__.py"
echo {source} | base64 -d >"$sp/vllm/entrypoints/openai/api_server.py"
echo '{{"model_type": "qwen2"}}' >/srv/models/standin/config.json
"""


def install(testbed: Any, host: Any) -> None:
    """Put the stand-in on ``host`` (idempotent; a second call refreshes the server's source)."""
    source = base64.b64encode(SOURCE.read_bytes()).decode()
    proc = testbed.ssh(host, _INSTALL.format(venv=VENV, source=source))
    assert proc.returncode == 0, proc.stderr
