"""`cinescene bench loader`: can the loader keep up with training?

For each DataLoader worker count it times ``batches`` micro-batches of one
rank (after one warm-up batch, which includes starting the workers) and
compares the rank's samples/s with what one rank consumes (with ``against``,
the same for a second copy of the data, e.g. on object storage, timed in the
same run, alternating with the first per worker count):
``micro_batch_size * grad_accum / step_time`` samples/s, ``step_time`` being
seconds per optimizer step -- given with ``--step-time`` (read it off the
trainer's logs) or measured here as forward + backward of the configured
model on one loader batch (CPU, no optimizer; a lower bound on a real step).
"""

from __future__ import annotations

import dataclasses
import statistics
import time

import torch

from cinescene.errors import CineSceneError
from cinescene.models import build_model

from .ensure import ensure_dataset
from .loader import build_train_loader
from .manifest import load_manifest


def loader_rate(cfg, workers: int, batches: int, world_size: int, shards: str | None = None) -> float:
    """Samples/s one rank's loader delivers with ``workers`` DataLoader workers (from ``shards``, default
    data.train_shards)."""
    data = dataclasses.replace(cfg.data, num_workers=workers, train_shards=shards or cfg.data.train_shards)
    micro = cfg.train.micro_batch_size
    loader = build_train_loader(
        data, cfg.model, rank=0, world_size=world_size, seed=cfg.run.seed, micro_batch_size=micro
    )
    batches_iter = iter(loader)
    next(batches_iter)
    start = time.perf_counter()
    for _ in range(batches):
        next(batches_iter)
    return batches * micro / (time.perf_counter() - start)


def measured_step_time(cfg, world_size: int) -> float:
    """Seconds of forward + backward of the model on one micro-batch (median of 5), times grad_accum."""
    try:
        model = build_model(cfg.model)
        batch = next(
            iter(
                build_train_loader(
                    cfg.data,
                    cfg.model,
                    rank=0,
                    world_size=world_size,
                    seed=0,
                    micro_batch_size=cfg.train.micro_batch_size,
                )
            )
        )
        timestep = torch.full((batch["video"].shape[0],), 500.0)

        def step():
            out = model(
                batch["video"],
                timestep,
                batch["text"],
                cameras=batch["cameras"],
                scene_images=batch["scene_images"],
                scene_latents=batch["scene_latents"],
                scene_counts=batch["scene_counts"],
            )
            out.float().pow(2).mean().backward()

        step()
        times = []
        for _ in range(5):  # the median: a shared machine's hiccups hit single steps
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
        return statistics.median(times) * cfg.train.grad_accum
    except CineSceneError:
        raise
    except Exception as exc:  # the model package may be absent or differ; the user can give the time
        raise CineSceneError(
            f"cannot time a training step here ({type(exc).__name__}: {exc}); "
            "pass --step-time SECONDS".splitlines()[0]
        ) from None


def bench_loader(
    cfg,
    workers: list[int],
    batches: int = 20,
    step_time: float | None = None,
    world_size: int | None = None,
    against: str | None = None,
) -> dict:
    shards = ensure_dataset(cfg.data)
    if against is not None:
        _check_same_data(shards, against, cfg.data.object_store)
    world = world_size or cfg.launch.nproc
    if step_time is None:
        step_time, source = measured_step_time(cfg, world), "measured (model forward+backward, CPU)"
    else:
        source = "given"
    needed = cfg.train.micro_batch_size * cfg.train.grad_accum / step_time
    rows, other = [], []
    for count in workers:
        rate = loader_rate(cfg, count, batches, world)
        rows.append(
            {
                "workers": count,
                "samples_per_s": rate,
                "per_worker": rate / max(count, 1),
                "headroom": rate / needed,
            }
        )
        if against is not None:
            rate = loader_rate(cfg, count, batches, world, against)
            other.append(
                {
                    "workers": count,
                    "samples_per_s": rate,
                    "per_worker": rate / max(count, 1),
                    "headroom": rate / needed,
                    "vs_shards": rate / rows[-1]["samples_per_s"],
                }
            )
    result = {
        "shards": str(shards),
        "step_time_s": step_time,
        "step_time_source": source,
        "needed_samples_per_s": needed,
        "world_size": world,
        "micro_batch_size": cfg.train.micro_batch_size,
        "rows": rows,
    }
    if against is not None:
        result["against"] = {"shards": against, "rows": other}
    return result


def _check_same_data(shards, against: str, retry) -> None:
    """``against`` must hold the same samples as data.train_shards: the comparison is of storage only."""
    mine, theirs = load_manifest(shards, retry), load_manifest(against, retry)
    if [s["sha256"] for s in mine.data["shards"]] != [s["sha256"] for s in theirs.data["shards"]]:
        raise CineSceneError(
            f"--against {against} holds other shards than data.train_shards={shards}: "
            "compare two copies of the same data (`cinescene data prepare` into both)"
        )


def format_bench(result: dict) -> str:
    lines = [
        f"one rank consumes {result['needed_samples_per_s']:.2f} samples/s "
        f"(micro batch {result['micro_batch_size']}, step {result['step_time_s']:.3f} s, "
        f"{result['step_time_source']}; world size {result['world_size']})"
    ]
    tables = [(result["shards"], result["rows"])]
    if "against" in result:
        tables.append((result["against"]["shards"], result["against"]["rows"]))
    for shards, rows in tables:
        lines += [f"from {shards}:", f"{'workers':>8} {'samples/s':>10} {'per worker':>11} {'vs needed':>10}"]
        for row in rows:
            verdict = "ok" if row["headroom"] >= 1.0 else "TOO SLOW"
            versus = f"  ({row['vs_shards']:.2f}x the first)" if "vs_shards" in row else ""
            lines.append(
                f"{row['workers']:>8} {row['samples_per_s']:>10.1f} {row['per_worker']:>11.1f} "
                f"{row['headroom']:>9.1f}x  {verdict}{versus}"
            )
    return "\n".join(lines)
