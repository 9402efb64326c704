"""`cinescene plan`'s output: one JSON object (``--json``) and the text made from the same numbers."""

from __future__ import annotations

from .build import Plan
from .memory import RankMemory, kept_blocks
from .planner import Layout, StepTime

GB = 1e9


def _layout_dict(layout: Layout | None) -> dict | None:
    if layout is None:
        return None
    return {
        "gpus": layout.gpus,
        "micro_batch": layout.micro_batch,
        "sequence_parallel": layout.sequence,
        "grad_accum": layout.grad_accum,
        "data_parallel": layout.data_parallel,
        "global_batch": layout.global_batch,
    }


def _memory_dict(memory: RankMemory | None) -> dict | None:
    if memory is None:
        return None
    states, working, acts = memory.states, memory.working, memory.activations
    return {
        "parameters": states.parameters,
        "gradients": states.gradients,
        "optimizer": states.optimizer,
        "largest_layer": states.largest_layer,
        "model_states": states.device,
        "persistent_parameters": working.persistent,
        "gathered_reuse_window": working.reuse_window,
        "gathered_prefetch": working.prefetch,
        "reduce_bucket": working.reduce_bucket,
        "ema": memory.ema,
        "activations": {
            "peak": acts.peak,
            "backward_peak": acts.backward_peak,
            "forward_peak": acts.forward_peak,
            "batch": acts.batch,
            "saved_before_blocks": acts.saved_before_blocks,
            "per_block": acts.per_block,
            "blocks": acts.num_blocks * acts.per_block,
            "block_recomputed": acts.block_saved if acts.recompute else 0,
            "backward_transient": acts.backward_transient,
            "attention_workspace": acts.attention_workspace,
            "head": acts.head,
            "scene_encoder_forward": acts.scene_encoder,
        },
        "step_extra": memory.step_extra,
        "resident": memory.resident,
        "backward_peak": memory.backward_peak,
        "step_peak": memory.step_peak,
        "peak": memory.peak,
        "growth": memory.growth,
        "host_offloaded": states.host,
    }


def _time_dict(time: StepTime | None) -> dict | None:
    if time is None:
        return None
    return {
        "compute_s": time.compute_s,
        "zero_comm_s": time.zero_comm_s,
        "exposed_comm_s": time.exposed_comm_s,
        "sequence_comm_s": time.sequence_comm_s,
        "step_s": time.step_s,
        "wire_bytes": time.wire_bytes,
        "traffic": [
            {
                "what": t.what,
                "collective": t.collective.value,
                "bytes": t.size,
                "count": t.count,
                "ranks": t.group,
                "wire_bytes": t.wire_bytes,
            }
            for t in time.traffic
        ],
    }


def plan_dict(plan: Plan) -> dict:
    """Everything the text shows, in bytes and seconds."""
    cfg, inv, inputs = plan.cfg, plan.inputs.inventory, plan.inputs
    steps = cfg.train.max_steps
    out = {
        "model": cfg.model.name,
        "gpus": plan.gpus,
        "gpus_per_node": inputs.gpus_per_node,
        "device_bytes": plan.device_bytes,
        "usable_bytes": plan.fit.usable,
        "precision": cfg.train.precision,
        "zero_stage": cfg.parallel.zero_stage,
        "activation_checkpointing": cfg.model.activation_checkpointing,
        "attention_backend": inputs.backend.value,
        "parameters": {"trainable": inv.trainable, "frozen": inv.frozen, "total": inv.total},
        "tokens": {
            "video": inputs.tokens.video,
            "context": inputs.tokens.context,
            "total": inputs.tokens.total,
        },
        "flops_per_sample": inputs.flops.training,
        "layout": _layout_dict(plan.layout),
        "memory": _memory_dict(plan.memory),
        "deepspeed_estimate": plan.deepspeed_estimate,
        "fits": plan.fit.configured_fits,
        "headroom_bytes": plan.fit.usable - plan.memory.peak if plan.memory else None,
        "best": _layout_dict(plan.fit.best),
        "best_peak_bytes": plan.fit.best_memory.peak if plan.fit.best_memory else None,
        "fixes": plan.fit.fixes,
        "host_loader_bytes": plan.host_loader_bytes,
        "sampling": {
            "weights_bytes": plan.sampling.weights,
            "context_cache_per_branch_bytes": plan.sampling.cache_per_branch,
            "context_cache_cacheable": plan.sampling.cacheable,
        },
        "achieved_tflops": plan.tflops,
        "time": _time_dict(plan.time),
        "scaling": [
            {
                "nodes": row.nodes,
                "gpus": row.layout.gpus,
                "global_batch": row.layout.global_batch,
                "compute_s": row.time.compute_s,
                "comm_s": row.time.comm_s,
                "step_s": row.time.step_s,
                "samples_per_s": row.samples_per_s,
                "efficiency": row.efficiency,
            }
            for row in plan.scaling
        ],
        "communication_dominates_from_nodes": plan.communication_dominates_nodes,
    }
    if plan.layout and plan.time:
        out["flops_per_step"] = inputs.flops.training * plan.layout.global_batch
        out["time_per_1k_steps_s"] = 1000 * plan.time.step_s
        out["max_steps"] = steps
        out["gpu_hours"] = steps * plan.time.step_s * plan.gpus / 3600
    if plan.budget:
        b = plan.budget
        out["checkpoint"] = {
            "rank_bytes": b.rank_bytes,
            "total_bytes": b.total_bytes,
            "node_bytes": b.node_bytes,
            "write_gbps": cfg.plan.checkpoint_write_gbps,
            "save_s": b.save_s,
            "step_s": b.step_s,
            "signal_lead_s": b.lead_s,
            "fits_lead": b.fits,
        }
    return out


def _size(value: float) -> str:
    """Bytes as GB with two decimals; below 10 MB in MB, so small configs do not read as zero."""
    return f"{value / GB:.2f} GB" if abs(value) >= 1e7 or value == 0 else f"{value / 1e6:.2f} MB"


def _rows(rows: list[tuple[str, str]], indent: str = "  ") -> list[str]:
    width = max(len(k) for k, _ in rows)
    return [f"{indent}{k:<{width}}  {v:>11}" for k, v in rows]


def _memory_lines(plan: Plan, memory: RankMemory, layout: Layout) -> list[str]:
    cfg, inv = plan.cfg, plan.inputs.inventory
    states, working, acts = memory.states, memory.working, memory.activations
    dtype = cfg.train.precision
    par = cfg.parallel
    partitions = " partitions" if par.zero_stage == 3 else ""
    rows = [
        (f"parameters ({dtype}{partitions}, frozen included)", _size(states.parameters)),
        ("gradients (fp32, as the optimizer step takes them)", _size(states.gradients)),
        ("optimizer (fp32 master weights, Adam moments)", _size(states.optimizer)),
    ]
    if states.largest_layer:
        largest = f"largest layer gathered with its gradient ({inv.largest_layer:,} elements)"
        rows.append((largest, _size(states.largest_layer)))
    rows.append(("= model states", _size(states.device)))
    if par.zero_stage == 3:
        kept = kept_blocks(inv, acts.recompute)
        threshold = par.param_persistence_threshold
        rows += [
            (f"persistent parameters (<= {threshold:,} elements, whole)", _size(working.persistent)),
            (
                f"gathered: last {kept} of {inv.num_blocks} blocks, kept into the backward",
                _size(working.reuse_window),
            ),
            ("gathered: prefetch", _size(working.prefetch)),
        ]
    rows.append(("gradient reduce bucket", _size(working.reduce_bucket)))
    if memory.ema:
        rows.append(("EMA (fp32 shard, train.ema)", _size(memory.ema)))
    rows += [
        ("activations at the backward's peak", _size(acts.backward_peak)),
        ("  micro batch on the device", _size(acts.batch)),
        ("  saved before the blocks (embeddings, projector, RoPE)", _size(acts.saved_before_blocks)),
        (
            f"  {acts.num_blocks} blocks' {'inputs (checkpoints)' if acts.recompute else 'saved tensors'}",
            _size(acts.num_blocks * acts.per_block),
        ),
    ]
    if acts.recompute:
        rows.append(("  one block recomputed", _size(acts.block_saved)))
    rows += [
        ("  gradient and temporaries of the block's backward", _size(acts.backward_transient)),
        (f"attention workspace ({plan.inputs.backend.value})", _size(acts.attention_workspace)),
        ("peak (forward and backward)", _size(memory.backward_peak)),
        ("peak during the optimizer step", _size(memory.step_peak)),
    ]
    head = (
        f"memory per GPU (micro batch {layout.micro_batch}, sequence parallel {layout.sequence}, "
        f"accumulation {layout.grad_accum})"
    )
    lines = [head, *_rows(rows)]
    if states.host:
        lines.append(f"  host memory per GPU for offloaded states: {_size(states.host)}")
    return lines


def _verdict_lines(plan: Plan) -> list[str]:
    f = plan.fit
    lines = []
    if f.configured is None:
        lines.append(
            f"verdict: the configured batch does not divide over {plan.gpus} GPUs "
            f"(train.global_batch_size / micro batch / parallel.sequence)"
        )
    elif f.configured_fits:
        lines.append(
            f"verdict: FITS: peak {_size(f.configured_memory.peak)} of {_size(f.usable)} usable, "
            f"headroom {_size(f.usable - f.configured_memory.peak)}"
        )
    else:
        over = f.configured_memory.peak - f.usable
        lines.append(
            f"verdict: DOES NOT FIT: peak {_size(f.configured_memory.peak)}, {_size(over)} over the "
            f"{_size(f.usable)} usable"
        )
        lines.append(
            "  each of these fits: " + ", ".join(f.fixes) if f.fixes else "  no single change makes it fit"
        )
    if f.best:
        lines.append(
            f"  smallest sequence-parallel degree that fits: {f.best.sequence}, largest micro batch there "
            f"{f.best.micro_batch} (peak {_size(f.best_memory.peak)}, headroom "
            f"{_size(f.usable - f.best_memory.peak)})"
        )
    elif f.possible:
        lines.append(f"  no micro batch and sequence-parallel degree fits {plan.gpus} GPUs")
    else:
        lines.append(
            f"  no micro batch and sequence-parallel degree divides train.global_batch_size="
            f"{plan.cfg.train.global_batch_size} over {plan.gpus} GPUs"
        )
    return lines


def _time_lines(plan: Plan) -> list[str]:
    cfg, time, layout = plan.cfg, plan.time, plan.layout
    flops = plan.inputs.flops.training
    hours = cfg.train.max_steps * time.step_s / 3600
    return [
        f"step time at {plan.tflops:g} achieved TFLOP/s per GPU (assumed: plan.achieved_tflops, --tflops)",
        f"  FLOPs per sample {flops / 1e15:.4g} PFLOP (cinescene model info); per step (global batch "
        f"{layout.global_batch}) {flops * layout.global_batch / 1e15:.4g} PFLOP",
        f"  compute {time.compute_s:.3g} s; ZeRO communication {time.zero_comm_s:.3g} s (overlapped but "
        f"{time.exposed_comm_s:.3g} s); "
        f"sequence-parallel all-to-all {time.sequence_comm_s:.3g} s; {_size(time.wire_bytes)} sent per GPU",
        f"  step {time.step_s:.3g} s; 1k steps {1000 * time.step_s / 3600:.3g} h; "
        f"{cfg.train.max_steps:,} steps (train.max_steps) {hours:.3g} h = {hours * plan.gpus:,.4g} GPU-hours",
    ]


def _budget_lines(plan: Plan) -> list[str]:
    b, cfg = plan.budget, plan.cfg
    verdict = "OK" if b.fits else "TOO SHORT: raise the lead (launch.slurm.signal) or save faster"
    return [
        f"preemption: checkpoint {_size(b.rank_bytes)} per rank ({_size(b.total_bytes)} in all); a save "
        f"{b.save_s:.3g} s at {cfg.plan.checkpoint_write_gbps:g} GB/s per node (plan.checkpoint_write_gbps)",
        f"  launch.slurm.signal={cfg.launch.slurm.signal}: {b.lead_s} s lead for up to a step and the save "
        f"({b.needed_s:.3g} s): {verdict}",
    ]


def _scaling_lines(plan: Plan) -> list[str]:
    if not plan.scaling:
        return ["scaling: none (the sequence-parallel degree does not divide a node's GPUs)"]
    lines = [
        "scaling at this work per GPU (global batch grows with the nodes)",
        f"  {'nodes':>5} {'GPUs':>5} {'batch':>6} {'compute s':>9} {'comm s':>7} {'step s':>7} "
        f"{'samples/s':>9} {'efficiency':>10}",
    ]
    for row in plan.scaling:
        time, layout = row.time, row.layout
        lines.append(
            f"  {row.nodes:>5} {layout.gpus:>5} {layout.global_batch:>6} {time.compute_s:>9.2f} "
            f"{time.comm_s:>7.2f} {time.step_s:>7.2f} {row.samples_per_s:>9.3f} {row.efficiency:>10.1%}"
        )
    nodes = plan.communication_dominates_nodes
    lines.append(
        f"  communication outlasts compute from {nodes} nodes"
        if nodes
        else "  communication stays below compute up to 4096 nodes"
    )
    return lines


def format_plan(plan: Plan, config: str) -> str:
    cfg, inv, inputs = plan.cfg, plan.inputs.inventory, plan.inputs
    tokens = inputs.tokens
    lines = [
        f"cinescene plan: {config} on {plan.gpus} GPUs of {_size(plan.device_bytes)} "
        f"({_size(plan.fit.usable)} usable: {cfg.plan.fragmentation:.0%} fragmentation, "
        f"{cfg.plan.reserve_gb:g} GB reserve; {inputs.gpus_per_node} per node)",
        f"model {cfg.model.name}: {inv.total:,} parameters ({inv.trainable:,} trained, "
        f"{inv.frozen:,} frozen); {tokens.total:,} tokens per sample ({tokens.video:,} video + "
        f"{tokens.context:,} context); "
        f"{cfg.train.precision}, ZeRO-{cfg.parallel.zero_stage}, activation checkpointing "
        f"{'on' if cfg.model.activation_checkpointing else 'off'}, attention {inputs.backend.value}",
        "",
    ]
    if plan.memory is not None:
        lines += _memory_lines(plan, plan.memory, plan.layout)
        if cfg.parallel.zero_stage == 3 and cfg.parallel.offload_optimizer == "none":
            lines.append(
                f"  (DeepSpeed's estimate_zero3_model_states_mem_needs for this model and {plan.gpus} GPUs, "
                f"every parameter counted as trained: {_size(plan.deepspeed_estimate)})"
            )
        lines.append("")
    lines += _verdict_lines(plan)
    lines.append(
        f"host memory per rank: loader buffers {_size(plan.host_loader_bytes)} "
        f"(data.num_workers x 2 prefetched micro batches and the one in use)"
    )
    s = plan.sampling
    lines.append(
        f"sampling on one GPU: weights {_size(s.weights)}; context K/V cache "
        f"{_size(s.cache_per_branch)} per guidance branch, {_size(2 * s.cache_per_branch)} for two"
        + (
            ""
            if s.cacheable
            else " (the cache needs model.attention.mask=context_readonly, scene.timestep=clean)"
        )
    )
    lines.append("")
    if plan.time:
        lines += _time_lines(plan) + [""] + _budget_lines(plan) + [""]
    lines += _scaling_lines(plan)
    return "\n".join(lines) + "\n"
