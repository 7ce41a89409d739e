"""Run `orch` as a user would, in a subprocess, for the integration tests (output kept in the test log)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def orch(
    *args: str | Path, env: dict[str, str] | None = None, timeout: float = 1800
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
        check=False,
    )
    print(f"$ orch {' '.join(map(str, args))}  → {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc
