"""``cinescene ckpt info``: what a checkpoint holds, and whether its files are intact.

:func:`describe` reads the trainer record and the manifest only (no tensor
data, no pickle): step, samples, layout at save, model, EMA, sizes per part,
when and why it was saved. :func:`verify_checkpoint` re-hashes every file
against the manifest and names each one that is missing, truncated, altered
or not listed.
"""

from __future__ import annotations

import os
from pathlib import Path

from cinescene.host_memory import human_bytes

from .layout import RANK_STATES, ZERO_TAG
from .locate import resolve_step_dir
from .manifest import MANIFEST, read_manifest, verify
from .record import read_record

#: (label, predicate on a path relative to the step directory), in the order they are shown.
PARTS: list[tuple[str, str]] = [
    ("ZeRO model states", "model_states"),
    ("ZeRO optimizer states", "optim_states"),  # fp32 weights and Adam moments
    ("rank states (RNG, EMA)", "rank_states"),
    ("config, record, manifest", "other"),
]


def _part(name: str) -> str:
    if name.startswith(f"{ZERO_TAG}/") and name.endswith("model_states.pt"):
        return "model_states"
    if name.startswith(f"{ZERO_TAG}/") and name.endswith("optim_states.pt"):
        return "optim_states"
    if name.startswith(f"{RANK_STATES}/"):
        return "rank_states"
    return "other"


def _files_on_disk(step_dir: Path) -> dict[str, int]:
    found = {}
    for dirpath, _dirs, names in os.walk(step_dir):
        for name in names:
            path = Path(dirpath) / name
            found[str(path.relative_to(step_dir))] = path.stat().st_size
    return found


def describe(path: Path | str) -> dict:
    """The facts ``cinescene ckpt info`` prints, as one JSON-ready dict."""
    step_dir = resolve_step_dir(path)
    record = read_record(step_dir)
    listed = read_manifest(step_dir)
    sizes = {name: r.size for name, r in listed.items()} if listed is not None else _files_on_disk(step_dir)
    if listed is not None:
        sizes[MANIFEST] = (step_dir / MANIFEST).stat().st_size
    parts = {key: 0 for _label, key in PARTS}
    for name, size in sizes.items():
        parts[_part(name)] += size
    return {
        "path": str(step_dir),
        "step": record.step,
        "consumed_samples": record.consumed_samples,
        "global_batch_size": record.global_batch_size,
        "world_size": record.world_size,
        "dp_size": record.dp_size,
        "sp_size": record.sp_size,
        "zero_stage": record.zero_stage,
        "precision": record.precision,
        "model_name": record.model_name,
        "parameters": record.parameter_count,
        "trainable_parameters": record.trainable_count,
        "ema": record.ema,
        "saved_at": record.saved_at,
        "reason": record.reason,
        "run_name": record.run_name,
        "wandb_run_id": record.wandb_run_id,
        "manifest": listed is not None,
        "files": len(sizes),
        "sizes": parts,
        "total_bytes": sum(parts.values()),
    }


def verify_checkpoint(path: Path | str) -> list[str]:
    """Every problem with the files of a checkpoint, one line each; empty when intact."""
    step_dir = resolve_step_dir(path)
    listed = read_manifest(step_dir)
    if listed is None:
        return [f"{MANIFEST}: missing (nothing to verify against)"]
    problems = [f"{step_dir / line}" for line in verify(step_dir, listed)]
    extra = sorted(set(_files_on_disk(step_dir)) - set(listed) - {MANIFEST})
    problems += [f"{step_dir / name}: not in the manifest (added after the save)" for name in extra]
    return problems


def format_info(info: dict) -> str:
    rows = [
        ("checkpoint", info["path"]),
        ("step", f"{info['step']:,}"),
        ("consumed samples", f"{info['consumed_samples']:,} (global batch {info['global_batch_size']})"),
        (
            "saved by",
            f"{info['world_size']} ranks (data-parallel {info['dp_size']}, sequence-parallel "
            f"{info['sp_size']}), ZeRO-{info['zero_stage']}, {info['precision']}",
        ),
        (
            "model",
            f"{info['model_name']}: {info['parameters']:,} parameters, {info['trainable_parameters']:,} "
            "trained (in the shards)",
        ),
        ("EMA", "yes" if info["ema"] else "no"),
        ("saved at", f"{info['saved_at']} ({info['reason']})"),
        (
            "run",
            f"{info['run_name']}" + (f", W&B run {info['wandb_run_id']}" if info["wandb_run_id"] else ""),
        ),
    ]
    for label, key in PARTS:
        rows.append((f"  {label}", human_bytes(info["sizes"][key])))
    rows.append(
        (
            "total",
            f"{human_bytes(info['total_bytes'])} in {info['files']} files"
            + ("" if info["manifest"] else " (no manifest: not verifiable)"),
        )
    )
    width = max(len(k) for k, _ in rows)
    return "".join(f"{k:<{width}}  {v}\n" for k, v in rows)
