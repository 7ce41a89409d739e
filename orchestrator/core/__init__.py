"""The core: playbook schema and loading, rendering and naming; no host, no transport, no network."""
