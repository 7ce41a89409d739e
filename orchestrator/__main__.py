"""``python -m orchestrator`` is ``orch``."""

from .cli.main import run

run()
