"""Reading a deployment: readiness, metrics, status, preflight checks, benchmarks, monitoring."""
