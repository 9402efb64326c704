"""`cinescene sample CKPT --scene DIR|SHARDS:KEY --camera TRAJ.json|PRESET --prompt ... --out OUT.mp4`."""

from __future__ import annotations

import argparse

from .common import CHECKPOINT_HELP, EMA_HELP, request_from


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sample",
        help="generate a video with a camera trajectory and scene images",
        description="Generate one video from a checkpoint: Euler flow matching with classifier-free guidance "
        "(and the context cache where it is exact), decoded by the encoder of the training data. "
        "Writes an mp4 (settings in its metadata and in a JSON beside it) and optionally a PNG "
        "strip of frames.",
    )
    p.add_argument("checkpoint", metavar="CKPT", help=CHECKPOINT_HELP)
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="overrides of the checkpoint's config, e.g. model.attention.backend=sdpa",
    )
    p.add_argument(
        "--scene",
        required=True,
        help="a folder of scene images (1 to data.scene_images) or SHARDS:KEY, a sample of "
        "prepared shards (its scene images; its prompt and trajectory by default)",
    )
    p.add_argument(
        "--camera",
        default=None,
        help="a JSON trajectory (per-frame OpenCV camera-to-world, metres) or a preset: static, "
        "dolly_in, dolly_out, truck_left, truck_right, pan_left, pan_right, tilt_up, tilt_down, "
        "orbit_left, orbit_right, crane_up, crane_down",
    )
    p.add_argument("--camera-scale", type=float, default=1.0, help="scales a preset's distances and angles")
    p.add_argument(
        "--scene-cameras",
        default=None,
        metavar="FILE.json",
        help="models with scene anchoring (model.scene.pose_embedding) and a scene folder: one "
        "camera-to-world per image, in file-name order, in the world of --camera (the format of a "
        "JSON trajectory); SHARDS:KEY scenes bring their own",
    )
    p.add_argument("--prompt", default=None, help="what happens in the video")
    p.add_argument(
        "--negative-prompt",
        default=None,
        help="the unconditional branch's prompt (default: the empty embedding training drops to)",
    )
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: eval.sample_steps)")
    p.add_argument("--cfg", type=float, default=None, help="guidance scale (default: eval.cfg_scale)")
    p.add_argument("--shift", type=float, default=None, help="flow shift (default: train.flow.shift)")
    p.add_argument("--seed", type=int, default=0, help="noise seed")
    p.add_argument("--ema", action="store_true", help=EMA_HELP)
    p.add_argument("--out", required=True, help="the mp4 to write (OUT.json beside it gets the settings)")
    p.add_argument("--png", default=None, help="also write a PNG strip of up to 8 frames here")
    p.add_argument("--device", default=None, help="torch device (default: cuda when visible, else cpu)")
    p.add_argument(
        "--dtype",
        choices=["fp32", "bf16", "fp16"],
        default=None,
        help="model precision (default: bf16 on a GPU, fp32 on the CPU)",
    )
    p.add_argument("--vae", default=None, help="Wan VAE directory (default: the one the data manifest names)")
    p.add_argument(
        "--text-encoder", default=None, help="umT5 directory (default: the one the data manifest names)"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cinescene.sampling.command import SampleRequest, run_sample

    return run_sample(request_from(args, SampleRequest))
