"""`cinescene env [--json]`: the installed stack (versions) and which optional parts import.

Exit 1 when an installed part fails to import (one line per failure, naming the file that was
imported instead, which is how a folder shadowing an installed package shows up).
"""

from __future__ import annotations

import argparse
import json
import sys


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "env",
        help="versions of the installed stack and which optional parts import",
        description="Print the versions this process runs with and check that the optional parts "
        "(Wan VAE, umT5, CLIP, SfM, fused attention, flash-attn) import. Exit 1 if an installed one fails.",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cinescene.stack import report

    facts = report()
    broken = [c for c in facts["components"] if c["installed"] and not c["ok"]]
    if args.json:
        print(json.dumps(facts, indent=2))
    else:
        print(f"python {facts['python']} on {facts['platform']}")
        width = max(map(len, facts["versions"]))
        for name, ver in facts["versions"].items():
            print(f"  {name:<{width}}  {ver or '-'}")
        for c in facts["components"]:
            state = "ok" if c["ok"] else ("not installed" if not c["installed"] else "BROKEN")
            print(f"  [{state}] {c['name']} ({c['purpose']})")
    for c in broken:
        print(f"cinescene env: error: {c['name']} does not import: {c['error']}", file=sys.stderr)
    return 1 if broken else 0
