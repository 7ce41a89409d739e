"""The ``orch`` command: parse, import the verb's module (only that one), run it, map to an exit code.

Exit codes: 0 success (``plan``: no changes), 2 ``plan`` has changes, 1 error.
Only OrchError is caught: it prints as one red line, never a traceback.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from .args import parser

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


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    # plan --offline reaches no host: it runs without importing the transports.
    verb_path = "offline:cmd_plan_offline" if getattr(args, "offline", False) else VERBS[args.verb]
    module, function = verb_path.split(":")
    from ..errors import OrchError

    try:
        verb = getattr(importlib.import_module(f"{__package__}.{module}"), function)
        return int(verb(args))
    except OrchError as exc:
        from rich.markup import escape

        from .output import err

        err.print(f"[red]error:[/red] {escape(str(exc))}")
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
