"""The installed software stack: versions of what the project runs on, and whether its optional
parts import in this process (`cinescene env`).

The import check runs in the caller's process as it was started (``python -m cinescene`` puts the
working directory first on ``sys.path``), so it is also the check that no folder of the repository
stands in for an installed package (docs/CONTRACTS.md, "Import names").
"""

from __future__ import annotations

import importlib
import importlib.metadata
import platform
from dataclasses import dataclass

# Distributions whose versions a bug report needs, in the order they are printed.
DISTRIBUTIONS = (
    "cinescene",
    "torch",
    "deepspeed",
    "triton",
    "flash-attn",
    "transformers",
    "diffusers",
    "huggingface_hub",
    "kernels",
    "safetensors",
    "webdataset",
    "wandb",
    "omegaconf",
    "numpy",
    "pycolmap",
    "opencv-python-headless",
)


@dataclass(frozen=True)
class Component:
    """An optional part of the project: what it is for, and the import that provides it."""

    name: str
    purpose: str
    module: str
    attribute: str
    distribution: str


COMPONENTS = (
    Component(
        "Wan VAE", "data prepare --encoder wan, decoding", "diffusers", "AutoencoderKLWan", "diffusers"
    ),
    Component(
        "Wan DiT (diffusers)",
        "exports in diffusers layout",
        "diffusers",
        "WanTransformer3DModel",
        "diffusers",
    ),
    Component("umT5 encoder", "prompt embeddings", "transformers", "UMT5EncoderModel", "transformers"),
    Component("CLIP", "CLIP-V / CLIP-T metrics", "transformers", "CLIPModel", "transformers"),
    Component("SfM", "camera metrics", "pycolmap", "Reconstruction", "pycolmap"),
    Component(
        "fused attention",
        "attention.backend=fused",
        "cinescene.kernels.attention",
        "fused_attention",
        "triton",
    ),
    Component("flash-attn", "attention.backend=flash", "flash_attn", "flash_attn_varlen_func", "flash-attn"),
)


@dataclass(frozen=True)
class ComponentStatus:
    component: Component
    installed: bool
    error: str | None  # None: imports; else the one-line reason

    @property
    def ok(self) -> bool:
        return self.installed and self.error is None


def version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def check(component: Component) -> ComponentStatus:
    """Import the component's attribute; a missing distribution is not an error, a broken import is."""
    if version(component.distribution) is None:
        return ComponentStatus(component, installed=False, error=None)
    try:
        module = importlib.import_module(component.module)
        getattr(module, component.attribute)
    except Exception as exc:  # any import failure is the finding, reported in one line
        return ComponentStatus(component, installed=True, error=_root_cause(exc))
    return ComponentStatus(component, installed=True, error=None)


def _root_cause(exc: BaseException) -> str:
    """The innermost exception of a chain (diffusers wraps the ImportError that names the culprit file)."""
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"


def report() -> dict:
    """Versions and component statuses as one JSON-ready dict."""
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {name: version(name) for name in DISTRIBUTIONS},
        "components": [
            {
                "name": s.component.name,
                "purpose": s.component.purpose,
                "installed": s.installed,
                "ok": s.ok,
                "error": s.error,
            }
            for s in map(check, COMPONENTS)
        ],
    }
