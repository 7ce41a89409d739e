"""``orch import``: runbook command lines or a systemd unit → a playbook (and an inventory)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from rich.markup import escape

from .. import outputs
from ..core import importer, runbook
from ..core.load import load
from ..core.yamlread import read_text
from ..errors import ConfigError, OutputError
from .common import EXIT_OK
from .output import err, out

DEFAULT_HOST = "gpu1"
VERB = "orch import"


def cmd_import(args: argparse.Namespace) -> int:
    host, address = args.host or (DEFAULT_HOST, None)
    if (address is None) != (args.inventory_out is None):
        raise ConfigError("--host NAME=ADDRESS and --inventory-out FILE go together", file=VERB)
    for path in (args.out, args.inventory_out):
        if path is not None and os.path.lexists(path):
            raise OutputError(str(path), "the file exists; orch import writes only new files")
    imported = importer.import_commands(_commands(args), host=host)
    inventory, said = _inventory_ref(args)
    notes = [*imported.notes, *said]
    if args.host is None:
        notes.append(f"hosts: [{DEFAULT_HOST}]: name the server with --host NAME[=ADDRESS]")
    for note in notes:
        err.print(f"[yellow]note:[/yellow] {escape(note)}")
    text = importer.playbook_yaml(imported, inventory=inventory)
    said_to = out if args.out is not None else err  # stdout holds the playbook when it is printed
    if address is not None:
        _write(args.inventory_out, importer.inventory_yaml(host=host, address=address))
        said_to.print(f"wrote {escape(str(args.inventory_out))} (host {escape(host)})")
    if args.out is None:
        sys.stdout.write(text)
        return EXIT_OK
    _write(args.out, text)
    out.print(f"wrote {escape(str(args.out))} ({len(imported.entries)} deployment(s))")
    if (args.out.parent / inventory).is_file():
        load(args.out)  # orch's own loader, with the inventory: a problem is one line, and exit 1
        out.print(f"[green]ok[/green]: orch validate {escape(str(args.out))} passes")
    return EXIT_OK


def _write(path: Path, text: str) -> None:
    outputs.write_files(path.parent, {path.name: text})  # the folder is made if missing


def _commands(args: argparse.Namespace) -> list[runbook.Command]:
    words: list[str] = args.command
    given = [bool(words), args.file is not None, args.from_unit is not None]
    if sum(given) != 1:
        raise ConfigError("give one of: -- COMMAND…, --file RUNBOOK, --from-unit UNIT", file=VERB)
    if args.file is not None:
        return runbook.parse_text(read_text(args.file), file=str(args.file))
    if args.from_unit is not None:
        return [runbook.parse_unit(read_text(args.from_unit), file=str(args.from_unit))]
    return [runbook.parse_words(words, where=runbook.Where("the command line"))]


def _inventory_ref(args: argparse.Namespace) -> tuple[str, list[str]]:
    """What the playbook's ``inventory:`` says (relative to the playbook's folder), and a note."""
    if args.inventory_out is not None and args.out is not None:
        return os.path.relpath(args.inventory_out.resolve(), args.out.parent.resolve()), []
    if args.inventory_out is not None:  # the playbook is printed: where it goes is not known
        return str(args.inventory_out), []
    if args.inventory is not None:
        return str(args.inventory), []
    return "inventory.yml", ["inventory: inventory.yml, beside the playbook: write it, or name yours with -i"]
