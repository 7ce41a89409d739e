"""orch: declarative vLLM deployments over SSH and systemd."""

__version__ = "0.1.0"
