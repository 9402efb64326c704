"""State-dict key layouts of the Wan2.1 DiT: Wan's original names <-> diffusers' WanTransformer3DModel.

Our modules use Wan's names. diffusers holds the same tensors (same shapes)
under other names; notably its block ``norm2`` is Wan's affine cross-attention
norm ``norm3`` (the two FFN/self-attention LayerNorms have no parameters).
Keys outside the table (CineScene's ``blocks.N.cam_encoder`` / ``projector``,
``scene_encoder.*``) are the same in both layouts.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import TypeVar

V = TypeVar("V")

#: (Wan module path, diffusers module path) outside the blocks.
TOP_LEVEL: list[tuple[str, str]] = [
    ("patch_embedding", "patch_embedding"),
    ("text_embedding.0", "condition_embedder.text_embedder.linear_1"),
    ("text_embedding.2", "condition_embedder.text_embedder.linear_2"),
    ("time_embedding.0", "condition_embedder.time_embedder.linear_1"),
    ("time_embedding.2", "condition_embedder.time_embedder.linear_2"),
    ("time_projection.1", "condition_embedder.time_proj"),
    ("head.head", "proj_out"),
    ("head.modulation", "scale_shift_table"),
]

#: (Wan, diffusers) paths inside ``blocks.N.``.
IN_BLOCK: list[tuple[str, str]] = [
    *[
        (f"{wan}.{a}", f"{hf}.{b}")
        for wan, hf in (("self_attn", "attn1"), ("cross_attn", "attn2"))
        for a, b in (
            ("q", "to_q"),
            ("k", "to_k"),
            ("v", "to_v"),
            ("o", "to_out.0"),
            ("norm_q", "norm_q"),
            ("norm_k", "norm_k"),
        )
    ],
    ("norm3", "norm2"),
    ("ffn.0", "ffn.net.0.proj"),
    ("ffn.2", "ffn.net.2"),
    ("modulation", "scale_shift_table"),
]

_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.(.+)$")


def _rename(path: str, table: Iterable[tuple[str, str]]) -> str:
    """Replace the first table entry that is ``path`` or a dotted prefix of it."""
    for source, target in table:
        if path == source or path.startswith(source + "."):
            return target + path[len(source) :]
    return path


def _convert_key(key: str, to_diffusers: bool) -> str:
    swap = (lambda pairs: pairs) if to_diffusers else (lambda pairs: [(b, a) for a, b in pairs])
    match = _BLOCK_KEY.match(key)
    if match:
        return f"blocks.{match.group(1)}.{_rename(match.group(2), swap(IN_BLOCK))}"
    return _rename(key, swap(TOP_LEVEL))


def wan_to_diffusers_key(key: str) -> str:
    return _convert_key(key, to_diffusers=True)


def diffusers_to_wan_key(key: str) -> str:
    return _convert_key(key, to_diffusers=False)


def wan_to_diffusers(state_dict: Mapping[str, V]) -> dict[str, V]:
    """Rename a Wan-layout state dict to diffusers' layout (values untouched)."""
    return {wan_to_diffusers_key(k): v for k, v in state_dict.items()}


def diffusers_to_wan(state_dict: Mapping[str, V]) -> dict[str, V]:
    """Rename a diffusers-layout state dict to Wan's layout (values untouched)."""
    return {diffusers_to_wan_key(k): v for k, v in state_dict.items()}


def detect_layout(keys: Iterable[str]) -> str:
    """``"diffusers"`` when the keys use diffusers' names, else ``"wan"``."""
    for key in keys:
        if key.startswith("condition_embedder.") or ".attn1." in key or key.startswith("proj_out."):
            return "diffusers"
    return "wan"
