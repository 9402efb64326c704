"""``cinescene bench step``: real training steps at the configured shape, timed, beside the plan's figures.

Each rank builds the engine as `cinescene train` does (random weights: nothing
is loaded) and trains on one random batch at the config's sample shape
(cinescene.plan.batch; no data loading) through the trainer's own step
(:meth:`Trainer.train_step`: forward, backward, DeepSpeed's optimizer step).
A step here is one micro batch per rank (accumulation 1, the global batch
follows from the ranks) unless ``--accum`` says otherwise. After the warm-up
steps (the first builds the optimizer's moments and ZeRO-3's parameter trace):

* time: the median step of the timed steps; tokens/s over all ranks; achieved
  TFLOP/s per device from `cinescene model info`'s FLOPs per sample (MFU
  convention); MFU against the device's peak where known
  (``tracking.peak_tflops`` or the trainer's table);
* memory over the timed steps, rank 0: on a GPU the allocator's peak and what
  was allocated before the steps; on a CPU the resident set's peak (the
  kernel's high-water mark, reset before the steps) and before. Beside them
  the plan's peak and its growth (peak minus what is resident before a step),
  for the same config, ranks and device kind, without the EMA the bench does
  not keep;
* communication, rank 0, one more step with DeepSpeed's communication logger
  on (it synchronises every collective, so it is not timed): bytes sent per
  collective kind against the plan's volume. The logger sees what goes through
  ``deepspeed.comm`` (ZeRO's collectives, Ulysses' all-to-alls); the model's
  own gather of the sequence-parallel output does not (a fraction of a percent
  of the volume).
"""

from __future__ import annotations

import itertools
import json
import statistics
import sys
from dataclasses import replace
from pathlib import Path

from cinescene.host_memory import current_rss_bytes, human_bytes, peak_rss_bytes, reset_peak
from cinescene.run_dir import RunDir

# DeepSpeed's communication logger records the tensor argument's bytes (all-gather's is the rank's shard, the
# others' the whole buffer): per logged operation, the plan's collective and what one rank of n sends as a
# multiple of the logged bytes.
_LOGGED_COLLECTIVES = {
    "all_gather_into_tensor": ("all_gather", lambda n: n - 1),
    "all_gather": ("all_gather", lambda n: n - 1),
    "reduce_scatter_tensor": ("reduce_scatter", lambda n: (n - 1) / n),
    "reduce_scatter": ("reduce_scatter", lambda n: (n - 1) / n),
    "all_reduce": ("all_reduce", lambda n: 2 * (n - 1) / n),
    "all_to_all_single": ("all_to_all", lambda n: (n - 1) / n),
}


# glibc's malloc keeps freed blocks below a threshold that grows with use (to 32 MB) for reuse, so a
# process's resident set would stay at the warm-up steps' high-water mark. A fixed 64 KB threshold gives
# every larger block its own mapping, returned to the system when freed: the resident set then follows the
# live tensors, and a step's growth is measurable on a CPU (no effect on CUDA memory).
# What the launcher passes on to the ranks (SIGINT always is).
FORWARDED_SIGNALS = ("SIGTERM",)
RESIDENT_SET_FOLLOWS_TENSORS = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}


def bench_config(cfg, accum: int):
    """The config a bench step trains: ``accum`` micro batches per step, no EMA (weights are never loaded)."""
    train = replace(
        cfg.train, global_batch_size=None, grad_accum=accum, ema=replace(cfg.train.ema, enabled=False)
    )
    return replace(cfg, train=train)


def _measure_memory(device):
    """(before, peak-reader) of the memory a step adds: the CUDA allocator's, or the resident set's."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device), lambda: torch.cuda.max_memory_allocated(device)
    reset_peak()
    return current_rss_bytes(), peak_rss_bytes


def _comm_bytes(world: int, sequence: int) -> dict[str, int]:
    """Bytes rank 0 sent per collective since the logger was cleared (see _LOGGED_COLLECTIVES)."""
    import deepspeed.comm as ds_comm

    sent: dict[str, int] = {}
    for name, sizes in ds_comm.comms_logger.comms_dict.items():
        logged = next(
            (k for k in sorted(_LOGGED_COLLECTIVES, key=len, reverse=True) if name.startswith(k)), None
        )
        if logged is None:
            continue
        collective, factor = _LOGGED_COLLECTIVES[logged]
        group = sequence if collective == "all_to_all" else world
        for size, record in sizes.items():
            sent[collective] = sent.get(collective, 0) + round(factor(group) * size * record[0])
    return sent


def rank_main(argv: list[str]) -> int:
    """A rank: ``python -m cinescene.train.bench_step RESULT LOGS WARMUP STEPS ACCUM CONFIG [KEY=VALUE]``."""
    import signal

    from cinescene.distributed.spawn import die_with_launcher
    from cinescene.distributed.startup_signals import signal_numbers

    die_with_launcher()
    # Started with the forwarded signals blocked (cinescene.distributed.spawn); a benchmark has nothing to
    # save, so they end it as they would any process.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, signal_numbers(FORWARDED_SIGNALS))
    result, out_dir, warmup, steps, accum, config, *overrides = argv
    warmup, steps, accum = int(warmup), int(steps), int(accum)
    from cinescene.distributed.env import detect, standalone
    from cinescene.log import send_output_to, setup_logging, verbose

    env = detect() or standalone(1)
    if not verbose():
        send_output_to(RunDir(out_dir).rank_log(env.rank))
    setup_logging("WARNING", None, env.rank)

    import deepspeed.comm as ds_comm
    import torch

    from cinescene.config import load_config
    from cinescene.distributed.batching import plan_batch
    from cinescene.distributed.groups import build_layout, destroy_process_group, init_process_group
    from cinescene.models import build_model
    from cinescene.plan.batch import random_batch
    from cinescene.plan.inventory import parameter_inventory

    from .engine import build_engine, use_zero_init
    from .loop import Trainer
    from .objective import FlowMatchingObjective

    cfg = bench_config(load_config(config, overrides)[0], accum)
    init_process_group(env, cfg.parallel.backend, cfg.parallel.timeout_s)
    try:
        layout = build_layout(env, cfg.parallel.sequence)
        batches = plan_batch(cfg.train, env.world_size, cfg.parallel.sequence)
        params = parameter_inventory(cfg.model, cfg.parallel.param_persistence_threshold).total
        engine = build_engine(
            cfg,
            layout,
            batches,
            lambda: build_model(cfg.model, load_weights=False),
            zero_init=use_zero_init(cfg, lambda: params),
        )
        batch = random_batch(cfg, batches.micro_batch_size, seed=layout.dp_rank)
        trainer = Trainer(
            cfg,
            engine=engine,
            layout=layout,
            plan=batches,
            objective=FlowMatchingObjective(cfg.train, cfg.model),
            batches=itertools.repeat(batch),
            checkpoints=None,
            callbacks=None,
            state=None,
            facts=None,
            wandb_run_id=lambda: None,
            config_yaml="",
        )
        for step in range(1, warmup + 1):
            trainer.train_step(step)
        before, peak = _measure_memory(engine.device)
        times = [trainer.train_step(warmup + i).step_time_s for i in range(1, steps + 1)]
        peak_bytes = peak()
        ds_comm.configure(enabled=True, prof_all=True, verbose=False)
        ds_comm.comms_logger.comms_dict.clear()
        trainer.train_step(warmup + steps + 1)
        ds_comm.configure(enabled=False)
        sent = _comm_bytes(env.world_size, cfg.parallel.sequence)
        if env.rank == 0:
            Path(result).write_text(
                json.dumps(
                    {
                        "device": torch.cuda.get_device_name() if engine.device.type == "cuda" else "cpu",
                        "step_times_s": times,
                        "memory_before_bytes": before,
                        "memory_peak_bytes": peak_bytes,
                        "comm_sent_bytes": sent,
                        "micro_batch": batches.micro_batch_size,
                        "grad_accum": batches.grad_accum,
                        "data_parallel": batches.dp_size,
                    }
                )
            )
    finally:
        destroy_process_group()
    return 0


def run(
    *, config: str, overrides: list[str], nproc: int, warmup: int, steps: int, accum: int, out: Path
) -> dict:
    """Run the ranks, then put the plan's figures beside what they measured (see :func:`format_report`)."""
    from cinescene.config import load_config
    from cinescene.distributed.spawn import spawn_local_ranks
    from cinescene.errors import CineSceneError
    from cinescene.plan import build_plan
    from cinescene.plan.planner import configured_layout

    from .metrics import device_peak_tflops

    cfg = bench_config(load_config(config, overrides)[0], accum)
    result = out / "bench_step.json"
    try:
        out.mkdir(parents=True, exist_ok=True)
        result.unlink(missing_ok=True)
    except OSError as exc:
        raise CineSceneError(f"cannot write the figures into --out {out}: {exc.strerror or exc}") from None
    argv = [sys.executable, "-m", "cinescene.train.bench_step", str(result), str(out)]
    argv += [str(warmup), str(steps), str(accum), config, *overrides]
    status = spawn_local_ranks(argv, nproc, forward=FORWARDED_SIGNALS, extra_env=RESIDENT_SET_FOLLOWS_TENSORS)
    if status or not result.is_file():
        raise CineSceneError(
            f"the benchmark ranks failed (exit status {status}); their output is in {RunDir(out).logs}"
        )
    measured = json.loads(result.read_text())
    on_gpu = measured["device"] != "cpu"
    device_bytes = _device_bytes() if on_gpu else 0
    plan = build_plan(cfg, nproc, device_bytes or 10**15, on_gpu=on_gpu)
    layout = configured_layout(cfg, nproc)
    memory, time = plan.memory, plan.time
    step_s = statistics.median(measured["step_times_s"])
    samples = layout.global_batch
    flops = plan.inputs.flops.training
    achieved = flops * samples / step_s / nproc / 1e12
    peak = cfg.tracking.peak_tflops or (
        device_peak_tflops(cfg.train.precision, measured["device"]) if on_gpu else None
    )
    planned_sent = {t.collective.value: 0 for t in time.traffic}
    for t in time.traffic:
        planned_sent[t.collective.value] += t.wire_bytes
    growth = measured["memory_peak_bytes"] - measured["memory_before_bytes"]
    report = {
        "config": config,
        "overrides": overrides,
        "device": measured["device"],
        "ranks": nproc,
        "precision": cfg.train.precision,
        "zero_stage": cfg.parallel.zero_stage,
        "micro_batch": layout.micro_batch,
        "grad_accum": layout.grad_accum,
        "sequence_parallel": layout.sequence,
        "warmup_steps": warmup,
        "step_times_s": measured["step_times_s"],
        "step_s": step_s,
        "tokens_per_sample": plan.inputs.tokens.total,
        "tokens_per_s": plan.inputs.tokens.total * samples / step_s,
        "flops_per_sample": flops,
        "achieved_tflops": achieved,
        "device_peak_tflops": peak,
        "mfu": achieved / peak if peak else None,
        "memory_measured": "cuda allocator" if on_gpu else "resident set",
        "memory_before_bytes": measured["memory_before_bytes"],
        "memory_peak_bytes": measured["memory_peak_bytes"],
        "memory_growth_bytes": growth,
        "planned_peak_bytes": memory.peak,
        "planned_growth_bytes": memory.growth,
        "growth_ratio": growth / memory.growth,
        "peak_ratio": measured["memory_peak_bytes"] / memory.peak if on_gpu else None,
        "comm_sent_bytes": measured["comm_sent_bytes"],
        "planned_comm_sent_bytes": planned_sent,
        "comm_ratio": sum(measured["comm_sent_bytes"].values()) / sum(planned_sent.values())
        if sum(planned_sent.values())
        else None,  # one rank: nothing to send
        "planned_step_s": time.step_s,
        "log_dir": str(RunDir(out).logs),
    }
    result.write_text(json.dumps(report, sort_keys=True))
    return report


def _device_bytes() -> int:
    import torch

    return torch.cuda.get_device_properties(0).total_memory


def format_report(r: dict) -> str:
    size = human_bytes
    mfu = (
        f"{r['mfu']:.1%}"
        if r["mfu"] is not None
        else "n/a (no peak known for this device: tracking.peak_tflops)"
    )
    each = ", ".join(f"{t:.3f}" for t in r["step_times_s"])
    lines = [
        f"bench step: {r['config']} on {r['ranks']} {r['device']} rank(s), {r['precision']}, "
        f"ZeRO-{r['zero_stage']}, micro batch {r['micro_batch']} x accumulation {r['grad_accum']}, "
        f"sequence parallel {r['sequence_parallel']}; median of {len(r['step_times_s'])} steps after "
        f"{r['warmup_steps']} warm-up",
        f"step time      {r['step_s']:.3f} s (each: {each})",
        f"tokens/s       {r['tokens_per_s']:,.0f} ({r['tokens_per_sample']:,} tokens per sample)",
        f"achieved       {r['achieved_tflops']:.4g} TFLOP/s per device ({r['flops_per_sample'] / 1e12:.4g} "
        f"TFLOP per sample, model FLOPs); MFU {mfu}",
        f"memory ({r['memory_measured']}, rank 0): {size(r['memory_before_bytes'])} before the steps, "
        f"peak {size(r['memory_peak_bytes'])}",
        f"  growth during a step: measured {size(r['memory_growth_bytes'])}, planned "
        f"{size(r['planned_growth_bytes'])}: measured/planned {r['growth_ratio']:.3f}",
    ]
    if r["peak_ratio"] is not None:
        lines.append(
            f"  peak: measured {size(r['memory_peak_bytes'])}, planned {size(r['planned_peak_bytes'])}: "
            f"measured/planned {r['peak_ratio']:.3f}"
        )
    measured, planned = r["comm_sent_bytes"], r["planned_comm_sent_bytes"]
    if r["comm_ratio"] is None:
        lines.append("communication: none (one rank)")
    else:
        lines.append(
            f"communication per step, rank 0 (DeepSpeed's comms logger): sent "
            f"{size(sum(measured.values()))}, planned {size(sum(planned.values()))}: measured/planned "
            f"{r['comm_ratio']:.3f}"
        )
        for kind in sorted(set(measured) | set(planned)):
            got, want = size(measured.get(kind, 0)), size(planned.get(kind, 0))
            lines.append(f"  {kind:<16} measured {got:>10}  planned {want:>10}")
    lines.append(f"planned step time at plan.achieved_tflops: {r['planned_step_s']:.3g} s (a GPU figure)")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(rank_main(sys.argv[1:]))
