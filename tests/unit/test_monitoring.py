"""Monitoring files against the real tools and data: promtool, and the GPU server's /metrics capture."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import yaml

from orchestrator.observe.metrics import parse_families
from orchestrator.observe.monitoring import (
    MonitorTarget,
    expression_metrics,
    grafana_dashboard,
    metric_names,
    prometheus_config,
)

CAPTURE = Path(__file__).parents[1] / "fixtures" / "vllm-0.26-gpu-tp2" / "metrics.txt"
TARGETS = [
    MonitorTarget("qwen14b", "gpu-a", "10.0.0.5", 8000, 3, "qwen2.5-14b"),
    MonitorTarget("qwen14b", "gpu-b", "10.0.0.6", 8000, 3, "qwen2.5-14b"),
    MonitorTarget("tiny", "gpu-a", "10.0.0.5", 8001, None, "tiny"),
    MonitorTarget("v6", "gpu-c", "fd00::7", 8000, 1, "tiny"),
]
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
# Grafana's variables, as a query sent to Prometheus would have them.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$deployment": ".*", "$host": ".*"}


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool not found: apt-get install prometheus (CI must install it)")
    return path


def write_config(directory: Path, **options: int) -> Path:
    config, targets = prometheus_config(TARGETS, **options)
    (directory / "targets.json").write_text(targets)
    path = directory / "prometheus.yml"
    path.write_text(config)
    return path


# --- Prometheus ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("options", [{}, {"scrape_interval_s": 5, "gpu_exporter_port": 9400}])
def test_promtool_accepts_the_config_and_its_targets(tmp_path: Path, options: dict[str, int]) -> None:
    path = write_config(tmp_path, **options)

    run = subprocess.run(
        [promtool(), "check", "config", str(path)], capture_output=True, text=True, check=False
    )

    assert run.returncode == 0, run.stdout + run.stderr
    assert "SUCCESS" in run.stdout


def test_promtool_is_not_a_rubber_stamp(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    (tmp_path / "targets.json").write_text('[{"targets": ["h:1"], "labels": {"bad-label": "x"}}]')

    run = subprocess.run(
        [promtool(), "check", "config", str(path)], capture_output=True, text=True, check=False
    )

    assert run.returncode != 0


def test_config_reads_targets_json_beside_it() -> None:
    config = yaml.safe_load(prometheus_config(TARGETS, scrape_interval_s=30)[0])

    assert config["global"]["scrape_interval"] == "30s"
    [job] = config["scrape_configs"]
    assert job["job_name"] == "vllm"
    assert job["file_sd_configs"] == [{"files": ["targets.json"], "refresh_interval": "30s"}]


def test_every_vllm_target_carries_its_labels() -> None:
    groups = json.loads(prometheus_config(TARGETS)[1])

    assert groups[0] == {
        "targets": ["10.0.0.5:8000"],
        "labels": {
            "__orch_kind": "vllm",
            "deployment": "qwen14b",
            "host": "gpu-a",
            "served_name": "qwen2.5-14b",
            "revision": "3",
        },
    }
    assert "revision" not in groups[2]["labels"]  # unknown revision: no label rather than "None"
    assert groups[3]["targets"] == ["[fd00::7]:8000"]


def test_gpu_exporter_is_scraped_once_per_host_by_its_own_job() -> None:
    config_text, targets_text = prometheus_config(TARGETS, gpu_exporter_port=9400)
    jobs = {job["job_name"]: job for job in yaml.safe_load(config_text)["scrape_configs"]}
    gpu_groups = [g for g in json.loads(targets_text) if g["labels"]["__orch_kind"] == "gpu"]

    assert set(jobs) == {"vllm", "gpu"}
    assert jobs["gpu"]["relabel_configs"] == [
        {"source_labels": ["__orch_kind"], "regex": "gpu", "action": "keep"}
    ]
    assert [g["targets"] for g in gpu_groups] == [["10.0.0.5:9400"], ["10.0.0.6:9400"], ["[fd00::7]:9400"]]
    assert gpu_groups[0]["labels"] == {"__orch_kind": "gpu", "host": "gpu-a"}


@pytest.fixture
def exporter() -> Iterator[int]:
    """A local HTTP server answering /metrics with the real capture; yields its port."""
    body = CAPTURE.read_bytes()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_real_prometheus_scrapes_with_the_labels(tmp_path: Path, exporter: int) -> None:
    """The labels arrive on the series, the routing label does not, and each job keeps only its targets."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus not found: apt-get install prometheus")
    target = MonitorTarget("qwen14b", "gpu-a", "127.0.0.1", exporter, 3, "qwen2.5-14b")
    config, targets = prometheus_config([target], scrape_interval_s=1, gpu_exporter_port=exporter)
    (tmp_path / "targets.json").write_text(targets)
    (tmp_path / "prometheus.yml").write_text(config)
    port = free_port()
    args = [
        binary,
        f"--config.file={tmp_path / 'prometheus.yml'}",
        f"--storage.tsdb.path={tmp_path / 'data'}",
    ]
    with subprocess.Popen(
        [*args, f"--web.listen-address=127.0.0.1:{port}"], stderr=subprocess.DEVNULL
    ) as proc:
        try:
            active = _wait_for_targets(f"http://127.0.0.1:{port}", count=2)
        finally:
            proc.terminate()
    labels = sorted((t["labels"] for t in active), key=lambda labels: labels["job"])
    instance = f"127.0.0.1:{exporter}"
    assert labels == [
        {"host": "gpu-a", "instance": instance, "job": "gpu"},
        {
            "deployment": "qwen14b",
            "host": "gpu-a",
            "instance": instance,
            "job": "vllm",
            "revision": "3",
            "served_name": "qwen2.5-14b",
        },
    ]


def _wait_for_targets(url: str, *, count: int, timeout_s: float = 30) -> list[dict[str, dict[str, str]]]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            active = httpx.get(f"{url}/api/v1/targets").json()["data"]["activeTargets"]
        except httpx.HTTPError:
            active = []
        if len(active) == count and all(t["health"] == "up" for t in active):
            return list(active)
        time.sleep(0.2)
    raise AssertionError(f"prometheus did not scrape {count} targets within {timeout_s} s")


# --- Grafana ---------------------------------------------------------------------------------------------


def test_dashboard_is_json_with_unique_panel_ids_and_both_variables() -> None:
    dashboard = json.loads(json.dumps(grafana_dashboard(datasource_uid="prom-1")))

    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert dashboard["schemaVersion"] >= 39
    assert [v["name"] for v in dashboard["templating"]["list"]] == ["deployment", "host"]
    assert {p["datasource"]["uid"] for p in dashboard["panels"]} == {"prom-1"}
    for panel in dashboard["panels"]:
        assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"])
        for target in panel["targets"]:
            assert 'deployment=~"$deployment"' in target["expr"] or "DCGM" in target["expr"]
            assert 'host=~"$host"' in target["expr"]


def test_dashboard_has_the_promised_panels() -> None:
    titles = [p["title"] for p in grafana_dashboard()["panels"]]

    for word in (
        "first token",
        "Inter-token",
        "End-to-end",
        "Output token",
        "Prompt token",
        "KV-cache",
        "running",
        "Preemptions",
    ):
        assert any(word in title for title in titles), word
    assert "optional" in titles[-1] and "DCGM" in titles[-1]
    assert not any(
        "DCGM" in title for title in (p["title"] for p in grafana_dashboard(include_gpu=False)["panels"])
    )


def test_ttft_panel_has_three_quantiles_over_the_bucket_rate() -> None:
    ttft = grafana_dashboard()["panels"][0]

    assert [t["expr"].split(",")[0] for t in ttft["targets"]] == [
        "histogram_quantile(0.5",
        "histogram_quantile(0.9",
        "histogram_quantile(0.99",
    ]
    assert "rate(vllm:time_to_first_token_seconds_bucket{" in ttft["targets"][0]["expr"]
    assert "sum by (le, deployment)" in ttft["targets"][0]["expr"]


def test_every_vllm_metric_of_the_dashboard_is_exported_by_the_real_server() -> None:
    families = parse_families(CAPTURE.read_text())
    used = metric_names(grafana_dashboard())

    vllm_names = {name for name in used if name.startswith("vllm:")}
    assert len(vllm_names) >= 9
    for name in sorted(vllm_names):
        family = _family_of(name, families)
        assert family is not None, f"{name} is not in the vLLM 0.26 capture"
    assert used - vllm_names == {"DCGM_FI_DEV_FB_USED"}


def _family_of(sample_name: str, families: Mapping[str, object]) -> object | None:
    """The family a sample name belongs to: histogram series map to their histogram, counters drop _total."""
    for suffix in HISTOGRAM_SUFFIXES:
        base = sample_name.removesuffix(suffix)
        if base != sample_name and getattr(families.get(base), "type", None) == "histogram":
            return families[base]
    if sample_name.endswith("_total") and getattr(families.get(sample_name[:-6]), "type", None) == "counter":
        return families[sample_name[:-6]]
    return families.get(sample_name)


def test_every_expression_is_valid_promql(tmp_path: Path) -> None:
    """promtool parses each panel query (as a recording rule, with Grafana's variables filled in)."""
    dashboard = grafana_dashboard()
    rules = [
        {"record": f"orch:panel{panel['id']}:{target['refId']}", "expr": _fill(target["expr"])}
        for panel in dashboard["panels"]
        for target in panel["targets"]
    ]
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))

    run = subprocess.run(
        [promtool(), "check", "rules", str(path)], capture_output=True, text=True, check=False
    )

    assert run.returncode == 0, run.stdout + run.stderr
    assert f"SUCCESS: {len(rules)} rules found" in run.stdout


def _fill(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return expr


def test_metric_names_skips_functions_keywords_labels_and_durations() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le) (rate(a:b_bucket{x="y", z=~"sum(q)"}[5m] offset 1h)))'
        " / on (host) group_left max without (gpu) (DCGM_FI_DEV_FB_USED) > bool 1e3 and c_total"
    )

    assert expression_metrics(expr) == {"a:b_bucket", "DCGM_FI_DEV_FB_USED", "c_total"}
