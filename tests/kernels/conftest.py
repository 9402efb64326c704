"""Kernel tests run on a GPU when there is one, else through the Triton interpreter.

Triton picks interpreter or GPU JIT when a kernel is *defined* (and the
interpreter reads the variable again when it launches), so on a CPU
``TRITON_INTERPRET=1`` is set by tests/conftest.py before the session can
import triton at all, and stays set for the session.
"""

from __future__ import annotations

import os

import pytest
import torch

ON_GPU = torch.cuda.is_available()
assert ON_GPU or os.environ.get("TRITON_INTERPRET") == "1", "tests/conftest.py sets TRITON_INTERPRET on a CPU"


@pytest.fixture(scope="session")
def device() -> str:
    return "cuda" if ON_GPU else "cpu"
