"""Kernel tests run on a GPU when there is one, else through the Triton interpreter.

Triton picks interpreter or GPU JIT when a kernel is *defined* (and the
interpreter reads the variable again when it launches), so on a CPU
``TRITON_INTERPRET=1`` is set here, at collection, before any test module
imports the kernel modules, and stays set for the session. Nothing else in
the project runs Triton kernels on a CPU, so the rest of the session does not
notice.
"""
from __future__ import annotations

import os

import pytest
import torch

ON_GPU = torch.cuda.is_available()
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")   # silence triton 3.9's default-change warning
if not ON_GPU:
    os.environ["TRITON_INTERPRET"] = "1"


@pytest.fixture(scope="session")
def device() -> str:
    return "cuda" if ON_GPU else "cpu"
