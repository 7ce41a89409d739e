"""Monitoring files for orch's deployments: a Prometheus config with its targets, and a Grafana dashboard.

Pure: ``prometheus_config`` renders ``prometheus.yml`` and the ``targets.json``
it reads through ``file_sd_configs`` (so a redeploy rewrites only the targets,
and Prometheus picks them up without a reload); every vLLM target carries the
labels ``deployment``, ``host``, ``revision`` and ``served_name``.
``grafana_dashboard`` builds the dashboard JSON over vLLM's V1 metric names
(see shared VLLM_FACTS.md), filtered by the ``deployment`` and ``host``
template variables. ``metric_names`` lists the metrics a dashboard queries, so
a test can hold them against a real ``/metrics`` capture. ``files`` gives the three files
``orch monitoring --out`` writes (outputs.py writes them).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

TARGETS_FILE = "targets.json"
PROMETHEUS_FILE = "prometheus.yml"
DASHBOARD_FILE = "grafana-dashboard.json"
VLLM_JOB = "vllm"
GPU_JOB = "gpu"
# A file_sd label that routes each target group to its job; labels starting "__" are dropped after relabeling.
KIND_LABEL = "__orch_kind"
DCGM_PORT = 9400  # dcgm-exporter's default
SCHEMA_VERSION = 39
SELECTOR = '{deployment=~"$deployment", host=~"$host"}'
QUANTILES = (0.5, 0.9, 0.99)


@dataclass(frozen=True)
class MonitorTarget:
    """One vLLM server to scrape: where it listens and what it serves."""

    deployment: str
    host: str
    address: str
    port: int
    revision: int | None
    served_name: str


def files(targets: Sequence[MonitorTarget], *, gpu_exporter_port: int | None = None) -> dict[str, str]:
    """File name → text of everything ``orch monitoring`` writes into its ``--out`` folder."""
    prom, targets_json = prometheus_config(targets, gpu_exporter_port=gpu_exporter_port)
    dashboard = grafana_dashboard(include_gpu=gpu_exporter_port is not None)
    return {
        PROMETHEUS_FILE: prom,
        TARGETS_FILE: targets_json,
        DASHBOARD_FILE: json.dumps(dashboard, indent=2) + "\n",
    }


# --- Prometheus ------------------------------------------------------------------------------------------


def prometheus_config(
    targets: Sequence[MonitorTarget], *, scrape_interval_s: int = 15, gpu_exporter_port: int | None = None
) -> tuple[str, str]:
    """(prometheus.yml, targets.json) to be written side by side.

    With ``gpu_exporter_port`` each distinct host is also scraped there (the
    DCGM exporter) by a second job, labelled with its ``host``.
    """
    jobs = [_job(VLLM_JOB, scrape_interval_s)]
    if gpu_exporter_port is not None:
        jobs.append(_job(GPU_JOB, scrape_interval_s))
    config = {
        "global": {
            "scrape_interval": f"{scrape_interval_s}s",
            "evaluation_interval": f"{scrape_interval_s}s",
        },
        "scrape_configs": jobs,
    }
    groups = [_vllm_group(t) for t in targets]
    if gpu_exporter_port is not None:
        groups += _gpu_groups(targets, gpu_exporter_port)
    header = "# Written by orch; the targets live in targets.json beside this file.\n"
    return header + yaml.safe_dump(config, sort_keys=False), json.dumps(groups, indent=2) + "\n"


def _job(name: str, scrape_interval_s: int) -> dict[str, Any]:
    return {
        "job_name": name,
        "scrape_interval": f"{scrape_interval_s}s",
        "metrics_path": "/metrics",
        "file_sd_configs": [{"files": [TARGETS_FILE], "refresh_interval": "30s"}],
        "relabel_configs": [{"source_labels": [KIND_LABEL], "regex": name, "action": "keep"}],
    }


def _vllm_group(target: MonitorTarget) -> dict[str, Any]:
    labels = {
        KIND_LABEL: VLLM_JOB,
        "deployment": target.deployment,
        "host": target.host,
        "served_name": target.served_name,
    }
    if target.revision is not None:
        labels["revision"] = str(target.revision)
    return {"targets": [_hostport(target.address, target.port)], "labels": labels}


def _gpu_groups(targets: Sequence[MonitorTarget], port: int) -> list[dict[str, Any]]:
    hosts = dict.fromkeys((t.host, t.address) for t in targets)
    return [
        {"targets": [_hostport(address, port)], "labels": {KIND_LABEL: GPU_JOB, "host": host}}
        for host, address in hosts
    ]


def _hostport(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


# --- Grafana ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Panel:
    """One time-series panel: PromQL expressions with their legends."""

    title: str
    queries: tuple[tuple[str, str], ...]  # (expr, legend)
    unit: str
    description: str = ""
    max: float | None = None


def _rate(metric: str, by: str = "deployment") -> str:
    return f"sum by ({by}) (rate({metric}{SELECTOR}[$__rate_interval]))"


def _quantiles(histogram: str) -> tuple[tuple[str, str], ...]:
    return tuple(
        (
            f"histogram_quantile({q}, {_rate(f'{histogram}_bucket', 'le, deployment')})",
            f"p{round(q * 100)} {{{{deployment}}}}",
        )
        for q in QUANTILES
    )


def panels(*, include_gpu: bool = True) -> tuple[Panel, ...]:
    """The dashboard's panels, in display order."""
    vllm = (
        Panel("Time to first token (p50/p90/p99)", _quantiles("vllm:time_to_first_token_seconds"), "s"),
        Panel("Inter-token latency (p50/p90/p99)", _quantiles("vllm:inter_token_latency_seconds"), "s"),
        Panel(
            "End-to-end request latency (p50/p90/p99)", _quantiles("vllm:e2e_request_latency_seconds"), "s"
        ),
        Panel(
            "Output token throughput",
            ((_rate("vllm:generation_tokens_total"), "{{deployment}}"),),
            "tokens/s",
            "Generated tokens per second (rate of vllm:generation_tokens_total).",
        ),
        Panel(
            "Prompt token throughput",
            ((_rate("vllm:prompt_tokens_total"), "{{deployment}}"),),
            "tokens/s",
            "Prefilled prompt tokens per second (rate of vllm:prompt_tokens_total).",
        ),
        Panel(
            "KV-cache usage",
            ((f"max by (deployment, host) (vllm:kv_cache_usage_perc{SELECTOR})", "{{deployment}} {{host}}"),),
            "percentunit",
            "Fraction of the KV cache in use, highest engine per host.",
            max=1,
        ),
        Panel(
            "Requests running / waiting",
            (
                (f"sum by (deployment) (vllm:num_requests_running{SELECTOR})", "running {{deployment}}"),
                (f"sum by (deployment) (vllm:num_requests_waiting{SELECTOR})", "waiting {{deployment}}"),
            ),
            "short",
        ),
        Panel(
            "Preemptions",
            ((_rate("vllm:num_preemptions_total"), "{{deployment}}"),),
            "ops",
            "Requests preempted per second: the KV cache ran out of room.",
        ),
    )
    gpu = Panel(
        "GPU memory used per GPU (optional: needs the DCGM exporter)",
        (('DCGM_FI_DEV_FB_USED{host=~"$host"}', "{{host}} GPU {{gpu}}"),),
        "decmbytes",
        "Framebuffer memory used (MiB) per GPU, from dcgm-exporter; empty unless it is scraped.",
    )
    return (*vllm, gpu) if include_gpu else vllm


def grafana_dashboard(*, datasource_uid: str = "prometheus", include_gpu: bool = True) -> dict[str, Any]:
    """A Grafana dashboard (JSON model) of the vLLM servers orch deploys."""
    datasource = {"type": "prometheus", "uid": datasource_uid}
    variables = [_variable("deployment", "", datasource), _variable("host", "deployment", datasource)]
    return {
        "uid": "orch-vllm",
        "title": "vLLM (orch)",
        "tags": ["vllm", "orch"],
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "editable": True,
        "time": {"from": "now-1h", "to": "now"},
        "refresh": "30s",
        "timezone": "browser",
        "templating": {"list": variables},
        "panels": [
            _panel(index, panel, datasource) for index, panel in enumerate(panels(include_gpu=include_gpu))
        ],
    }


def _variable(name: str, parent: str, datasource: Mapping[str, str]) -> dict[str, Any]:
    scope = f'{{{parent}=~"${parent}"}}' if parent else ""
    query = f"label_values(vllm:num_requests_running{scope}, {name})"
    return {
        "name": name,
        "label": name,
        "type": "query",
        "datasource": dict(datasource),
        "query": {"query": query, "refId": f"var-{name}"},
        "definition": query,
        "refresh": 2,  # on time-range change
        "includeAll": True,
        "multi": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "sort": 1,
    }


def _panel(index: int, panel: Panel, datasource: Mapping[str, str]) -> dict[str, Any]:
    defaults: dict[str, Any] = {"unit": panel.unit, "min": 0}
    if panel.max is not None:
        defaults["max"] = panel.max
    return {
        "id": index + 1,
        "type": "timeseries",
        "title": panel.title,
        "description": panel.description,
        "datasource": dict(datasource),
        "gridPos": {"h": 8, "w": 12, "x": 12 * (index % 2), "y": 8 * (index // 2)},
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}},
        "targets": [
            {"refId": chr(ord("A") + i), "datasource": dict(datasource), "expr": expr, "legendFormat": legend}
            for i, (expr, legend) in enumerate(panel.queries)
        ],
    }


# --- which metrics a dashboard uses ----------------------------------------------------------------------

_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"' + r"|'(?:[^'\\]|\\.)*'")
_BRACES = re.compile(r"\{[^}]*\}|\[[^\]]*\]")
_GROUPING_WORDS = ("by", "without", "on", "ignoring", "group_left", "group_right")
_GROUPING = re.compile(rf"\b(?:{'|'.join(_GROUPING_WORDS)})\s*\([^)]*\)")
_IDENT = re.compile(r"(?<![\w:$.])([A-Za-z_:][\w:]*)(?![\w:]|\s*\()")
_KEYWORDS = frozenset({"and", "or", "unless", "offset", "bool", "inf", "nan", *_GROUPING_WORDS})
_LABEL_VALUES = re.compile(r"label_values\(\s*([^,{)]+(?:\{[^}]*\})?)")


def metric_names(dashboard: Mapping[str, Any]) -> set[str]:
    """Every metric name the dashboard's panel queries and template variables use."""
    names: set[str] = set()
    for expr in _expressions(dashboard):
        names |= expression_metrics(expr)
    for query in _variable_queries(dashboard):
        if match := _LABEL_VALUES.search(query):
            names |= expression_metrics(match.group(1))
    return names


def expression_metrics(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are not calls, keywords or label names."""
    text = _STRINGS.sub(" ", expr)
    text = _BRACES.sub(" ", text)  # label matchers and range durations
    text = _GROUPING.sub(" ", text)  # label lists of by/without/on/ignoring
    return {name for name in _IDENT.findall(text) if name.lower() not in _KEYWORDS}


def _expressions(dashboard: Mapping[str, Any]) -> Iterator[str]:
    for panel in _all_panels(dashboard.get("panels", [])):
        for target in panel.get("targets", []):
            if "expr" in target:
                yield str(target["expr"])


def _all_panels(panels: Sequence[Mapping[str, Any]]) -> Iterator[Mapping[str, Any]]:
    for panel in panels:
        yield panel
        yield from _all_panels(panel.get("panels", []))  # panels inside collapsed rows


def _variable_queries(dashboard: Mapping[str, Any]) -> Iterator[str]:
    for variable in dashboard.get("templating", {}).get("list", []):
        query = variable.get("query")
        yield str(query.get("query", "")) if isinstance(query, dict) else str(query or "")
