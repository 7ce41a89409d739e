"""One model across hosts: the shapes a playbook may give, what each node renders, how plans are aligned, and
the nodes' apply on FakeTransports (the others first, the head last and gated, one commit, or a restore of all)."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from fakehost import RUNNING, facts_output, files_of, gates, holding, manifest_of, ok, restart_output, show
from fakehost import revision_output as revision_text

from orchestrator import multinode, session, waves
from orchestrator.core import nodes, render
from orchestrator.core.load import Loaded, load
from orchestrator.errors import ConfigError
from orchestrator.facts import DeploymentFacts, UnitState
from orchestrator.host import commands
from orchestrator.host.commands import Command
from orchestrator.hostrun import HostRun, QuietReporter
from orchestrator.observe import preflight
from orchestrator.plan import RecordRevision, Restart, TargetPlan, plan_target
from orchestrator.transport.base import Result
from orchestrator.transport.fake import FakeTransport

INVENTORY = """\
hosts:
  alpha: {address: 192.0.2.1, interface: ens5}
  beta: {address: 192.0.2.2}
  gamma: {address: 192.0.2.3, groups: [pool]}
"""
META = {"by": "alice@laptop", "verb": "apply", "created": "2026-12-01T14:02:00+00:00"}


def book(tmp: Path, body: str, *, name: str = "pb.yml") -> Loaded:
    (tmp / "inv.yml").write_text(INVENTORY)
    path = tmp / name
    path.write_text("inventory: inv.yml\ndeployments:\n" + textwrap.indent(textwrap.dedent(body), "  "))
    return load(path)


CPU = """\
- name: mn
  nodes: [{host: alpha}, {host: beta}]
  model: /models/tiny
  accelerator: cpu
  launcher: {kind: api_server, venv: /opt/vllm}
"""
CUDA = """\
- name: big
  nodes: [{host: alpha, gpus: [0, 1]}, {host: beta, gpus: [2, 3], address: 10.9.0.2}]
  model: /models/big
"""


def test_nodes_give_tp_within_a_node_and_pp_across_them(tmp_path: Path) -> None:
    [cpu] = book(tmp_path, CPU).playbook.deployments
    [cuda] = book(tmp_path, CUDA).playbook.deployments
    assert (cpu.tensor_parallel_size, cpu.pipeline_parallel_size) == (1, 2)
    assert (cuda.tensor_parallel_size, cuda.pipeline_parallel_size) == (2, 2)
    [tp4] = book(
        tmp_path, CUDA + "  tensor_parallel_size: 4\n  pipeline_parallel_size: 1\n"
    ).playbook.deployments
    assert (tp4.tensor_parallel_size, tp4.pipeline_parallel_size) == (4, 1)


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (CUDA.replace("gpus: [2, 3]", "gpus: [2]"), "pb.yml:3: deployments[0]: node beta: 1 GPU(s) listed"),
        (
            CPU.replace("{host: beta}", "{host: nope}"),
            "pb.yml:4: deployments[0].nodes[1].host: unknown host 'nope'",
        ),
        (CPU.replace("{host: beta}", "{host: pool}"), "a group: a node is one host 'pool'"),
        (CPU.replace(", {host: beta}", ""), "nodes: needs at least two hosts"),
        (CPU.replace("{host: beta}", "{host: alpha}"), "nodes: names a host twice"),
        (CPU + "  hosts: [gamma]\n", "hosts: and nodes: do not go together"),
        (CPU + "  args: {--nnodes: 3}\n", "--nnodes is set by the field nodes"),
        (CPU + "  pipeline_parallel_size: 3\n", "3 ranks: not a multiple of 2 nodes"),
        (CPU.replace("{host: beta}", "{host: beta, gpus: [0]}"), "node beta: a cpu deployment takes no gpus"),
        (
            CPU.replace("  nodes: [{host: alpha}, {host: beta}]\n", "  hosts: [alpha]\n  backend: ray\n"),
            "go with nodes:",
        ),
        (CPU.replace("  nodes: [{host: alpha}, {host: beta}]\n", ""), "a deployment needs hosts: (or nodes:"),
        (CPU + "  backend: mpi\n", "backend: Input should be 'native', 'ray' or 'auto'"),
        (
            CPU.replace("venv: /opt/vllm}", "}")
            + "  backend: ray\n  vllm: {version: 0.32.0, venv: /opt/v}\n",
            "backend: ray: vLLM does not install Ray; pin it beside vLLM with vllm.ray",
        ),
        (
            CPU.replace("venv: /opt/vllm}", "}") + "  vllm: {version: 0.10.2, venv: /opt/v}\n",
            "vLLM 0.10.2 runs on Ray (backend: auto): vLLM does not install Ray",
        ),
    ],
)
def test_bad_shapes_are_one_line_with_file_and_line(tmp_path: Path, body: str, error: str) -> None:
    with pytest.raises(ConfigError) as exc:
        book(tmp_path, body)
    assert error in str(exc.value)


def test_ray_is_installed_pinned_beside_vllm(tmp_path: Path) -> None:
    body = (
        CPU.replace("venv: /opt/vllm}", "}")
        + "  backend: ray\n  vllm: {version: 0.10.2, venv: /opt/v, ray: 2.49.2}\n"
    )
    [dep] = book(tmp_path, body).playbook.deployments
    assert dep.vllm is not None
    install = commands.install_vllm(dep.vllm, sudo=False)
    assert "-- vllm==0.10.2 ray==2.49.2 >" in install.script
    assert install.label == "pip install vllm==0.10.2 ray==2.49.2 into /opt/v"
    native = book(
        tmp_path, CPU.replace("venv: /opt/vllm}", "}") + "  vllm: {version: 0.32.0, venv: /opt/v}\n"
    )
    assert native.playbook.deployments[0].vllm is not None  # native needs no Ray: none is asked for


def test_a_bad_interface_name_is_refused(tmp_path: Path) -> None:
    (tmp_path / "inv.yml").write_text("hosts:\n  alpha: {address: x, interface: 'eth0 up'}\n")
    (tmp_path / "pb.yml").write_text(
        "inventory: inv.yml\ndeployments: [{name: x, hosts: [alpha], model: /m, accelerator: cpu}]\n"
    )
    with pytest.raises(ConfigError) as exc:
        load(tmp_path / "pb.yml")
    assert "inv.yml:2: hosts.alpha.interface: interface 'eth0 up' is not a network interface name" in str(
        exc.value
    )


def roles(loaded: Loaded) -> dict[str, nodes.NodeRole]:
    return {t.host_name: nodes.resolved(t.node, "0.32.0") for t in loaded.targets() if t.node}


def test_the_head_serves_and_the_other_node_runs_headless(tmp_path: Path) -> None:
    loaded = book(tmp_path, CPU)
    dep, r = loaded.playbook.deployments[0], roles(loaded)
    head, other = render.argv(dep, r["alpha"]), render.argv(dep, r["beta"])
    common = ["--nnodes", "2", "--master-addr", "192.0.2.1", "--master-port", "29501"]
    assert head[:3] == ["/opt/vllm/bin/python", "-m", "vllm.entrypoints.openai.api_server"]
    assert head[-8:] == [*common[:2], "--node-rank", "0", *common[2:]]
    assert "--headless" not in head
    # the api_server module ignores --headless: the other node runs vLLM's own CLI (vllm serve)
    assert other[:5] == ["/opt/vllm/bin/python", "-c", nodes.CLI_SHIM, "serve", "/models/tiny"]
    assert other[-9:] == [*common[:2], "--node-rank", "1", *common[2:], "--headless"]
    assert render.environment(dep, {}, r["alpha"])[:3] == [
        ("VLLM_HOST_IP", "192.0.2.1"),
        ("GLOO_SOCKET_IFNAME", "ens5"),
        ("NCCL_SOCKET_IFNAME", "ens5"),
    ]
    assert render.environment(dep, {}, r["beta"]) == [("VLLM_HOST_IP", "192.0.2.2")]


def test_each_node_sees_its_own_gpus_and_address(tmp_path: Path) -> None:
    loaded = book(tmp_path, CUDA)
    dep, r = loaded.playbook.deployments[0], roles(loaded)
    assert render.environment(dep, {}, r["beta"])[:3] == [
        ("CUDA_DEVICE_ORDER", "PCI_BUS_ID"),
        ("CUDA_VISIBLE_DEVICES", "2,3"),
        ("VLLM_HOST_IP", "10.9.0.2"),
    ]
    assert render.argv(dep, r["beta"])[:3] == ["vllm", "serve", "/models/big"]
    assert nodes.peers(r["alpha"]) == [("10.9.0.2", 29501)]


def test_a_node_env_adds_to_and_overrides_the_deployments(tmp_path: Path) -> None:
    body = CPU.replace("{host: beta}", "{host: beta, env: {VLLM_CPU_OMP_THREADS_BIND: '1', B: b}}")
    loaded = book(tmp_path, body + "  env: {VLLM_CPU_OMP_THREADS_BIND: '0', A: a}\n")
    dep, r = loaded.playbook.deployments[0], roles(loaded)
    assert render.environment(dep, {}, r["alpha"])[-2:] == [("A", "a"), ("VLLM_CPU_OMP_THREADS_BIND", "0")]
    assert render.environment(dep, {}, r["beta"])[-3:] == [
        ("A", "a"),
        ("B", "b"),
        ("VLLM_CPU_OMP_THREADS_BIND", "1"),
    ]
    with pytest.raises(ConfigError, match="'VLLM_HOST_IP': not a variable a node's env may set"):
        book(tmp_path, CPU.replace("{host: beta}", "{host: beta, env: {VLLM_HOST_IP: x}}"))


def test_ray_starts_a_cluster_and_vllm_on_the_head_only(tmp_path: Path) -> None:
    loaded = book(tmp_path, CUDA + "  backend: ray\n  ray_port: 6400\n")
    dep, r = loaded.playbook.deployments[0], roles(loaded)
    assert render.argv(dep, r["beta"]) == [
        "ray", "start", "--address=192.0.2.1:6400", "--node-ip-address=10.9.0.2",
        "--disable-usage-stats", "--num-gpus=2", "--block",
    ]  # fmt: skip
    head = render.argv(dep, r["alpha"])
    assert head[:2] == ["/bin/sh", "-c"] and head[2].startswith("ray start --head --port=6400 ")
    assert head[-2:] == ["--distributed-executor-backend", "ray"] and "--nnodes" not in head


@pytest.mark.parametrize(
    ("version", "backend", "why"),
    [
        ("0.32.0", "native", "vLLM 0.32.0 has --nnodes"),
        ("0.12.0+cpu", "native", "has --nnodes"),
        ("0.10.1.1", "ray", "predates --nnodes"),
        ("", "native", "not known yet"),
    ],
)
def test_auto_follows_the_vllm_on_the_host(tmp_path: Path, version: str, backend: str, why: str) -> None:
    [t, _] = book(tmp_path, CPU).targets()
    assert t.node is not None
    got = nodes.resolved(t.node, version)
    assert got.backend == backend and why in got.why


def test_a_change_to_one_node_changes_all_of_them(tmp_path: Path) -> None:
    loaded = book(tmp_path, CPU)
    runs = hosts(loaded, alpha=DeploymentFacts(), beta=DeploymentFacts())
    fresh = plans(loaded, runs)
    # beta already holds (and runs) its revision: only alpha's files differ
    runs["beta"].facts = {"mn": holding(fresh[1].desired, current_revision=1)}
    runs["alpha"].facts = {"mn": DeploymentFacts(current_revision=1)}
    raw = [
        session.plan_one(run, t, session.rendered(loaded, {"mn": {}}), meta=META)
        for run in runs.values()
        for t in run.targets
    ]
    assert not raw[1].changed
    aligned = multinode.align(raw)
    beta = aligned[1].changes
    assert [type(c) for c in beta] == [Restart, RecordRevision]
    assert "alpha restarts: the nodes start together" in beta[0].summary()


def test_nodes_that_cannot_go_together_do_not_go_at_all(tmp_path: Path) -> None:
    loaded = book(tmp_path, CPU)
    runs = hosts(loaded, alpha=DeploymentFacts(), beta=DeploymentFacts())
    both = plans(loaded, runs)
    targets = loaded.targets()
    assert multinode.together(both, targets) == (both, [])
    kept, failed = multinode.together(both[:1], targets)  # beta's plan failed on its own
    assert kept == [] and [(r.host, r.status) for r in failed] == [("alpha", "error")]
    assert failed[0].message == "mn: not planned on beta (see there); its nodes change together"
    apart = [both[0], replace(both[1], desired=replace(both[1].desired, origin="rollback to 1"))]
    kept, failed = multinode.together(apart, targets)
    assert (
        kept == []
        and "would go to different revisions (alpha: apply, beta: rollback to 1)" in failed[1].message
    )


def test_limit_takes_every_node_or_none_for_changing_verbs(tmp_path: Path) -> None:
    loaded = book(tmp_path, CPU)
    assert len(loaded.select(limit=["alpha"])) == 1
    with pytest.raises(ConfigError, match="--limit takes every node of mn or none: alpha, beta"):
        loaded.select(limit=["alpha"], whole=True)


def test_preflight_reads_the_way_to_the_other_nodes() -> None:
    out = "\n".join(
        [
            "@@orch peers",
            "10.0.0.2:29501 1 bash: connect: Connection refused bash: line 1: /dev/tcp/10.0.0.2/29501: Connection refused",
            "10.0.0.3:29501 124",
            "10.0.0.4:29501 0",
            "10.0.0.5:29501 1 bash: connect: No route to host",
            "10.0.0.6:29501 127 no bash",
        ]
    ).replace("@@orch ", preflight.MARK)
    assert preflight.parse(out).peers == {
        "10.0.0.2:29501": "refused",
        "10.0.0.3:29501": "timed out",
        "10.0.0.4:29501": "open",
        "10.0.0.5:29501": "No route to host",
        "10.0.0.6:29501": "not tried (no bash on the host)",
    }


def test_preflight_compares_the_nodes_and_their_way_to_each_other(tmp_path: Path) -> None:
    loaded = book(tmp_path, CPU)
    runs = hosts(loaded, alpha=DeploymentFacts(), beta=DeploymentFacts())
    own = {"alpha": ("0.32.0", "refused"), "beta": ("0.31.0", "timed out")}
    for name, (version, way) in own.items():
        other = "192.0.2.2" if name == "alpha" else "192.0.2.1"
        probe = preflight.DeploymentProbe(vllm_version=version, model_files="5e1f")
        runs[name].probe = preflight.HostProbe(deployments={"mn": probe}, peers={f"{other}:29501": way})

    got = multinode.checks(runs, loaded.playbook.deployments)

    assert [(c.ok, c.message) for c in got[("alpha", "mn")]] == [
        (False, "not the same vLLM on every node: alpha 0.32.0, beta 0.31.0"),
        (True, "the same model files on every node"),
        (True, "192.0.2.2:29501 reached"),
    ]
    assert got[("beta", "mn")][-1].message.startswith("192.0.2.1:29501 cannot reach it (timed out)")


# ---------------------------------------------------------------- the nodes' apply, on fake hosts


def hosts(loaded: Loaded, **facts: DeploymentFacts) -> dict[str, HostRun]:
    """A HostRun on a FakeTransport per host, with the facts a gather would have read."""
    runs = {}
    for name, f in facts.items():
        targets = loaded.targets(limit={name})
        runs[name] = HostRun(name, targets[0].host, targets, FakeTransport(name))
        runs[name].facts = {"mn": f}
    return runs


def plans(loaded: Loaded, runs: dict[str, HostRun]) -> list[TargetPlan]:
    desired_of = session.rendered(loaded, {"mn": {}})
    return multinode.align(
        [session.plan_one(r, t, desired_of, meta=META) for r in runs.values() for t in r.targets]
    )


def noting(seen: list[str], name: str, result: Result) -> Callable[[Command], Result]:
    """An answer that notes, in ``seen``, which host was asked."""

    def answer(command: Command) -> Result:
        seen.append(name)
        return result

    return answer


def fake(runs: dict[str, HostRun], name: str) -> FakeTransport:
    transport = runs[name].transport
    assert isinstance(transport, FakeTransport)
    return transport


def test_the_other_node_starts_first_the_head_is_gated_then_both_are_made_current(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded = book(tmp_path, CPU)
    runs = hosts(loaded, alpha=DeploymentFacts(), beta=DeploymentFacts())
    order: list[str] = []
    for name in runs:
        fake(runs, name).on("record pending", ok("1\n")).on(
            "restart", noting(order, name, ok(restart_output(RUNNING)))
        )
        fake(runs, name).on("state of", ok(show(RUNNING)))
    gate = gates(monkeypatch, True, host=fake(runs, "alpha"))

    results = multinode.run_group(
        runs, waves.groups(plans(loaded, runs))["mn"], QuietReporter(), gate=True, restore_all=True
    )

    assert order == ["beta", "alpha"] and len(gate.calls) == 1  # the head alone is gated
    assert [(r.host, r.status, r.revision, r.elapsed_s) for r in results.values()] == [
        ("alpha", "applied", 1, 4.0),  # the head's readiness gate
        ("beta", "applied", 1, None),
    ]
    for name in runs:
        assert fake(runs, name).labels[-1] == "make revision 1 current in /var/lib/orch/mn"
    assert fake(runs, "beta").labels.count("state of orch-mn.service") == 2  # after its start, after the gate


def test_destroy_stops_the_head_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    loaded = book(tmp_path, CPU)
    runs = hosts(loaded, alpha=DeploymentFacts(), beta=DeploymentFacts())
    serving = {p.host: holding(p.desired, current_revision=1) for p in plans(loaded, runs)}
    for name, f in serving.items():
        runs[name].facts = {"mn": f}
    stopped: list[str] = []
    for name in runs:
        fake(runs, name).on("stop orch-mn", noting(stopped, name, ok()))
    gates(monkeypatch)
    gone = [
        plan_target(
            host=t.host_name,
            deployment="mn",
            desired=render.absent(t.deployment, t.host, t.node),
            facts=serving[t.host_name],
        )
        for t in loaded.targets()
    ]

    results = multinode.run_group(
        runs, waves.groups(gone)["mn"], QuietReporter(), gate=True, restore_all=True
    )

    assert stopped == ["alpha", "beta"] and {r.status for r in results.values()} == {"applied"}


RESTARTED = replace(RUNNING, main_pid=5151, n_restarts=1)


@pytest.mark.parametrize(
    ("head_ready", "beta_after", "said"),
    [
        (False, RUNNING, "beta: mn: failed on alpha: mn: /health answered 500"),
        (
            True,
            RESTARTED,
            "beta: mn: beta restarted (main PID 4242 → 5151, restarts 1) while the head started",
        ),
    ],
    ids=["the head's gate fails", "the other node restarts while the head starts"],
)
def test_a_failure_on_either_node_puts_every_node_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, head_ready: bool, beta_after: UnitState, said: str
) -> None:
    old = book(tmp_path, CPU + "  max_model_len: 512\n", name="old.yml")
    before = {
        p.host: p.desired for p in plans(old, hosts(old, alpha=DeploymentFacts(), beta=DeploymentFacts()))
    }
    loaded = book(tmp_path, CPU + "  max_model_len: 384\n")
    runs = hosts(
        loaded,
        alpha=holding(before["alpha"], current_revision=3),
        beta=holding(before["beta"], current_revision=3),
    )
    group = waves.groups(plans(loaded, runs))["mn"]
    for p in group:  # what a restore reads: the new files live, revision 3 still current
        want = before[p.host]
        live = DeploymentFacts(
            files=files_of(p.desired), unit=RUNNING, current_revision=3, manifest=manifest_of(want)
        )
        fake(runs, p.host).on("gather facts", ok(facts_output({"mn": live})))
        fake(runs, p.host).on("record pending", ok("4\n")).on("restart", ok(restart_output(RUNNING)))
        fake(runs, p.host).on("state of", ok(show(RUNNING)), times=1)
        fake(runs, p.host).on("state of", ok(show(beta_after)))
        fake(runs, p.host).on("read revision 3", ok(revision_text(files_of(want), manifest_of(want))))
    gates(monkeypatch, head_ready, True, host=fake(runs, "alpha"))  # the old revision serves again

    results = multinode.run_group(runs, group, QuietReporter(), gate=True, restore_all=True)

    assert {r.host: (r.status, r.revision) for r in results.values()} == {
        "alpha": ("rolled-back", 3),
        "beta": ("rolled-back", 3),
    }
    assert results[("beta", "mn")].message.startswith(said)
    for name, want in before.items():
        sent = fake(runs, name).sent
        assert sent[-1].label == "mark revision 4 failed in /var/lib/orch/mn"
        writes = [c.stdin for c in sent if c.label.startswith("write ")]
        assert writes[-1] == want.file("unit").content.encode()  # type: ignore[union-attr]
        assert b"--max-model-len 384" in writes[0] and b"--max-model-len 512" in writes[-1]
