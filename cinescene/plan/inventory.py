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
"""

from __future__ import annotations

from dataclasses import dataclass

from cinescene.config.model import ModelConfig

# The prefix of the DiT blocks' parameters: the unit activation checkpointing recomputes and
# ZeRO-3's parameter reuse works in.
BLOCK_PREFIX = "blocks."
# The scene encoder's VGGT: run without autograd while none of it trains, so never in the backward.
VGGT_PREFIX = "scene_encoder.vggt."


@dataclass(frozen=True)
class ParameterInventory:
    trainable: int  # elements of parameters that train
    frozen: int  # elements of frozen parameters (VGGT by default): forward only
    largest_layer: int  # most elements one module holds directly (DeepSpeed's model_to_params)
    largest_trainable: int  # elements of the largest trainable parameter (the engine's SP reduce bucket)
    num_blocks: int
    block: int  # elements of one DiT block (all blocks have the same)
    block_persistent: int  # of which persistent under ZeRO-3
    persistent_trainable: int  # elements of trainable parameters below the persistence threshold
    persistent_frozen: int
    vggt_trains: bool  # any VGGT parameter trains (then VGGT runs under autograd)
    forward_only: int  # elements used by the forward only (a frozen VGGT), persistent ones excluded
    gathered_modules: int  # modules holding a parameter ZeRO-3 gathers (one collective each, at most)
    forward_only_modules: int

    @property
    def total(self) -> int:
        return self.trainable + self.frozen

    @property
    def persistent(self) -> int:
        return self.persistent_trainable + self.persistent_frozen


def parameter_inventory(model_cfg: ModelConfig, persistence_threshold: int) -> ParameterInventory:
    """The inventory of ``model_cfg``'s network (built on the meta device: nothing allocated)."""
    from cinescene.models import build_model
    from cinescene.models.zero import full_numel

    model = build_model(model_cfg, device="meta")
    vggt_trains = any(p.requires_grad for n, p in model.named_parameters() if n.startswith(VGGT_PREFIX))
    trainable = frozen = largest_trainable = forward_only = 0
    persistent = {True: 0, False: 0}
    per_block: dict[str, list[int]] = {}
    for name, param in model.named_parameters():
        numel = full_numel(param)
        trains = param.requires_grad
        if trains:
            trainable += numel
            largest_trainable = max(largest_trainable, numel)
        else:
            frozen += numel
        if numel <= persistence_threshold:
            persistent[trains] += numel
        if name.startswith(VGGT_PREFIX) and not vggt_trains and numel > persistence_threshold:
            forward_only += numel
        if name.startswith(BLOCK_PREFIX):
            index = name.split(".", 2)[1]
            sizes = per_block.setdefault(index, [0, 0])
            sizes[0] += numel
            sizes[1] += numel if numel <= persistence_threshold else 0
    largest_layer = gathered_modules = forward_only_modules = 0
    for name, module in model.named_modules():
        own = [full_numel(p) for p in module.parameters(recurse=False)]
        largest_layer = max(largest_layer, sum(own))
        if any(numel > persistence_threshold for numel in own):
            gathered_modules += 1
            forward_only_modules += f"{name}.".startswith(VGGT_PREFIX) and not vggt_trains
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
        forward_only=forward_only,
        gathered_modules=gathered_modules,
        forward_only_modules=forward_only_modules,
    )
