"""Which samples an evaluation uses: held out from training, a fixed subset chosen by seed.

Held out means the sample's bytes are not in the training shards: a sample's
identity is its (CRC-32, length) in the manifest index, so the same clip
prepared into another directory is still recognised, while a different clip
with the same key (``clip_000000`` of another synthetic seed) is not. When
the training manifest cannot be read, every sample counts as held out (the
caller warns).

The subset: the first ``num`` positions of a permutation seeded by
``eval.seed``, in manifest order, so the CLI and the training hook pick the
same samples for the same settings, whatever the number of ranks.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from cinescene.errors import CineSceneError
from cinescene.log import get_logger

_log = get_logger("eval")
MANIFEST = "manifest.json"


def training_identities(manifest) -> set[tuple[int, int]]:
    return {(ref.crc, ref.length) for ref in manifest.samples()}


def held_out(identities: Iterable[tuple[int, int]], training: set[tuple[int, int]] | None) -> list[int]:
    """Indices of ``identities`` (in order) that are not training samples."""
    return [i for i, identity in enumerate(identities) if training is None or identity not in training]


def select(candidates: list[int], num: int, seed: int) -> list[int]:
    """``num`` of ``candidates`` (all when num is 0 or larger), drawn by ``seed``, in their original order."""
    if num <= 0 or num >= len(candidates):
        return list(candidates)
    order = np.random.Generator(np.random.PCG64(seed)).permutation(len(candidates))
    return [candidates[i] for i in sorted(order[:num])]


def check_present(cfg) -> None:
    """Cheap, before a training run's ranks start, when the eval hook is on: ``eval.data`` holds shards and,
    once the training data exists (synthetic data is made later), they fit its model and some are held out."""
    if not cfg.eval.every_steps:
        return
    from cinescene.data import storage

    if not storage.exists(storage.location(cfg.eval.data) / MANIFEST):
        raise CineSceneError(
            f"eval.data={cfg.eval.data} holds no {MANIFEST}: the eval hook (eval.every_steps="
            f"{cfg.eval.every_steps}) needs held-out shards there (`cinescene data prepare --out "
            f"{cfg.eval.data}`; --keep-pixels for wan data), or set eval.every_steps=0"
        )
    if cfg.data.train_shards and storage.exists(storage.location(cfg.data.train_shards) / MANIFEST):
        from cinescene.sampling.spec import training_spec

        choose(cfg, training_spec(cfg))


@dataclass
class HeldOutSet:
    samples: object  # cinescene.sampling.inputs.ShardSamples of eval.data
    indices: list[int]  # the selected held-out samples, manifest order
    keys: list[str]


def choose(cfg, spec) -> HeldOutSet:
    """The held-out samples of ``cfg.eval.data`` for a model trained on data of ``spec``: the shards checked
    against the training data (one line on a mismatch), the training samples left out, ``eval.num_samples``
    drawn by ``eval.seed``. What `cinescene eval` and the training hook evaluate."""
    from cinescene.sampling.inputs import ShardSamples
    from cinescene.sampling.spec import check_eval_data, training_manifest

    samples = ShardSamples(cfg.eval.data, spec, cfg.model)
    check_eval_data(spec, samples.manifest)
    train = training_manifest(cfg)
    if train is None:
        _log.warning(
            "the training manifest is not reachable: every sample of %s counts as held out", cfg.eval.data
        )
    identities = [samples.identity(i) for i in range(len(samples))]
    candidates = held_out(identities, None if train is None else training_identities(train))
    if not candidates:
        raise CineSceneError(
            f"no held-out samples: all {len(samples)} samples of {cfg.eval.data} are in the "
            f"training data ({cfg.data.train_shards})"
        )
    indices = select(candidates, cfg.eval.num_samples, cfg.eval.seed)
    return HeldOutSet(samples, indices, [samples.refs[i].key for i in indices])
