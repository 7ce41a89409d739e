"""Every shell command orch runs on a host is built and quoted here, and only here.

Pure: returns ``Command`` values (a shell string, optional stdin, whether it
needs sudo); transports execute them. Paths starting with ``~/`` are expanded
against ``$HOME`` on the host.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass

from ..core.layout import Layout
from ..core.model import VllmInstall
from . import procs
from .runners import Runner, descendants

MARK = "@@orch"


@dataclass(frozen=True)
class Command:
    script: str
    stdin: bytes | None = None
    sudo: bool = False
    # Shown in errors and logs instead of the script (scripts can be long).
    label: str = ""
    # The commands a ``steps`` script runs, in order (a fake host answers each as its own).
    parts: tuple[Command, ...] = ()

    def describe(self) -> str:
        return self.label or self.script


def qpath(path: str) -> str:
    """Quote a host path; ``~/x`` stays relative to the login user's home.

    A path starting with ``-`` becomes ``./-…``: the same file, never read as an option.
    """
    if path.startswith("~/"):
        return '"$HOME"/' + shlex.quote(path[2:])
    return shlex.quote("./" + path if path.startswith("-") else path)


def write_file(path: str, *, mode: int, sudo: bool, content: bytes) -> Command:
    """Write atomically: a temp file beside the target (same filesystem), then rename."""
    target = qpath(path)
    script = (
        f"set -e; umask 077; t={target}; case $t in */*) f=${{t%/*}}/;; *) f=./;; esac; "
        '[ -d "$f" ] || mkdir -p "$f"; '
        f'tmp=$(mktemp "$t.orch-XXXXXX"); cat >"$tmp"; chmod {mode:o} "$tmp"; mv -f "$tmp" "$t"'
    )
    return Command(script, stdin=content, sudo=sudo, label=f"write {path}")


def remove_file(path: str, *, sudo: bool) -> Command:
    return Command(f"rm -f {qpath(path)}", sudo=sudo, label=f"remove {path}")


def reload(runner: Runner, unit: str, *, sudo: bool) -> Command:
    return Command(runner.reload(unit), sudo=sudo, label=f"reload the runner's view of {unit}")


def enable(runner: Runner, unit: str, *, sudo: bool) -> Command:
    return Command(runner.enable(unit), sudo=sudo, label=f"enable {unit}")


def disable(runner: Runner, unit: str, *, sudo: bool) -> Command:
    return Command(runner.disable(unit), sudo=sudo, label=f"disable {unit}")


def logs(runner: Runner, unit: str, *, sudo: bool, lines: int, follow: bool = False) -> Command:
    return Command(runner.logs(unit, lines=lines, follow=follow), sudo=sudo, label=f"logs of {unit}")


def unit_state(runner: Runner, unit: str, *, sudo: bool, journal_lines: int = 1) -> Command:
    """The unit's state, then its last log lines (for the progress line; none read when 0)."""
    if journal_lines == 0:
        return Command(runner.state(unit), sudo=sudo, label=f"state of {unit}")
    script = (
        f"{runner.state(unit)}; echo {MARK}journal; "
        f"{runner.logs(unit, lines=journal_lines, follow=False)} 2>/dev/null | grep -v '^-- ' || true"
    )
    return Command(script, sudo=sudo, label=f"state of {unit}")


LEFT_MARK = "orch-left:"
# Which of the unit's processes (``Runner.processes``, read into $tree before the stop) outlived the stop:
# each would hold memory (GPU memory, on a GPU host) the next start needs. A process in its exit path gets
# up to 5 s before it counts as a survivor, looked at every 0.1 s: the next start waits on the last of
# them (vLLM's engine process ends after its API server). A zombie has exited and holds nothing: it waits
# only for its parent, or for init once its parent is gone, to reap it (a container's init may take
# seconds), so it is no survivor.
_LEFT = (
    'i=0; while [ "$i" -lt 50 ]; do left=""; '
    "for k in $tree; do { read -r st </proc/$k/stat; } 2>/dev/null || continue; "
    'case "${st##*) }" in Z*) continue;; esac; c=${st#*(}; left="$left $k:${c%)*}"; done; '
    '[ -z "$left" ] && break; i=$((i + 1)); sleep 0.1; done; '
    f'echo "{LEFT_MARK}$left"'
)


def stop(runner: Runner, unit: str, *, sudo: bool, reap: Layout | None = None) -> Command:
    """Stop, then report any of the unit's processes still alive; with ``reap``, end every process that
    still carries the deployment's mark (host.procs)."""
    script = f"tree=$({runner.processes(unit)}); {runner.stop(unit)}; {_LEFT}{_reap(reap)}"
    return Command(script, sudo=sudo, label=f"stop {unit}")


def restart(runner: Runner, unit: str, *, sudo: bool, reap: Layout | None = None) -> Command:
    """Stop (reporting survivors; with ``reap``, ending them), start, then print the state: the base for
    detecting a crash."""
    script = (
        f"tree=$({runner.processes(unit)}); {runner.stop(unit)}; {_LEFT}{_reap(reap)}; "
        f"{runner.start(unit)} && {{ {runner.state(unit)}; }}"
    )
    return Command(script, sudo=sudo, label=f"restart {unit}")


def reap(runner: Runner, unit: str, layout: Layout, *, sudo: bool) -> Command:
    """End the deployment's marked processes outside its main process's tree (the unit keeps running)."""
    script = f"tree=$({descendants(runner.main_pid(unit))}); {procs.reap_script(layout, keep='tree')}"
    return Command(script, sudo=sudo, label=f"end leftover processes of {unit}")


def _reap(layout: Layout | None) -> str:
    return f"; {procs.reap_script(layout)}" if layout is not None else ""


def read_files(paths: dict[str, str]) -> str:
    """A script section printing each file base64-encoded after a marker; absent files print nothing."""
    parts = []
    for key, path in paths.items():
        q = qpath(path)
        parts.append(f"if [ -f {q} ]; then echo {shlex.quote(f'{MARK}file {key}')}; base64 -w0 {q}; echo; fi")
    return "; ".join(parts)


def install_vllm(spec: VllmInstall, *, sudo: bool) -> Command:
    """Create the venv if needed and pip-install the pinned version; print only pip's tail on failure."""
    venv = shlex.quote(spec.venv)
    index = ["--no-index"] if spec.no_index else []
    index += [f"--index-url {shlex.quote(spec.index_url)}"] if spec.index_url else []
    index += [f"--extra-index-url {shlex.quote(u)}" for u in spec.extra_index_urls]
    index += [f"--find-links {shlex.quote(u)}" for u in spec.find_links]
    pin = " ".join(map(shlex.quote, spec.pins()))
    remove = (
        f"; {venv}/bin/pip uninstall -q -y -- {' '.join(map(shlex.quote, spec.remove))}"
        if spec.remove
        else ""
    )
    script = (
        f"set -e; [ -x {venv}/bin/python ] || {shlex.quote(spec.python)} -m venv -- {venv}; "
        f"log=$(mktemp); {venv}/bin/pip install --disable-pip-version-check -q {' '.join(index)} -- {pin} "
        f'>"$log" 2>&1 || {{ tail -20 "$log" >&2; rm -f "$log"; exit 1; }}; rm -f "$log"{remove}'
    )
    return Command(script, sudo=sudo, label=f"pip install {' '.join(spec.pins())} into {spec.venv}")


def place_upload(tmp: str, dest: str, *, sudo: bool) -> Command:
    """Move an uploaded temp file into the model folder (creating folders), world-readable."""
    script = f"install -D -m 0644 -- {shlex.quote(tmp)} {shlex.quote(dest)} && rm -f -- {shlex.quote(tmp)}"
    return Command(script, sudo=sudo, label=f"place {dest}")


def hub_fetch(python: str, program: str, request: bytes, *, sudo: bool, label: str) -> Command:
    """Run the host-side hub client; the request (with any token) goes on stdin, stderr joins stdout."""
    script = f"{shlex.quote(python)} -c {shlex.quote(program)} 2>&1"
    return Command(script, stdin=request, sudo=sudo, label=label)


def wrap_sudo(script: str) -> str:
    """Run a whole script under non-interactive sudo (never prompts; fails instead)."""
    return f"sudo -n sh -c {shlex.quote(script)}"


STEP = f"{MARK}step"


def steps(cmds: Sequence[Command], *, label: str) -> Command:
    """Several commands as one script, in order, stopping at the first that fails (one round trip for all).

    Each runs in a subshell (its ``set -e`` stays its own) and reads exactly its own stdin: the stdins go
    one after the other, each cut off with ``head -c`` (GNU head reads no byte past the count) and what
    the command leaves of it read to the end. The script prints ``@@orchstep - 0 T`` first and
    ``@@orchstep K RC T`` after the K-th command (from 0), T being the host's uptime in seconds
    (``/proc/uptime``, read without a process), and exits with the first non-zero RC. ``split_steps``
    reads it back.
    """
    sudo = all(c.sudo for c in cmds)
    stamp = f"read up _ </proc/uptime 2>/dev/null || up=-; echo {STEP}"
    parts = [f'{stamp} - 0 "$up"']
    for i, c in enumerate(cmds):
        script = wrap_sudo(c.script) if c.sudo and not sudo else c.script
        if c.stdin is None:
            run = f"( {script}\n) </dev/null"
        else:  # what the command leaves unread of its own stdin is drained: the next one's starts clean
            run = f"head -c {len(c.stdin)} | {{ ( {script}\n); r=$?; cat >/dev/null; exit $r; }}"
        # The newline ends a last line the command left open; split_steps takes it off again.
        parts.append(f'{run}; r=$?; echo; {stamp} {i} "$r" "$up"; [ "$r" -eq 0 ] || exit "$r"')
    stdin = b"".join(c.stdin for c in cmds if c.stdin is not None)
    return Command("\n".join(parts), stdin=stdin or None, sudo=sudo, label=label, parts=tuple(cmds))


@dataclass(frozen=True)
class StepOutput:
    """What one command of ``steps`` printed and how it ended; ``at`` is the host's uptime then."""

    stdout: str
    code: int
    at: float | None


def split_steps(stdout: str) -> tuple[float | None, list[StepOutput]]:
    """The host's uptime when a ``steps`` script began, and each command that ended, in order."""
    start: float | None = None
    done: list[StepOutput] = []
    chunk: list[str] = []
    for line in stdout.splitlines(keepends=True):
        fields = line.split()
        if len(fields) == 4 and fields[0] == STEP:
            at = _seconds(fields[3])
            if fields[1] == "-":
                start, chunk = at, []
                continue
            done.append(StepOutput("".join(chunk)[:-1], int(fields[2]), at))
            chunk = []
        else:
            chunk.append(line)
    return start, done


def _seconds(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None
