"""`cinescene model info CONFIG [overrides] [--json]`: parameters, sequence length, FLOPs per sample.

The model is built on the meta device (no weights allocated), so even the 14B
config answers in seconds. Token counts use ``model.data_shape`` where set and
the data section (``data.synth.frames/size``, ``data.scene_images``) otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys

from .common import add_config_args, with_config


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "model",
        help="model facts: parameters, sequence length, FLOPs",
        description="Inspect a model config without allocating its weights.",
    )
    msub = p.add_subparsers(dest="model_command", metavar="ACTION", required=True)
    info = msub.add_parser("info", help="parameter counts, extended sequence length, FLOPs per sample")
    add_config_args(info)
    info.add_argument("--json", action="store_true", help="print one JSON object")
    info.set_defaults(func=run_info)


def _human(n: float, unit: str = "") -> str:
    for scale, suffix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.3f} {suffix}{unit}"
    return f"{n:.0f} {unit}".rstrip()


@with_config
def run_info(args: argparse.Namespace, cfg) -> int:
    from cinescene.models.flops import model_info

    info = model_info(cfg)
    if args.json:
        print(json.dumps(info, sort_keys=True))
        return 0
    shape = info["sample_shape"]
    rows = [
        ("model", info["name"]),
        ("base DiT parameters", f"{info['dit_params']:,}"),
        ("scene encoder (VGGT) parameters", f"{info['scene_encoder_params']:,}"),
        ("new module parameters", f"{info['new_module_params']:,}"),
        ("trainable parameters", f"{info['trainable_params']:,}"),
        ("total parameters", f"{info['total_params']:,}"),
        (
            "latent grid (T, H, W)",
            f"{shape['latent_frames']} x {shape['latent_height']} x {shape['latent_width']}",
        ),
        ("scene images", f"{shape['scene_images']} at {shape['scene_height']}x{shape['scene_width']} px"),
        (
            "sequence length",
            f"{info['seq_len']:,} = {info['video_tokens']:,} video + {info['context_tokens']:,} context",
        ),
        ("attention mask", info["attention_mask"]),
        ("DiT forward", _human(info["dit_forward_flops"], "FLOP")),
        ("  of which attention", _human(info["attention_forward_flops"], "FLOP")),
        ("scene encoder forward", _human(info["scene_encoder_forward_flops"], "FLOP")),
        ("training FLOPs per sample", _human(info["flops_per_sample"], "FLOP")),
    ]
    width = max(len(k) for k, _ in rows)
    sys.stdout.write("".join(f"{k:<{width}}  {v}\n" for k, v in rows))
    return 0
