"""The ``orch`` command: parse, import the verb's module (only that one), run it, map to an exit code.

Exit codes: 0 success (``plan``: no changes), 2 ``plan`` has changes, 1 error.
Only OrchError is caught: it prints as one red line, never a traceback.
"""

from __future__ import annotations

import gc
import importlib
import os
import sys
from collections.abc import Callable, Sequence

from .args import parser

_NO_PLUGINS = "PYDANTIC_DISABLE_PLUGINS"
# verb → "module:function" under orchestrator.cli; imported when that verb runs.
VERBS: dict[str, str] = {
    "validate": "offline:cmd_validate",
    "plan": "change:cmd_plan",
    "apply": "change:cmd_apply",
    "rollback": "change:cmd_rollback",
    "destroy": "change:cmd_destroy",
    "status": "read:cmd_status",
    "revisions": "read:cmd_revisions",
    "logs": "read:cmd_logs",
    "metrics": "read:cmd_metrics",
    "monitoring": "read:cmd_monitoring",
    "preflight": "read:cmd_preflight",
    "bench": "benchverb:cmd_bench",
    "import": "importverb:cmd_import",
}


def main(argv: Sequence[str] | None = None, *, imported: Callable[[], None] | None = None) -> int:
    """Run the verb ``argv`` names; ``imported`` is called once its module is imported, before it runs."""
    argv = sys.argv[1:] if argv is None else argv
    args = parser(argv).parse_args(argv)
    # plan --offline reaches no host: it runs without importing the transports.
    verb_path = "offline:cmd_plan_offline" if getattr(args, "offline", False) else VERBS[args.verb]
    module, function = verb_path.split(":")
    from ..errors import OrchError

    try:
        verb = getattr(importlib.import_module(f"{__package__}.{module}"), function)
        if imported is not None:
            imported()
        return int(verb(args))
    except OrchError as exc:
        from rich.markup import escape

        from .output import err

        err.print(f"[red]error:[/red] {escape(str(exc))}")
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def run() -> None:
    """The ``orch`` program: ``main``, with the cyclic garbage collector set for a short CLI run.

    The verb's imports make some 90,000 objects (Pydantic's models and validators, Jinja2, Paramiko) that
    live as long as the process; the collector would walk them again at each of its runs, while they are
    made and while the verb works (a no-op apply on 16 hosts: 0.64 CPU-s with it, 0.49 without). So it
    pauses for the imports, and what they made is frozen out of its later runs (``gc.freeze``); what the
    verb makes is collected as usual. Tests call ``main`` in-process, with the collector as it is.
    """
    gc.disable()
    # Pydantic looks for plugins when it builds its first model: it imports importlib.metadata and reads
    # every installed distribution's entry points (hundreds beside vLLM). orch's schema takes none, so the
    # lookup is off while the verb's imports build the models; the environment is put back after.
    ours = _NO_PLUGINS not in os.environ
    if ours:
        os.environ[_NO_PLUGINS] = "__all__"

    def imported() -> None:
        if ours:
            os.environ.pop(_NO_PLUGINS, None)
        gc.freeze()
        gc.enable()

    sys.exit(main(imported=imported))


if __name__ == "__main__":
    run()
