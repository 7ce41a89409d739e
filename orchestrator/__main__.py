"""``python -m orchestrator`` is ``orch``."""

import sys

from .cli import main

sys.exit(main())
