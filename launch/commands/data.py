"""`cinescene data synth|convert|prepare|inspect`: make, convert, shard and look at training data.

Typical use::

    cinescene data synth --out data/clips --clips 1000 --workers 16
    cinescene data prepare --src data/clips --out data/shards --encoder none
    cinescene data inspect data/shards --png sheet.png

Real data: ``data convert --src <Scene-Decoupled root> --out clips`` then
``data prepare --encoder wan --vae <Wan2.1 VAE dir> --text-encoder <umT5 dir>``,
split over a SLURM array (``--rank/--world`` default to the array task).
"""

from __future__ import annotations

import argparse
import sys


def _logging():
    from cinescene.log import setup_logging

    setup_logging("INFO")


def _synth(args: argparse.Namespace) -> int:
    _logging()
    from cinescene.data.synth import synthesize

    out = synthesize(
        args.out,
        args.clips,
        args.frames,
        args.size,
        args.scene_images,
        args.seed,
        args.workers,
        layout=args.layout,
    )
    print(f"{args.clips} clips in {out}")
    return 0


def _convert(args: argparse.Namespace) -> int:
    _logging()
    from cinescene.data.scene_decoupled import convert

    out = convert(args.src, args.out, args.scene_images, args.hfov, args.captions)
    print(f"clips in {out}")
    return 0


def _prepare(args: argparse.Namespace) -> int:
    from cinescene.data import prepare as prep
    from cinescene.log import console_out, send_output_to, verbose
    from cinescene.run_dir import RunDir

    if args.merge:
        _logging()
        print(f"merged: {prep.merge(args.out)}")
        return 0
    if not args.src or not args.encoder:
        from cinescene.config import ConfigError

        raise ConfigError("--src" if not args.src else "--encoder", "required (unless --merge)")
    rank, world = prep.check_arguments(
        args.src,
        args.out,
        args.encoder,
        args.rank,
        args.world,
        args.shard_size_mb,
        args.frames,
        args.size,
        args.dtype,
        args.device,
    )
    if (
        not verbose()
    ):  # the encoders' libraries talk (weights loading, missing accelerate): to this rank's log
        send_output_to(RunDir(prep.output_dir(args.out)).rank_log(rank, prefix="prepare-rank"))
    _logging()
    manifest = prep.prepare(
        args.src,
        args.out,
        args.encoder,
        args.vae,
        args.text_encoder,
        args.tokenizer,
        rank,
        world,
        args.shard_size_mb,
        args.frames,
        args.size,
        args.dtype,
        args.device,
        keep_pixels=args.keep_pixels,
    )
    print(
        f"manifest: {manifest}"
        if manifest
        else "this rank is done; the last rank to finish merges manifest.json",
        file=console_out(),
    )
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from cinescene.data.inspect import contact_sheet, damaged, format_summary, summarize, summary_json

    if args.png:
        from cinescene.config.paths import check_output_location

        check_output_location(args.png, "--png")
    summary = summarize(args.shards, verify=args.verify)
    if args.png:
        summary["contact_sheet"] = str(contact_sheet(args.shards, args.png, args.sample))
    sys.stdout.write((summary_json(summary) if args.json else format_summary(summary)) + "\n")
    if args.png and not args.json:
        print(f"contact sheet: {summary['contact_sheet']}")
    return 1 if args.verify and damaged(summary) else 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "data",
        help="synthesize, convert, prepare and inspect training data",
        description="Data tools: synthetic renderer, dataset converter, shard writer.",
    )
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    s = dsub.add_parser(
        "synth",
        help="render synthetic scene-decoupled clips",
        description="Ray-cast rooms/courtyards/landscapes with a moving subject, rendered with "
        "and without it along one camera path, plus a panorama and scene images.",
    )
    s.add_argument("--out", required=True, help="output directory (one sub-directory per clip)")
    s.add_argument("--clips", type=int, default=8)
    s.add_argument("--frames", type=int, default=17, help="1 + 4k frames (default 17)")
    s.add_argument("--size", type=int, nargs=2, default=[64, 64], metavar=("H", "W"))
    s.add_argument("--scene-images", type=int, default=6, help="perspective views cut from the panorama")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--workers", type=int, default=1, help="processes")
    s.add_argument(
        "--layout",
        choices=["clips", "scene-decoupled"],
        default="clips",
        help="'scene-decoupled' writes the public dataset's layout instead (converter fixtures)",
    )
    s.set_defaults(func=_synth)

    c = dsub.add_parser(
        "convert",
        help="convert the Scene-Decoupled Video dataset layout into clips",
        description="camera/{whuman,wohuman}/<id>/<id>_cam.json + videos + panoramas (UE, cm) "
        "-> clip directories (OpenCV, metres). Assumptions: "
        "cinescene/data/scene_decoupled.py.",
    )
    c.add_argument("--src", required=True, help="dataset root")
    c.add_argument("--out", required=True, help="clip directory to write")
    c.add_argument("--scene-images", type=int, default=20, help="views cut from each panorama (default 20)")
    c.add_argument(
        "--hfov", type=float, default=None, help="horizontal FOV in degrees when _cam.json has none"
    )
    c.add_argument("--captions", default=None, help="directory of <scene_id>.txt prompts")
    c.set_defaults(func=_convert)

    r = dsub.add_parser(
        "prepare",
        help="encode clips into webdataset shards",
        description="Clips -> size-bounded webdataset shards + manifest.json. Resumable; "
        "split across processes with --rank/--world (default: SLURM array task).",
    )
    r.add_argument("--src", help="clip directory (from `data synth` or `data convert`)")
    r.add_argument("--out", required=True, help="shard directory")
    r.add_argument("--encoder", choices=["wan", "none"], help="wan: VAE latents + umT5; none: keep pixels")
    r.add_argument("--vae", help="AutoencoderKLWan directory (or a diffusers Wan repo root)")
    r.add_argument("--text-encoder", help="UMT5EncoderModel directory (or a diffusers Wan repo root)")
    r.add_argument("--tokenizer", help="tokenizer directory (default: beside or inside --text-encoder)")
    r.add_argument(
        "--rank", type=int, default=None, help="default: SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN"
    )
    r.add_argument("--world", type=int, default=None, help="default: SLURM_ARRAY_TASK_COUNT, else 1")
    r.add_argument("--shard-size-mb", type=float, default=512.0)
    r.add_argument("--frames", type=int, default=None, help="frames per clip (1 + 4k; default: all that fit)")
    r.add_argument(
        "--size",
        type=int,
        nargs=2,
        default=None,
        metavar=("H", "W"),
        help="centre-crop and resize frames (default: keep)",
    )
    r.add_argument("--dtype", choices=["float16", "float32"], default="float16", help="stored latent dtype")
    r.add_argument("--device", default="cpu", help="encoder device, e.g. cuda")
    r.add_argument("--merge", action="store_true", help="only merge the per-rank manifests in --out")
    r.add_argument(
        "--keep-pixels",
        action="store_true",
        help="wan shards also keep the frames with and without the subject (evaluation shards: "
        "`cinescene eval` compares pixels)",
    )
    r.set_defaults(func=_prepare)

    i = dsub.add_parser("inspect", help="summarise shards; contact sheet PNG")
    i.add_argument("shards", help="shard directory (with manifest.json)")
    i.add_argument("--json", action="store_true", help="print one JSON object")
    i.add_argument("--png", default=None, help="write a contact sheet of one sample here")
    i.add_argument("--sample", type=int, default=0, help="which sample (manifest order) the sheet shows")
    i.add_argument(
        "--verify",
        action="store_true",
        help="check every shard's sha256 and decode every sample against the manifest "
        "(exit 1 if any shard or sample is damaged)",
    )
    i.set_defaults(func=_inspect)
