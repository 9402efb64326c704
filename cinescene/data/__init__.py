"""Training data: synthetic renderer, dataset converter, shard preparation, the training loader.

Data flow (each step a module here)::

    synth/ (data synth)          scene_decoupled.py (data convert)
              \\                  /
               clip directories      clips.py: video(.npy) with/without subject, panorama, scene
                     |                         images, OpenCV cameras per frame, prompt
               prepare.py (data prepare) + encoders.py (wan | none) + shards.py + manifest.py
                     |
               webdataset shards + manifest.json
                     |
               loader.py (+ order.py, samples.py, proxy.py) -> batches of docs/CONTRACTS.md

Public API (the trainer needs the first two)::

    ensure_dataset(data_cfg) -> Path                      # shards, generating synthetic ones if configured
    build_train_loader(data_cfg, model_cfg, *, rank, world_size, seed, micro_batch_size,
                       start_sample=0) -> TrainLoader     # .state_dict() / .load_state_dict()
    build_eval_loader(data_cfg, model_cfg, *, shards, rank, world_size, micro_batch_size) -> EvalLoader
    synthesize(out, clips, frames, size, scene_images, seed, workers)    # `data synth`
    convert(src, out, scene_images, hfov_deg, captions)                  # `data convert`
    prepare.prepare(src, out, encoder, vae, text_encoder, ..., rank, world)  # `data prepare` (module prepare)

Imports are lazy so ``import cinescene.data`` stays cheap (no torch until a loader is built).
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "ensure_dataset": "ensure",
    "build_train_loader": "loader",
    "build_eval_loader": "loader",
    "TrainLoader": "loader",
    "EvalLoader": "loader",
    "LoaderDims": "samples",
    "synthesize": "synth",
    "convert": "scene_decoupled",
    "load_manifest": "manifest",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
