"""The other orch deployments on a host, read from their files: their GPUs, memory share and revision.

Every deployment has an env file (``/etc/orch/NAME.env``, or ``~/.config/orch/NAME.env`` in a user's
scope) that names its GPUs (``CUDA_VISIBLE_DEVICES``), a unit or program file whose command line holds
``--gpu-memory-utilization``, and a state folder whose ``current`` file holds its revision. Only those
values leave the host: an env file's other lines (secrets among them) are never printed. Files the
login cannot read are skipped. Pure: a shell snippet and its parser.
"""

from __future__ import annotations

import contextlib
import re
import shlex
from collections.abc import Iterable
from dataclasses import dataclass

from ..core.layout import SUPERVISOR_CONF_DIR
from .commands import MARK
from .markers import blocks
from .procs import UID, Owner

# vLLM's own default, for a unit whose command line does not set it.
VLLM_DEFAULT_UTILIZATION = 0.9
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_UTIL = re.compile(r"--gpu-memory-utilization[= ]([0-9.]+)")


@dataclass(frozen=True)
class Sibling:
    """An orch deployment found on the host; ``gpus`` empty for a CPU deployment."""

    owner: Owner
    gpus: tuple[int, ...] = ()
    utilization: float = VLLM_DEFAULT_UTILIZATION
    revision: int | None = None

    def describe(self) -> str:
        """``deployment tiny-a (orch, revision 1)``, with the user for another user's deployment."""
        user = (
            f"user {self.owner.kind.removeprefix('user-')}, " if self.owner.kind.startswith("user-") else ""
        )
        rev = f"revision {self.revision}" if self.revision is not None else "no revision"
        return f"deployment {self.owner.name} (orch, {user}{rev})"


# From the env file its CUDA_VISIBLE_DEVICES lines, from the unit or program file the first
# --gpu-memory-utilization: one awk for both files (the env file's path comes through the environment).
_READ = (
    'orch_e=$orch_f awk \'FILENAME == ENVIRON["orch_e"] { if (/^CUDA_VISIBLE_DEVICES=/) print; next } '
    "!u && match($0, /--gpu-memory-utilization[= ][0-9.]*/) { print substr($0, RSTART, RLENGTH); u = 1 }' "
    '"$orch_f" "$orch_u" 2>/dev/null'
)


def script(conf_dir: str | None = None) -> str:
    """For every env file found: ``@@orchsib KIND NAME``, then the deployment's GPUs, share and revision."""
    confs = " ".join(
        shlex.quote(d) for d in dict.fromkeys([conf_dir or SUPERVISOR_CONF_DIR, SUPERVISOR_CONF_DIR])
    )
    return (
        'for orch_f in /etc/orch/*.env "$HOME"/.config/orch/*.env /root/.config/orch/*.env '
        "/home/*/.config/orch/*.env; do "
        '[ -f "$orch_f" ] || continue; orch_n=${orch_f##*/}; orch_n=${orch_n%.env}; '
        "case $orch_f in /etc/orch/*) orch_s=/var/lib/orch/$orch_n; orch_k=system; "
        "orch_u=/etc/systemd/system/orch-$orch_n.service; "
        f'for orch_d in {confs}; do [ -f "$orch_d/orch-$orch_n.conf" ] && '
        "{ orch_k=supervisord; orch_u=$orch_d/orch-$orch_n.conf; break; }; done;; "
        # The file's owner: ours without a process; another user's by stat.
        f'*) orch_h=${{orch_f%/.config/orch/*}}; if [ -O "$orch_f" ]; then orch_k=user-{UID}; '
        'else orch_k=user-$(stat -c %u "$orch_f"); fi; '
        "orch_s=$orch_h/.local/state/orch/$orch_n; "
        "orch_u=$orch_h/.config/systemd/user/orch-$orch_n.service;; "
        "esac; "
        f'echo "{MARK}sib $orch_k $orch_n"; {_READ}; '
        'orch_r=""; [ -f "$orch_s/current" ] && { read -r orch_r <"$orch_s/current" || :; } 2>/dev/null; '
        'echo "rev=$orch_r"; done'
    )


def parse(text: str) -> tuple[Sibling, ...]:
    """``script``'s output → one Sibling per deployment (the first found of a name and kind)."""
    found: dict[Owner, Sibling] = {}
    for head, body in blocks(text, "sib"):
        kind, _, name = head.partition(" ")
        if not _NAME.match(name) or (Owner(kind, name) in found):
            continue
        found[Owner(kind, name)] = _sibling(Owner(kind, name), body.splitlines())
    return tuple(found.values())


def _sibling(owner: Owner, lines: Iterable[str]) -> Sibling:
    gpus: tuple[int, ...] = ()
    utilization, revision = VLLM_DEFAULT_UTILIZATION, None
    for line in lines:
        if line.startswith("CUDA_VISIBLE_DEVICES="):
            value = line.split("=", 1)[1].strip().strip("'\"")
            gpus = tuple(int(g) for g in value.split(",") if g.strip().isdigit())
        elif m := _UTIL.match(line.strip()):
            with contextlib.suppress(ValueError):
                utilization = float(m.group(1))
        elif line.startswith("rev="):
            value = line[4:].strip()
            revision = int(value) if value.isdigit() else None
    return Sibling(owner, gpus, utilization, revision)
