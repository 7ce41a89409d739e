"""The CLI's offline verbs, run as a user would (a subprocess): exit codes and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def orch(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
        env={**os.environ, **(env or {})},
    )


def test_validate_ok() -> None:
    proc = orch("validate", "playbooks/day4.yml")
    assert proc.returncode == 0
    assert proc.stdout.strip() == "ok: playbooks/day4.yml: 1 deployment(s) on 1 host(s)"


def test_bad_playbook_is_one_line_without_traceback(tmp_path: Path) -> None:
    (tmp_path / "inv.yml").write_text("hosts:\n  h: {address: x}\n")
    (tmp_path / "pb.yml").write_text(
        "inventory: inv.yml\ndeployments:\n  - name: a\n    hosts: [h]\n    model: /m\n    gpus: [0, 1]\n"
    )
    proc = orch("plan", tmp_path / "pb.yml")
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"error: {tmp_path}/pb.yml:3: deployments[0]: tensor_parallel_size × pipeline_parallel_size = 1 but 2 GPU(s) are listed in gpus"
    ]


def test_offline_plan_masks_secrets_and_exits_2() -> None:
    proc = orch("plan", "--offline", "playbooks/day4.yml", env={"HF_TOKEN": "hf_very_secret"})
    assert proc.returncode == 2
    assert "hf_very_secret" not in proc.stdout + proc.stderr
    assert "+HF_TOKEN=***" in proc.stdout
    assert "--tensor-parallel-size 2" in proc.stdout


def without(name: str) -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k != name}


def test_offline_plan_and_validate_need_no_secret() -> None:
    """Both only render, and a rendered file shows a secret as *** anyway: no value is read."""
    for verb in (["plan", "--offline"], ["validate"]):
        proc = subprocess.run(
            [sys.executable, "-m", "orchestrator", *verb, "playbooks/day4.yml"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            check=False,
            env=without("HF_TOKEN"),
        )
        assert proc.returncode == (2 if verb[0] == "plan" else 0), proc.stderr
        assert "HF_TOKEN" not in proc.stderr
        assert "placeholder" not in proc.stdout  # the stand-in is hidden like a value
        if verb[0] == "plan":
            assert "+HF_TOKEN=***" in proc.stdout


def test_verbs_that_compare_with_or_write_to_hosts_read_the_secret_first() -> None:
    """Online plan compares the host's env file with the one the values make; apply writes it."""
    for verb in (["plan"], ["apply", "-y"]):
        proc = subprocess.run(
            [sys.executable, "-m", "orchestrator", *verb, "playbooks/day4.yml"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            check=False,
            env=without("HF_TOKEN"),
        )
        assert proc.returncode == 1
        assert (
            proc.stderr.strip()
            == "error: playbooks/day4.yml: deployment qwen14b: secret HF_TOKEN: environment variable HF_TOKEN is not set"
        )


def test_offline_plan_json() -> None:
    proc = orch("plan", "--offline", "--json", "playbooks/day3.yml")
    data = json.loads(proc.stdout)
    [plan] = data["plans"]
    assert [c["type"] for c in plan["changes"]] == [
        "WriteFile",
        "WriteFile",
        "DaemonReload",
        "Enable",
        "Restart",
        "RecordRevision",
    ]


def test_bench_compare_reads_vllm_results(tmp_path: Path) -> None:
    """vLLM's own result file against an orch result: every row holds numbers read from both files."""
    from dataclasses import replace

    from orchestrator.observe.bench import Stats
    from orchestrator.observe.benchreport import from_vllm_json

    theirs = ROOT / "tests/fixtures/vllm-0.26-gpu-tp2/bench-serve-result.json"
    ours = replace(
        from_vllm_json(theirs.read_text()),
        output_throughput=236.39,
        ttft=Stats(count=7, mean=185.92, median=220.97, p90=225.0, p99=232.01),
    )
    (tmp_path / "rev3.json").write_text(ours.to_json())
    proc = orch("bench", "--compare", theirs, tmp_path / "rev3.json", env={"COLUMNS": "40"})
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()  # a pipe: plain columns, whatever the width, one row a line
    rows = {cells[0]: cells[1:] for line in lines[1:] if (cells := line.split())}
    assert lines[0] == "bench-serve-result -> rev3"
    assert rows["metric"] == ["bench-serve-result", "rev3", "change"]
    assert rows["output_throughput"] == ["196.99", "236.39", "+20.0%"]  # the fixture's 196.991… tok/s
    assert rows["ttft_mean_ms"] == ["206.58", "185.92", "-10.0%"]
    assert rows["tpot_p99_ms"] == ["33.05", "33.05", "+0.0%"]
    assert "ttft_p90_ms" not in rows  # vLLM's file reports no p90: only what both report is compared


def test_bench_compare_json(tmp_path: Path) -> None:
    from dataclasses import replace

    from orchestrator.observe.benchreport import from_vllm_json

    theirs = ROOT / "tests/fixtures/vllm-0.26-gpu-tp2/bench-serve-result.json"
    ours = replace(from_vllm_json(theirs.read_text()), output_throughput=236.39)
    (tmp_path / "rev3.json").write_text(ours.to_json())
    proc = orch("bench", "--compare", theirs, tmp_path / "rev3.json", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert (data["a"], data["b"]) == ("bench-serve-result", "rev3")
    row = next(m for m in data["metrics"] if m["metric"] == "output_throughput")
    assert row["b"] == 236.39 and round(row["a"], 2) == 196.99 and round(row["change_pct"], 1) == 20.0


def test_unknown_limit_host() -> None:
    proc = orch("plan", "--offline", "playbooks/day3.yml", "--limit", "nosuch")
    assert proc.returncode == 1
    assert "--limit names unknown host 'nosuch'" in proc.stderr


def test_transfer_bar() -> None:
    from orchestrator.cli.output import transfer_bar

    gib = 2**30
    assert transfer_bar(0, 4 * gib, width=8) == "[........]   0%  0.00/4.00 GiB"
    assert transfer_bar(gib, 4 * gib, width=8) == "[##......]  25%  1.00/4.00 GiB"
    assert transfer_bar(5 * gib, 4 * gib, width=8) == "[########] 100%  5.00/4.00 GiB"
    assert transfer_bar(gib // 2, 0) == "0.50 GiB"


def test_offline_plan_of_a_hub_model(tmp_path: Path) -> None:
    (tmp_path / "inv.yml").write_text("hosts:\n  h1: {address: 192.0.2.1}\n")
    (tmp_path / "pb.yml").write_text(
        "inventory: inv.yml\ndeployments:\n  - name: q\n    hosts: [h1]\n    accelerator: cpu\n"
        "    model: {source: hf, id: Qwen/Qwen2.5-0.5B, dest: /models/q}\n"
    )
    proc = orch("plan", "--offline", tmp_path / "pb.yml", env={"COLUMNS": "200"})
    assert proc.returncode == 2, proc.stderr
    assert "fetch hf:Qwen/Qwen2.5-0.5B into /models/q (size not known yet; not fetched yet)" in proc.stdout
    assert "vllm serve /models/q" in proc.stdout


def test_offline_plan_prints_the_rollout_and_cannot_be_saved(tmp_path: Path) -> None:
    (tmp_path / "inv.yml").write_text(
        "hosts:\n" + "".join(f"  h{i}: {{address: 192.0.2.{i}}}\n" for i in (1, 2, 3))
    )
    (tmp_path / "pb.yml").write_text(
        "inventory: inv.yml\ndeployments:\n  - name: q\n    hosts: [h1, h2, h3]\n    accelerator: cpu\n"
        "    model: /m\n    rollout: {batch: 2}\n"
    )
    proc = orch("plan", "--offline", tmp_path / "pb.yml")
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout.splitlines()[-1] == (
        "rollout of q: 2 batch(es) [h1, h2] → [h3], each gated before the next, stops after 1 failed host(s)"
    )
    assert "── h1 · q (" in proc.stdout  # a pipe gets one heading line, not a rule
    saved = orch("plan", "--offline", "--out", tmp_path / "p.json", tmp_path / "pb.yml")
    assert (saved.returncode, saved.stdout) == (1, "")
    assert "an offline plan compares with nothing and cannot be saved" in saved.stderr
    assert not (tmp_path / "p.json").exists()


def test_validate_accepts_a_shared_gpu_and_refuses_an_over_commit(tmp_path: Path) -> None:
    (tmp_path / "inv.yml").write_text("hosts:\n  gpubox: {address: 10.0.0.9}\n")
    dep = "  - name: {0}\n    hosts: [gpubox]\n    model: /m\n    gpus: [0]\n    gpu_memory_utilization: {1}\n    port: {2}\n"
    pair = (
        "inventory: inv.yml\ndeployments:\n"
        + dep.format("tiny-a", 0.3, 8000)
        + dep.format("tiny-b", 0.3, 8001)
    )
    (tmp_path / "pair.yml").write_text(pair)
    ok = orch("validate", tmp_path / "pair.yml")
    assert (ok.returncode, ok.stdout.strip()) == (0, f"ok: {tmp_path}/pair.yml: 2 deployment(s) on 1 host(s)")
    (tmp_path / "three.yml").write_text(pair + dep.format("tiny-c", 0.6, 8002))
    refused = orch("validate", tmp_path / "three.yml")
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert refused.stderr.strip().splitlines() == [
        f"error: {tmp_path}/three.yml:19: deployments[2].gpu_memory_utilization: GPU 0 on host gpubox is "
        "over-committed: 'tiny-a' 0.3 + 'tiny-b' 0.3 + 'tiny-c' 0.6 = 1.2 of the card "
        "(the gpu_memory_utilization of the deployments on one GPU may add up to at most 1)"
    ]


def test_the_summary_splits_ready_after_into_its_phases() -> None:
    from orchestrator.cli.output import result_json, timeline_cell
    from orchestrator.hostrun import Result, Timeline

    t = Timeline(started_s=0.614, up_s=20.1, answer_s=20.312)
    assert timeline_cell(t) == "0.61 → 20.10 → 20.31s"
    assert t.describe() == "process started 0.61s → vLLM up 20.10s → first answer 20.31s"
    row = result_json(Result("h1", "d", "applied", revision=3, timeline=t))
    assert row["ready_after_s"] == 20.312
    assert row["ready_timeline"] == {"started_s": 0.614, "up_s": 20.1, "answer_s": 20.312}


def test_the_parser_is_built_for_the_named_verb_and_whole_otherwise() -> None:
    from orchestrator.cli.args import VERB_HELP, parser

    def verbs_of(argv: list[str] | None) -> set[str]:
        sub = next(a for a in parser(argv)._actions if a.dest == "verb")
        return set(sub.choices or ())

    assert verbs_of(["validate", "pb.yml"]) == {"validate"}
    assert verbs_of(["import", "--", "vllm", "serve", "m"]) == {"import"}
    assert verbs_of(["-h"]) == verbs_of(None) == verbs_of(["valdate"]) == {*VERB_HELP, "import"}
    # what argparse prints is the same either way: a verb's help, and a wrong verb with every choice
    assert "--deployment" in orch("apply", "-h").stdout
    wrong = orch("valdate", "pb.yml")
    assert wrong.returncode == 2 and "choose from" in wrong.stderr and "monitoring" in wrong.stderr


def test_the_program_turns_pydantic_plugins_off_only_for_the_imports(monkeypatch: pytest.MonkeyPatch) -> None:
    import gc
    import os

    from orchestrator.cli import main as cli_main

    seen: list[str | None] = []

    def fake_main(argv: object = None, *, imported: object = None) -> int:
        seen.append(os.environ.get("PYDANTIC_DISABLE_PLUGINS"))
        assert callable(imported)
        imported()
        seen.append(os.environ.get("PYDANTIC_DISABLE_PLUGINS"))
        return 0

    monkeypatch.setattr(cli_main, "main", fake_main)
    monkeypatch.delenv("PYDANTIC_DISABLE_PLUGINS", raising=False)
    with pytest.raises(SystemExit):
        cli_main.run()
    monkeypatch.setenv("PYDANTIC_DISABLE_PLUGINS", "logfire")  # the user's own choice stays
    with pytest.raises(SystemExit):
        cli_main.run()
    gc.unfreeze()
    assert seen == ["__all__", None, "logfire", "logfire"]
