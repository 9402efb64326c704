"""Sampling: Euler flow matching with classifier-free guidance, optionally with the context K/V cache.

- :func:`sample` (``sampler``): noise -> video latents.
- :func:`sampling_sigmas` (``schedule``): the shifted noise levels of the steps.

Imports are lazy, so the torch-free parts (``spec``: what a model generates) serve the launcher's checks
before any rank starts without importing torch.
"""

from __future__ import annotations

import importlib

_LAZY = {"sample": ".sampler", "sampling_sigmas": ".schedule"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["sample", "sampling_sigmas"]
