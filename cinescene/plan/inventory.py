"""What the plan needs to know about the parameters, read off the model built on the meta device.

The meta device holds shapes only (no memory, no initialisation), so this is
the same model `cinescene model info` counts and the trainer builds, at any
size, in a second or two. DeepSpeed decides three things per parameter that
the memory and communication figures depend on, and they are read here the
way DeepSpeed reads them:

* trainable or frozen (``requires_grad`` after ``model.trainable``/``frozen``):
  frozen parameters get no gradient and no optimizer state;
* persistent under ZeRO-3 (``ds_numel <= stage3_param_persistence_threshold``,
  DeepSpeed's ``mark_persistent_parameters``): kept whole on every rank, never
  gathered;
* the largest "layer": the most parameters one module holds directly
  (DeepSpeed's ``model_to_params``, which its memory estimator uses).

ZeRO-3 gathers the rest module by module, in the order the forward and the
backward use them; the parameters are grouped here by where they are used
(:class:`Region`), which is what decides whether they are gathered again in
the backward (cinescene.plan.comms).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from cinescene.config.model import ModelConfig

# The prefix of the DiT blocks' parameters: the unit activation checkpointing recomputes and
# ZeRO-3's parameter reuse works in.
BLOCK_PREFIX = "blocks."
# The output head: the last module of the forward, the first of the backward.
HEAD_PREFIX = "head."
# The scene encoder's VGGT: run without autograd while none of it trains, so never in the backward.
VGGT_PREFIX = "scene_encoder.vggt."


class Region(str, Enum):
    """Where in the step a parameter is used."""

    BEFORE_BLOCKS = "before_blocks"  # embeddings, scene projector: the forward's start, the backward's end
    BLOCKS = "blocks"
    HEAD = "head"  # the forward's end, the backward's start
    FORWARD_ONLY = "forward_only"  # a frozen VGGT: no backward at all


@dataclass(frozen=True)
class Gathered:
    """Elements ZeRO-3 gathers in one region, and how many modules hold them (one gather each)."""

    elements: int
    modules: int


@dataclass(frozen=True)
class ParameterInventory:
    trainable: int  # elements of parameters that train
    frozen: int  # elements of frozen parameters (VGGT by default)
    largest_layer: int  # most elements one module holds directly (DeepSpeed's model_to_params)
    largest_trainable: int  # elements of the largest trainable parameter (the engine's SP reduce bucket)
    num_blocks: int
    block: int  # elements of one DiT block (all blocks have the same)
    block_persistent: int  # of which persistent under ZeRO-3
    persistent_trainable: int  # elements of trainable parameters below the persistence threshold
    persistent_frozen: int
    vggt_trains: bool  # any VGGT parameter trains (then VGGT runs under autograd, in the backward too)
    gathered: dict[Region, Gathered]  # ZeRO-3's gathered (non-persistent) parameters by region

    @property
    def total(self) -> int:
        return self.trainable + self.frozen

    @property
    def persistent(self) -> int:
        return self.persistent_trainable + self.persistent_frozen

    @property
    def block_gathered(self) -> int:
        return self.block - self.block_persistent


def _region(name: str, vggt_trains: bool) -> Region:
    if name.startswith(BLOCK_PREFIX):
        return Region.BLOCKS
    if name.startswith(HEAD_PREFIX):
        return Region.HEAD
    if name.startswith(VGGT_PREFIX) and not vggt_trains:
        return Region.FORWARD_ONLY
    return Region.BEFORE_BLOCKS


def parameter_inventory(model_cfg: ModelConfig, persistence_threshold: int) -> ParameterInventory:
    """The inventory of ``model_cfg``'s network (built on the meta device: nothing allocated)."""
    from cinescene.models import build_model
    from cinescene.models.zero import full_numel

    model = build_model(model_cfg, device="meta")
    vggt_trains = any(p.requires_grad for n, p in model.named_parameters() if n.startswith(VGGT_PREFIX))
    trainable = frozen = largest_trainable = largest_layer = 0
    persistent = {True: 0, False: 0}
    per_block: dict[str, list[int]] = {}
    gathered = {region: [0, 0] for region in Region}
    for module_name, module in model.named_modules():
        own = list(module.named_parameters(recurse=False))
        largest_layer = max(largest_layer, sum(full_numel(p) for _, p in own))
        regions_used = set()
        for short, param in own:
            name = f"{module_name}.{short}" if module_name else short
            numel, trains = full_numel(param), param.requires_grad
            trainable += numel if trains else 0
            frozen += 0 if trains else numel
            largest_trainable = max(largest_trainable, numel if trains else 0)
            if name.startswith(BLOCK_PREFIX):
                sizes = per_block.setdefault(name.split(".", 2)[1], [0, 0])
                sizes[0] += numel
                sizes[1] += numel if numel <= persistence_threshold else 0
            if numel <= persistence_threshold:
                persistent[trains] += numel
                continue
            region = _region(name, vggt_trains)
            gathered[region][0] += numel
            regions_used.add(region)
        for region in regions_used:
            gathered[region][1] += 1
    block, block_persistent = next(iter(per_block.values()), (0, 0))
    return ParameterInventory(
        trainable=trainable,
        frozen=frozen,
        largest_layer=largest_layer,
        largest_trainable=largest_trainable,
        num_blocks=len(per_block),
        block=block,
        block_persistent=block_persistent,
        persistent_trainable=persistent[True],
        persistent_frozen=persistent[False],
        vggt_trains=vggt_trains,
        gathered={region: Gathered(*counts) for region, counts in gathered.items()},
    )
