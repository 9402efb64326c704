"""The CineScene network: Wan2.1 DiT + scene context + camera control, VGGT, attention, weights.

Public API (see docs/CONTRACTS.md):

- :func:`build_model` / :class:`CineSceneModel` (``forward``, ``apply_trainable``,
  ``trainable_parameters``, ``set_sequence_parallel``; ``scene_encoder.extract_features``
  gives the cacheable ``scene_tokens``)
- :func:`cinescene.models.attention.attention` (the one attention entry point)
- :func:`load_pretrained`, :func:`read_state_dict`, :func:`wan_to_diffusers`,
  :func:`diffusers_to_wan` (checkpoints)
- :mod:`cinescene.models.flops` (parameter counts, sequence length, FLOPs per sample)
- :mod:`cinescene.models.vggt` (VGGT aggregator and camera head, e.g. for pose evaluation)
- :mod:`cinescene.models.flow_matching` (the noise grid with its shift, targets and loss weighting,
  shared by training and sampling)

Big models under ZeRO-3::

    with deepspeed.zero.Init(config_dict_or_path=ds_config):
        model = build_model(cfg.model)   # partitioned as it is built; loads cfg.pretrained

Every module initialises its own parameters inside its constructor (before
zero.Init partitions them), so no init pass over the finished model is needed
and no rank holds the full model. Weights are read lazily and written module
by module under ``GatheredParameters(modifier_rank=0)``: only rank 0 reads
tensor data, the others read checkpoint headers (see :mod:`.weights`). Module outputs
are tensors or lists, which ZeRO-3's forward hooks require, and every rank
uses the same parameters each step (camera encoders and the null scene token
run even when they contribute nothing), which its gradient reduction requires.
"""

from .cinescene_model import CineSceneModel, build_model
from .key_mapping import diffusers_to_wan, wan_to_diffusers
from .weights import LoadReport, load_pretrained, read_state_dict

__all__ = [
    "CineSceneModel",
    "LoadReport",
    "build_model",
    "diffusers_to_wan",
    "load_pretrained",
    "read_state_dict",
    "wan_to_diffusers",
]
