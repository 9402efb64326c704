"""``cinescene bench checkpoint``: checkpoint save and load throughput against ``dd`` on the same disk.

Each rank of a local job builds a CineScene DiT sized to the requested
amount of fp32 optimizer state (weights + two Adam moments, 12 bytes per
trained parameter), takes one optimizer step under ZeRO-3, then:

* save: :meth:`CheckpointManager.save`, the trainer's own path (hashing
  while writing, fsync, rename, `latest`); the training loop is blocked for
  exactly this long, since saves are synchronous;
* load: :func:`cinescene.train.checkpoint.resume` into a freshly built
  engine, minus the time it spends building that engine (choosing and
  checking the checkpoint, loading shards and rank states remain);
* export: ``cinescene ckpt export`` of the saved checkpoint in this process,
  with its peak resident memory.

``dd`` writes (``conv=fsync``) and reads a file of the checkpoint's size in
the same directory right before and after; both reads start cold where the
kernel honours ``posix_fadvise(DONTNEED)`` on clean pages (a tmpfs keeps
them cached: the figures then compare memory copies).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch

from cinescene.ckpt.export import export
from cinescene.ckpt.manifest import read_manifest
from cinescene.config import load_config
from cinescene.distributed.env import detect
from cinescene.distributed.spawn import spawn_local_ranks
from cinescene.errors import CineSceneError
from cinescene.host_memory import human_bytes
from cinescene.log import setup_logging
from cinescene.models import build_model

BENCH_LAYERS_MAX = 64


def bench_overrides(state_bytes: float, base: list[str]) -> list[str]:
    """Config overrides for a DiT whose fp32 training state
    is about ``state_bytes`` (12 bytes per parameter)."""

    def params(layers: int) -> int:
        cfg, _ = load_config(None, base + [f"model.num_layers={layers}"])
        return sum(p.numel() for p in build_model(cfg.model, device="meta").parameters())

    one, two = params(1), params(2)
    per_layer, fixed = two - one, one - (two - one)
    layers = max(1, min(BENCH_LAYERS_MAX, round((state_bytes / 12 - fixed) / per_layer)))
    return base + [f"model.num_layers={layers}"]


def model_overrides(run_dir: Path) -> list[str]:
    return [
        "data.train_shards=unused",
        f"run.dir={run_dir}",
        "model.name=bench",
        "model.dim=1024",
        "model.ffn_dim=4096",
        "model.num_heads=8",
        "model.in_dim=4",
        "model.out_dim=4",
        "model.text_dim=64",
        "model.text_len=8",
        "model.freq_dim=64",
        "model.scene.enabled=false",
        "train.precision=fp32",
        "train.micro_batch_size=1",
        "parallel.zero_stage=3",
        "parallel.param_persistence_threshold=0",
        "checkpoint.keep_last=1",
        "tracking.wandb.mode=disabled",
    ]


def _evict(paths) -> None:
    """Drop clean cached pages of ``paths`` so the next read comes from the disk (best effort)."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


# ----------------------------------------------------------------------------- one rank
def rank_main(argv: list[str]) -> int:
    """One rank of the benchmark job:
    ``python -m cinescene.train.checkpoint_bench RESULT REPEATS OVERRIDES...``.

    Per repeat, side by side: save, ``dd`` writing a file of the checkpoint's size, load (resume), ``dd``
    reading that file; ``dd`` runs on rank 0 while the other ranks wait, caches dropped before each read.
    """
    # The trainer's side loads DeepSpeed, which prints on import: only the ranks (their output goes to the
    # run's logs) import it, never the process the benchmark was started from.
    import torch.distributed as dist

    from cinescene.distributed.batching import plan_batch
    from cinescene.distributed.groups import build_layout, destroy_process_group, init_process_group
    from cinescene.train.callbacks import CallbackList, TrainState
    from cinescene.train.checkpoint import CheckpointManager, rank_state_now, resume
    from cinescene.train.engine import build_engine

    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.distributed")
    result, repeats, overrides = Path(argv[0]), int(argv[1]), argv[2:]
    env = detect()
    cfg, _ = load_config(None, overrides)
    setup_logging("WARNING", None, env.rank)
    init_process_group(env, cfg.parallel.backend, cfg.parallel.timeout_s)
    try:
        layout = build_layout(env, cfg.parallel.sequence)
        plan = plan_batch(cfg.train, env.world_size, cfg.parallel.sequence)
        checkpoints = CheckpointManager(
            Path(cfg.run.dir) / "checkpoints", cfg.checkpoint, rank=env.rank, world_size=env.world_size
        )
        built: dict[str, float] = {}

        def make_engine():
            started = time.perf_counter()
            engine = build_engine(cfg, layout, plan, lambda: build_model(cfg.model))
            built["s"] = time.perf_counter() - started
            return engine

        start = resume(cfg, layout, plan, checkpoints, make_engine)
        model = cfg.model
        x = torch.randn(1, model.in_dim, 1, 4, 4)
        loss = (
            start.engine(x, torch.tensor([500.0]), torch.randn(1, model.text_len, model.text_dim))
            .square()
            .mean()
        )
        start.engine.backward(loss)
        start.engine.step()
        times: dict[str, list[float]] = {"save_s": [], "load_s": [], "dd_write_s": [], "dd_read_s": []}
        dd_file = Path(cfg.run.dir) / "dd-bench.bin"
        for repeat in range(repeats):
            state = TrainState(
                step=repeat + 1, consumed_samples=(repeat + 1) * plan.global_batch_size, max_steps=repeats
            )
            dist.barrier()
            started = time.perf_counter()
            path = checkpoints.save(
                start.engine,
                start.facts.record(state, "benchmark", None),
                rank_state_now(env.rank, CallbackList([])),
                "",
            )
            times["save_s"].append(time.perf_counter() - started)
            size = sum(r.size for r in read_manifest(path).values())
            if env.rank == 0:
                times["dd_write_s"].append(_dd(["if=/dev/zero", f"of={dd_file}"], size, "conv=fsync"))
                _evict([dd_file, *(p for p in path.rglob("*") if p.is_file())])
            start = None  # the engine goes; the next one is built by the load
            dist.barrier()
            started = time.perf_counter()
            start = resume(cfg, layout, plan, checkpoints, make_engine)
            dist.barrier()
            times["load_s"].append(time.perf_counter() - started - built["s"])
            assert start.state.step == repeat + 1
            if env.rank == 0:
                times["dd_read_s"].append(_dd([f"if={dd_file}", "of=/dev/null"], size))
                dd_file.unlink()
            dist.barrier()
        if env.rank == 0:
            figures = {key: statistics.median(values) for key, values in times.items()}
            result.write_text(
                json.dumps(
                    {
                        **figures,
                        "checkpoint": str(path),
                        "checkpoint_bytes": size,
                        "dd_bytes": _dd_count(size) * 2**20,
                        "repeats": repeats,
                        "parameters": sum(math.prod(s) for s in start.facts.params.values()),
                    }
                )
            )
    finally:
        destroy_process_group()
    return 0


def _dd_count(size: int) -> int:
    return max(1, math.ceil(size / 2**20))


def _dd(files: list[str], size: int, *flags: str) -> float:
    started = time.perf_counter()
    subprocess.run(
        ["dd", *files, "bs=1M", f"count={_dd_count(size)}", *flags], check=True, capture_output=True
    )
    return time.perf_counter() - started


# ---------------------------------------------------------------------------- the job
def run(*, state_gb: float, nproc: int, directory: Path, export_shard: int, repeats: int, keep: bool) -> dict:
    """The whole benchmark; returns its figures (see :func:`format_report`)."""
    directory.mkdir(parents=True, exist_ok=True)
    run_dir = directory / "bench-run"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    overrides = bench_overrides(state_gb * 1e9, model_overrides(run_dir))
    result = directory / "bench-result.json"
    status = spawn_local_ranks(
        [sys.executable, "-m", "cinescene.train.checkpoint_bench", str(result), str(repeats), *overrides],
        nproc,
    )
    if status:
        raise CineSceneError(f"the benchmark ranks failed (exit status {status}); see their output above")
    figures = json.loads(result.read_text())
    result.unlink()
    exported = export(
        figures["checkpoint"], directory / "bench-export", fmt="diffusers", max_shard_size=export_shard
    )
    shutil.rmtree(exported.out)
    if not keep:
        shutil.rmtree(run_dir)
    return {
        **figures,
        "ranks": nproc,
        "directory": str(directory),
        "export_s": exported.seconds,
        "export_peak_rss_bytes": exported.peak_rss_bytes,
        "export_start_rss_bytes": exported.start_rss_bytes,
        "export_largest_tensor_bytes": exported.largest_tensor_bytes,
        "export_shard_bytes": export_shard,
        "export_peak_is_process_lifetime": exported.peak_is_process_lifetime,
    }


def format_report(r: dict) -> str:
    size, dd_size = r["checkpoint_bytes"], r["dd_bytes"]
    save_rate, load_rate = size / r["save_s"], size / r["load_s"]
    dd_write, dd_read = dd_size / r["dd_write_s"], dd_size / r["dd_read_s"]
    lines = [
        f"checkpoint bench: {r['parameters']:,} parameters, ZeRO-3 fp32, {r['ranks']} ranks; checkpoint "
        f"{human_bytes(size)} in {r['directory']} (dd on the same disk); median of {r['repeats']} rounds",
        f"{'':24}{'seconds':>9}{'GB/s':>9}{'vs dd':>8}",
        f"{'dd write (fsync)':24}{r['dd_write_s']:9.2f}{dd_write / 1e9:9.3f}",
        f"{'save':24}{r['save_s']:9.2f}{save_rate / 1e9:9.3f}{save_rate / dd_write:7.2f}x",
        f"{'dd read':24}{r['dd_read_s']:9.2f}{dd_read / 1e9:9.3f}",
        f"{'load (resume)':24}{r['load_s']:9.2f}{load_rate / 1e9:9.3f}{load_rate / dd_read:7.2f}x",
        f"training loop blocked by a save: {r['save_s']:.2f} s (saves are synchronous: the loop waits for "
        "the whole save)",
        f"export (diffusers, fp32): {r['export_s']:.2f} s, peak RSS {human_bytes(r['export_peak_rss_bytes'])}"
        f"{' (process life-time)' if r['export_peak_is_process_lifetime'] else ''} (at start "
        f"{human_bytes(r['export_start_rss_bytes'])}) for the {human_bytes(size)} checkpoint; shard limit "
        f"{human_bytes(r['export_shard_bytes'])}, largest tensor "
        f"{human_bytes(r['export_largest_tensor_bytes'])}",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(rank_main(sys.argv[1:]))
