"""`cinescene ckpt info|export`: inspect and verify a checkpoint; export it as safetensors (Wan, diffusers).

PATH is a run directory (its ``checkpoints/latest``), a checkpoints directory,
a step directory or a `latest` file (the search order of :mod:`cinescene.ckpt.locate`).
Imports stay light: torch loads inside the handlers.
"""

from __future__ import annotations

import argparse
import json
import re
import sys

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)
_UNITS = {
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}


def parse_size(text: str) -> int:
    """'5GB' (decimal, as diffusers counts), '512MiB', '1000000' -> bytes."""
    match = _SIZE.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"expected a size such as 5GB, 500MB or 2GiB, got {text!r}")
    value = float(match.group(1)) * _UNITS[(match.group(2) or "B").upper()]
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a size of at least 1 byte, got {text!r}")
    return int(value)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ckpt",
        help="inspect, verify and export checkpoints",
        description="Checkpoint tools. PATH: a run directory, its checkpoints directory, a step "
        "directory or a `latest` file. Nothing in a checkpoint is ever run as code.",
    )
    csub = p.add_subparsers(dest="ckpt_command", metavar="ACTION", required=True)

    info = csub.add_parser(
        "info",
        help="step, samples, layout, model, sizes; --verify checks every file",
        description="What a checkpoint holds, read from its trainer record and manifest. "
        "--verify re-hashes every file against the manifest and names each one "
        "missing, truncated or altered (exit 1).",
    )
    info.add_argument("path", metavar="PATH")
    info.add_argument("--json", action="store_true", help="print one JSON object")
    info.add_argument("--verify", action="store_true", help="check every file's size and digest")
    info.set_defaults(func=run_info)

    export = csub.add_parser(
        "export",
        help="consolidated safetensors in Wan's or diffusers' layout",
        description="Gather the trained weights from the ZeRO shards and write them as "
        "safetensors (sharded with an index above --max-shard-size): the base DiT "
        "in Wan's original or diffusers' key layout with its config.json, the "
        "CineScene modules in their own file, cinescene.json describing it all. "
        "Streams one tensor at a time; prints the peak memory against the "
        "checkpoint's size.",
    )
    export.add_argument("path", metavar="PATH")
    export.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="overrides of the checkpoint's config, as for `cinescene sample` (an older run's masked "
        "values, e.g. model.scene.vggt.num_register_tokens=4); the model must stay the checkpoint's",
    )
    export.add_argument(
        "--format", dest="fmt", choices=["wan", "diffusers"], required=True, help="key layout of the base DiT"
    )
    export.add_argument("--out", required=True, help="directory to create (must not exist or be empty)")
    export.add_argument(
        "--ema", action="store_true", help="export the EMA weights instead of the trained ones"
    )
    export.add_argument(
        "--dtype",
        choices=["bf16", "fp16", "fp32"],
        default="fp32",
        help="dtype of the written tensors (default fp32: the master weights, lossless)",
    )
    export.add_argument(
        "--max-shard-size",
        type=parse_size,
        default="5GB",
        help="largest output file before splitting into shards with an index (default 5GB)",
    )
    export.set_defaults(func=run_export)


def run_info(args: argparse.Namespace) -> int:
    from cinescene.ckpt.info import describe, format_info, verify_checkpoint

    info = describe(args.path)
    problems = verify_checkpoint(args.path) if args.verify else []
    if args.verify:
        info["verify"] = {"ok": not problems, "problems": problems}
    if args.json:
        print(json.dumps(info, sort_keys=True))
    else:
        sys.stdout.write(format_info(info))
        if args.verify:
            print(
                f"verify: all {info['files']} files intact (sizes and digests match the manifest)"
                if not problems
                else f"verify: {len(problems)} problem{'s' if len(problems) > 1 else ''}"
            )
    for line in problems:
        print(f"cinescene ckpt info: damaged: {line}", file=sys.stderr)
    return 1 if problems else 0


def run_export(args: argparse.Namespace) -> int:
    from cinescene.ckpt.export import export
    from cinescene.host_memory import human_bytes
    from cinescene.log import setup_logging

    setup_logging("INFO")
    report = export(
        args.path,
        args.out,
        fmt=args.fmt,
        ema=args.ema,
        dtype=args.dtype,
        max_shard_size=args.max_shard_size,
        overrides=args.overrides,
    )
    for name in report.files:
        print(f"  {report.out / name}  {human_bytes((report.out / name).stat().st_size)}")
    print(
        f"exported {report.tensors} tensors ({human_bytes(report.bytes_written)}, {args.dtype}, "
        f"{'EMA' if args.ema else 'trained'} weights) in {report.seconds:.1f} s"
    )
    peak = "peak RSS" + (" (process life-time)" if report.peak_is_process_lifetime else "")
    print(
        f"{peak} {human_bytes(report.peak_rss_bytes)} (at start {human_bytes(report.start_rss_bytes)}) for a "
        f"{human_bytes(report.checkpoint_bytes)} checkpoint "
        f"(largest tensor {human_bytes(report.largest_tensor_bytes)}, shard limit "
        f"{human_bytes(report.max_shard_bytes)})"
    )
    return 0
