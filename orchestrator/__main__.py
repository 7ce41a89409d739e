"""``python -m orchestrator`` is ``orch``."""

import sys

from .cli.main import main

sys.exit(main())
