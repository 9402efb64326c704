"""``cinescene bench checkpoint``: checkpoint save and load throughput against ``dd`` on the same disk.

Each rank of a local job builds a CineScene DiT sized to the requested
amount of fp32 optimizer state (weights + two Adam moments, 12 bytes per
trained parameter), takes one optimizer step under ZeRO-3, then, each round,
three saves and ``dd`` writing a file of the checkpoint's size, each of the
four in every position of a round in turn (all positions in 4 rounds), so
that none always meets the state of the disk's cache or of the page cache
that another left:

* synchronous: :meth:`CheckpointManager.save` with ``checkpoint.async`` off,
  the trainer's own path (hashing while writing, fsync, rename, `latest`);
  the training loop is blocked for exactly this long;
* ``checkpoint.async`` in the loop: :meth:`CheckpointManager.begin_save`, then
  one training step whose update waits for the host copy, as in training: the
  loop's blocked time is the two waits;
* ``checkpoint.async`` with the loop idle: nothing hides the copy (all of it
  counts as blocked), and the background write (the slowest rank's files) and
  the commit have the machine to themselves: the write's throughput;

then load: :func:`cinescene.train.checkpoint.resume` into a freshly built
engine, minus the time it spends building that engine (choosing and checking
the checkpoint, hashing every file against the manifest, loading shards and
rank states remain), then the same load with ``checkpoint.verify=false``
(sizes checked only), caches dropped again, so the difference is what
verification costs. Once at the start, the
host copy is measured and reserved as the trainer does; once at the end,
``cinescene ckpt export`` of the last checkpoint in this process, with its
peak resident memory.

``dd`` writes (``conv=fsync``) and reads a file of the checkpoint's size in
the same directory, the read after the loads; both reads start cold where the
kernel honours ``posix_fadvise(DONTNEED)`` on clean pages (a tmpfs keeps
them cached: the figures then compare memory copies).

Everything goes into a new directory under ``--dir`` (``bench-checkpoint-*``),
library output included (``logs/bench.log``); it is removed afterwards (but
the run, with ``--keep``), and kept with its log when the ranks fail. Nothing
already under ``--dir`` is touched.
"""

from __future__ import annotations

import gc
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import replace
from pathlib import Path

import torch
from omegaconf import OmegaConf

from cinescene.ckpt.export import export
from cinescene.ckpt.locate import checkpoints_dir
from cinescene.ckpt.manifest import read_manifest
from cinescene.config import ConfigError, load_config
from cinescene.distributed.env import detect
from cinescene.distributed.spawn import spawn_local_ranks
from cinescene.errors import CineSceneError
from cinescene.host_memory import current_rss_bytes, human_bytes
from cinescene.log import send_output_to, setup_logging, verbose
from cinescene.models import build_model

BENCH_LAYERS_MAX = 64


def bench_overrides(state_bytes: float, base: list[str]) -> list[str]:
    """Config overrides for a DiT whose fp32 training state is about ``state_bytes`` (12 B a parameter)."""

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

    Per round, side by side: a synchronous and two ``checkpoint.async`` saves (in the loop: blocked time;
    idle: the background write) and ``dd`` writing a file of the checkpoint's size, in turn first; load
    (resume), ``dd`` reading that file. ``dd`` runs on rank 0 while the other ranks wait, caches dropped
    before each read.
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
        root = checkpoints_dir(cfg)
        synchronous_cfg, background_cfg = replace(cfg.checkpoint), replace(cfg.checkpoint)
        synchronous_cfg.background_write, background_cfg.background_write = False, True
        synchronous = CheckpointManager(root, synchronous_cfg, rank=env.rank, world_size=env.world_size)
        background = CheckpointManager(root, background_cfg, rank=env.rank, world_size=env.world_size)
        built: dict[str, float] = {}

        def make_engine():
            started = time.perf_counter()
            engine = build_engine(cfg, layout, plan, lambda: build_model(cfg.model))
            built["s"] = time.perf_counter() - started
            return engine

        start = resume(cfg, layout, plan, synchronous, make_engine)
        model = cfg.model

        def train_step(before_update=lambda: None) -> None:
            """One optimizer step of the loop: forward, backward, (the save's copy waited for), update."""
            x = torch.randn(1, model.in_dim, 1, 4, 4)
            text = torch.randn(1, model.text_len, model.text_dim)
            start.engine.backward(start.engine(x, torch.tensor([500.0]), text).square().mean())
            before_update()
            start.engine.step()

        train_step()
        rss_before = current_rss_bytes()
        background.prepare_background(start.engine, [], env.local_world_size)
        host_rss_growth = current_rss_bytes() - rss_before
        times: dict[str, list[float]] = {
            key: []
            for key in (
                "save_s",
                "async_blocked_s",
                "async_copy_wait_s",
                "async_unhidden_blocked_s",
                "async_write_s",
                "async_commit_s",
                "async_total_s",
                "load_s",
                "load_unverified_s",
                "dd_write_s",
                "dd_read_s",
            )
        }
        unverified = CheckpointManager(
            root, replace(cfg.checkpoint, verify=False), rank=env.rank, world_size=env.world_size
        )
        dd_file = Path(cfg.run.dir) / "dd-bench.bin"

        def slowest(value: float) -> float:
            tensor = torch.tensor([value], dtype=torch.float64)
            dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
            return float(tensor.item())

        # Saved with every checkpoint as the trainer does: the export at the end builds its model from it.
        config_yaml = OmegaConf.to_yaml(OmegaConf.structured(cfg))

        def save_args(step: int):
            state = TrainState(
                step=step, consumed_samples=step * plan.global_batch_size, max_steps=3 * repeats
            )
            record = start.facts.record(state, "benchmark", None)
            return start.engine, record, rank_state_now(env.rank, CallbackList([])), config_yaml

        def save_synchronously(step: int) -> Path:
            dist.barrier()
            started = time.perf_counter()
            path = synchronous.save(*save_args(step))
            times["save_s"].append(slowest(time.perf_counter() - started))
            return path

        def save_in_the_loop(step: int) -> Path:
            """checkpoint.async as the trainer runs it: the loop's blocked time."""
            dist.barrier()
            background.begin_save(*save_args(step))
            train_step(background.before_update)  # the loop's next step: its update waits for the copy
            path = background.finish()
            figures = background.last_save
            times["async_blocked_s"].append(slowest(figures.blocked_s))
            times["async_copy_wait_s"].append(slowest(figures.copy_wait_s))
            return path

        def save_idle(step: int) -> Path:
            """checkpoint.async with the loop idle: the background write has the machine to itself."""
            dist.barrier()
            background.begin_save(*save_args(step))
            background.before_update()  # nothing to hide the copy behind: all of it counts as blocked
            path = background.finish()
            figures = background.last_save
            times["async_unhidden_blocked_s"].append(slowest(figures.blocked_s))
            times["async_write_s"].append(slowest(figures.write_s))
            times["async_commit_s"].append(slowest(figures.commit_s))
            times["async_total_s"].append(slowest(figures.total_s))
            return path

        def dd_write(size: int) -> None:
            dist.barrier()
            if env.rank == 0:
                times["dd_write_s"].append(_dd(["if=/dev/zero", f"of={dd_file}"], size, "conv=fsync"))

        writes = [save_synchronously, save_in_the_loop, save_idle, dd_write]
        size = 0
        for repeat in range(repeats):
            # The four writes take turns in every position of a round (all of them in 4 rounds): each meets
            # the disk's write cache and the page cache in every state the others leave (a disk that takes
            # a burst into a cache writes the next gigabyte several times slower).
            step = 3 * repeat
            for write in writes[repeat % 4 :] + writes[: repeat % 4]:
                if write is dd_write:
                    dd_write(size)  # round 0 has it last, after the first checkpoint gave its size
                    continue
                step += 1
                path = write(step)
                size = sum(r.size for r in read_manifest(path).values())
            if env.rank == 0:
                _evict([dd_file, *(p for p in path.rglob("*") if p.is_file())])
            _drop_engine(start.engine)  # the next one is built by the load
            start = None
            dist.barrier()
            started = time.perf_counter()
            start = resume(cfg, layout, plan, synchronous, make_engine)
            dist.barrier()
            times["load_s"].append(time.perf_counter() - started - built["s"])
            assert start.state.step == 3 * repeat + 3
            if env.rank == 0:
                times["dd_read_s"].append(_dd([f"if={dd_file}", "of=/dev/null"], size))
                dd_file.unlink()
                _evict([p for p in path.rglob("*") if p.is_file()])
            _drop_engine(start.engine)
            start = None
            dist.barrier()
            started = time.perf_counter()
            start = resume(cfg, layout, plan, unverified, make_engine)
            dist.barrier()
            times["load_unverified_s"].append(time.perf_counter() - started - built["s"])
            dist.barrier()
        host_copy = torch.tensor([background.host_copy_bytes], dtype=torch.float64)
        dist.all_reduce(host_copy, op=dist.ReduceOp.MAX)
        if env.rank == 0:
            figures = {key: statistics.median(values) for key, values in times.items()}
            result.write_text(
                json.dumps(
                    {
                        **figures,
                        "rounds": times,
                        "checkpoint": str(path),
                        "checkpoint_bytes": size,
                        "dd_bytes": _dd_count(size) * 2**20,
                        "repeats": repeats,
                        "parameters": sum(math.prod(s) for s in start.facts.params.values()),
                        "host_copy_bytes": int(host_copy.item()),
                        "host_rss_growth_bytes": host_rss_growth,
                    }
                )
            )
    except (CineSceneError, ConfigError) as exc:  # one line for the command (checkpoint.async's memory)
        if env.rank == 0:
            result.write_text(json.dumps({"error": str(exc)}))
        return 1
    finally:
        destroy_process_group()
    return 0


def _drop_engine(engine) -> None:
    """Free an engine before the next round builds another (a training process builds one only).

    ZeRO-3 keeps every engine's module in a module-level list of DeepSpeed's
    (``parameter_offload.FWD_MODULE_STACK``) and its hooks on the module, so
    without this each round would keep the previous engine's weights and
    optimizer state alive.
    """
    from deepspeed.runtime.zero import parameter_offload

    engine.destroy()
    stack = parameter_offload.FWD_MODULE_STACK
    stack[:] = [module for module in stack if module is not engine.module]
    gc.collect()


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
    try:
        directory.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="bench-checkpoint-", dir=directory))
    except OSError as exc:
        raise CineSceneError(f"--dir {directory}: cannot create a directory there ({exc.strerror})") from None
    log = work / "logs" / "bench.log"
    if not verbose():
        send_output_to(
            log
        )  # DeepSpeed's and torch's chatter, this process's and the ranks' (they inherit it)
        setup_logging("WARNING")  # our warnings stay on the console
    run_dir = work / "run"
    overrides = bench_overrides(state_gb * 1e9, model_overrides(run_dir))
    result = work / "result.json"
    status = spawn_local_ranks(
        [sys.executable, "-m", "cinescene.train.checkpoint_bench", str(result), str(repeats), *overrides],
        nproc,
    )
    if status:  # the benchmark's directory stays, for its log
        stopped = json.loads(result.read_text()).get("error") if result.is_file() else None
        if stopped:
            raise CineSceneError(f"the benchmark stopped: {stopped} (its output is in {log})")
        raise CineSceneError(f"the benchmark ranks failed (exit status {status}); their output is in {log}")
    figures = json.loads(result.read_text())
    exported = export(figures["checkpoint"], work / "export", fmt="diffusers", max_shard_size=export_shard)
    for path in work.iterdir():
        if keep and path == run_dir:
            continue
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    if not keep:
        work.rmdir()
    return {
        **figures,
        "ranks": nproc,
        "directory": str(directory),
        "kept": str(run_dir) if keep else None,
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
    plain_rate = size / r["load_unverified_s"]
    write_rate = size / r["async_write_s"]
    dd_write, dd_read = dd_size / r["dd_write_s"], dd_size / r["dd_read_s"]
    blocked = r["async_blocked_s"] / r["save_s"]
    lines = [
        f"checkpoint bench: {r['parameters']:,} parameters, ZeRO-3 fp32, {r['ranks']} ranks; checkpoint "
        f"{human_bytes(size)} in {r['directory']} (dd on the same disk); median of {r['repeats']} rounds",
        f"{'':34}{'seconds':>9}{'GB/s':>9}{'vs dd':>8}",
        f"{'dd write (fsync)':34}{r['dd_write_s']:9.2f}{dd_write / 1e9:9.3f}",
        f"{'save, synchronous':34}{r['save_s']:9.2f}{save_rate / 1e9:9.3f}{save_rate / dd_write:7.2f}x",
        f"{'save, checkpoint.async: blocked':34}{r['async_blocked_s']:9.2f}",
        f"{'  of which copy wait at update':34}{r['async_copy_wait_s']:9.2f}",
        f"{'  blocked, copy not hidden':34}{r['async_unhidden_blocked_s']:9.2f}",
        f"{'  background write (loop idle)':34}{r['async_write_s']:9.2f}{write_rate / 1e9:9.3f}"
        f"{write_rate / dd_write:7.2f}x",
        f"{'  commit (rank 0)':34}{r['async_commit_s']:9.2f}",
        f"{'  begin to committed':34}{r['async_total_s']:9.2f}",
        f"{'dd read':34}{r['dd_read_s']:9.2f}{dd_read / 1e9:9.3f}",
        f"{'load (resume)':34}{r['load_s']:9.2f}{load_rate / 1e9:9.3f}{load_rate / dd_read:7.2f}x",
        f"{'load, not verified':34}{r['load_unverified_s']:9.2f}{plain_rate / 1e9:9.3f}"
        f"{plain_rate / dd_read:7.2f}x",
        f"verification (the digest of every file against the manifest, the ranks sharing them): "
        f"{r['load_s'] - r['load_unverified_s']:+.2f} s of the load",
        f"training loop blocked by a save: {r['save_s']:.2f} s synchronous, "
        f"{r['async_blocked_s']:.3f} s with checkpoint.async ({blocked:.3f}x)",
        f"checkpoint.async host copy: {human_bytes(r['host_copy_bytes'])} per rank, reserved at start-up "
        f"(resident memory +{human_bytes(r['host_rss_growth_bytes'])})",
        f"export (diffusers, fp32): {r['export_s']:.2f} s, peak RSS {human_bytes(r['export_peak_rss_bytes'])}"
        f"{' (process life-time)' if r['export_peak_is_process_lifetime'] else ''} (at start "
        f"{human_bytes(r['export_start_rss_bytes'])}) for the {human_bytes(size)} checkpoint; shard limit "
        f"{human_bytes(r['export_shard_bytes'])}, largest tensor "
        f"{human_bytes(r['export_largest_tensor_bytes'])}",
    ]
    if r.get("kept"):
        lines.append(f"kept: {r['kept']}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(rank_main(sys.argv[1:]))
