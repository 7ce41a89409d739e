"""Command line of the test bed.

build | up N | down | status | crash|boot|freeze|thaw|partition|heal|reset I
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

from .hosts import Testbed, exclusive
from .proc import TestbedError

HOST_VERBS = ("crash", "boot", "freeze", "thaw", "partition", "heal", "reset")


def parse(argv: list[str]) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(prog="scripts/testbed", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log every command")
    verbs = parser.add_subparsers(dest="verb", required=True)
    verbs.add_parser("build", help="build (or reuse) the template root")
    verbs.add_parser("down", help="stop all hosts and remove everything set up")
    verbs.add_parser("status", help="list hosts: name, IP, state")
    up = verbs.add_parser("up", help="ensure hosts th1..thN run and are ready")
    up.add_argument("n", type=int)
    for verb in HOST_VERBS:
        verbs.add_parser(verb, help=f"{verb} host I").add_argument("i", type=int)
    return parser.parse_args(argv)


def print_status(testbed: Testbed) -> None:
    """One line per host: name, IP, state."""
    for host, state in testbed.status():
        print(f"{host.name:<6} {host.address:<12} {state}")


def dispatch(testbed: Testbed, args: argparse.Namespace) -> None:
    """Run one verb."""
    if args.verb == "build":
        report = testbed.build()
        what = "built" if report.built else "cached"
        print(f"template {what}: {report.root} {report.phases or ''}")
        return
    if args.verb == "up":
        testbed.up(args.n)
    elif args.verb == "down":
        testbed.down()
    elif args.verb in HOST_VERBS:
        getattr(testbed, args.verb)(args.i)
    print_status(testbed)
    if args.verb == "up":
        print(f"ssh -F {testbed.ssh_config_path} 10.77.1.2   # root; -l deploy for deploy")


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    args = parse(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(message)s",
        datefmt="%H:%M:%S",
    )
    if os.geteuid() != 0:
        print("scripts/testbed: must run as root", file=sys.stderr)
        return 2
    testbed, started = Testbed(), time.monotonic()
    try:
        if args.verb == "status":
            dispatch(testbed, args)
        else:
            with exclusive(wait=float(os.environ.get("ORCH_TESTBED_LOCK_WAIT", "0"))):
                dispatch(testbed, args)
    except TestbedError as exc:
        print(f"testbed {args.verb} failed: {exc}", file=sys.stderr)
        return 1
    print(f"[{args.verb}: {time.monotonic() - started:.2f} s]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
