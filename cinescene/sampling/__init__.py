"""Sampling: Euler flow matching with classifier-free guidance, optionally with the context K/V cache.

- :func:`sample` (``sampler``): noise -> video latents.
- :func:`sampling_sigmas` (``schedule``): the shifted noise levels of the steps.
"""

from .sampler import sample
from .schedule import sampling_sigmas

__all__ = ["sample", "sampling_sigmas"]
