"""The device and precision a generating command runs in (``--device``, ``--dtype``)."""

from __future__ import annotations

import torch

from cinescene.config.base import ConfigError
from cinescene.errors import CineSceneError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def device_and_dtype(device: str | None, dtype: str | None) -> tuple[torch.device, torch.dtype]:
    """Defaults: the GPU in bf16 when there is one, else the CPU in fp32."""
    name = device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(name)
    except RuntimeError:
        raise ConfigError(
            "--device", f"expected a torch device such as cpu or cuda:0, got {name!r}"
        ) from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise CineSceneError(f"--device {name}: no CUDA GPU is visible")
    kind = dtype or ("bf16" if chosen.type == "cuda" else "fp32")
    return chosen, DTYPES[kind]
