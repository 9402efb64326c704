"""Building blocks shared by the DiT and the scene encoder.

Initialisation lives inside each module's constructor (``reset_parameters``),
never in a pass over the finished model: under ``deepspeed.zero.Init`` every
module's parameters are partitioned as soon as its own ``__init__`` returns,
so a later ``nn.init.*_`` on ``module.weight`` would touch an empty shard.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

#: Initialisation schemes ``Linear`` understands (weights; biases are zeroed unless "torch").
LINEAR_INITS = ("torch", "xavier", "normal", "trunc_normal", "zeros", "identity")


class Linear(nn.Linear):
    """``nn.Linear`` whose initialisation scheme is chosen at construction.

    ``"xavier"``: Wan's default (xavier-uniform weight, zero bias);
    ``"normal"``/``"trunc_normal"``: N(0, std) weight, zero bias (Wan's embeddings, DINOv2);
    ``"zeros"``: a no-op at start (camera encoders, Wan's output head);
    ``"identity"``: eye weight, zero bias (ReCamMaster's projector);
    ``"torch"``: PyTorch's own default.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        init: str = "xavier",
        std: float = 0.02,
        device=None,
        dtype=None,
    ):
        if init not in LINEAR_INITS:
            raise ValueError(f"unknown init {init!r}; expected one of {LINEAR_INITS}")
        if init == "identity" and in_features != out_features:
            raise ValueError("identity init needs a square Linear")
        # Set before nn.Linear.__init__, which calls reset_parameters().
        self.init_scheme = init
        self.init_std = std
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        if self.weight.is_meta:
            return  # nothing to fill, and random ops on meta tensors import torch's slow decompositions
        scheme = self.init_scheme
        if scheme == "torch":
            super().reset_parameters()
            return
        if scheme == "xavier":
            nn.init.xavier_uniform_(self.weight)
        elif scheme == "normal":
            nn.init.normal_(self.weight, std=self.init_std)
        elif scheme == "trunc_normal":
            nn.init.trunc_normal_(self.weight, std=self.init_std)
        elif scheme == "zeros":
            nn.init.zeros_(self.weight)
        elif scheme == "identity":
            self.weight.copy_(torch.eye(self.in_features, dtype=self.weight.dtype, device=self.weight.device))
        if self.bias is not None:
            nn.init.zeros_(self.bias)


class PatchEmbed3d(nn.Conv3d):
    """Wan's ``patch_embedding``: a strided Conv3d, xavier-uniform over the flattened kernel."""

    def __init__(self, in_dim: int, dim: int, patch_size: Sequence[int], device=None, dtype=None):
        patch = tuple(int(p) for p in patch_size)
        super().__init__(in_dim, dim, kernel_size=patch, stride=patch, device=device, dtype=dtype)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        if self.weight.is_meta:
            return
        super().reset_parameters()  # bias keeps PyTorch's default, as Wan's init leaves it
        # Wan initialises the kernel as a (dim, in*kt*kh*kw) matrix.
        flat = self.weight.view(self.weight.shape[0], -1)
        bound = math.sqrt(6.0 / (flat.shape[0] + flat.shape[1]))
        self.weight.uniform_(-bound, bound)


class RMSNorm(nn.Module):
    """Wan's RMSNorm over the full width: normalise in fp32, scale in the input dtype."""

    def __init__(self, dim: int, eps: float = 1e-5, device=None, dtype=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        normed = xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


class FP32LayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32 and returned in the input dtype (Wan's WanLayerNorm)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).type_as(x)


def normal_parameter(*shape: int, std: float, truncated: bool = False) -> nn.Parameter:
    """A parameter drawn from N(0, std^2) (truncated to [-2, 2] if asked, as timm/DINOv2 do), built in
    the constructor.

    On the meta device it stays unfilled: random ops on meta tensors pull in
    torch's slow decomposition modules and would make `model info` take seconds.
    """
    tensor = torch.empty(*shape)
    if not tensor.is_meta:
        with torch.no_grad():
            if truncated:
                nn.init.trunc_normal_(tensor, std=std)
            else:
                tensor.normal_(0.0, std)
    return nn.Parameter(tensor)


def sinusoidal_embedding(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """Wan's timestep embedding: [cos, sin] of t * 10000^(-i/half), computed in float64."""
    half = dim // 2
    pos = positions.to(torch.float64)
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=pos.device) / half)
    angles = torch.outer(pos.reshape(-1), freqs)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)


class SegmentedModulation:
    """Per-token adaLN parameters for a sequence made of contiguous segments.

    The extended sequence is [video | context | padding]; video and context may
    run at different timesteps (clean context), so they carry different
    shift/scale/gate vectors. Rather than materialising a (B, L, 6, dim) tensor
    per block, each parameter is (B, G, dim) with G groups and the sequence is
    cut at ``split`` (tokens before it use group 0, tokens after it group 1;
    padding rides with the context and is discarded).
    """

    def __init__(self, split: int | None):
        self.split = split

    def _pieces(self, x: torch.Tensor, param: torch.Tensor):
        if param.shape[1] == 1 or self.split is None:
            return [(x, param[:, :1])]
        pieces = []
        if self.split > 0:
            pieces.append((x[:, : self.split], param[:, :1]))
        if self.split < x.shape[1]:
            pieces.append((x[:, self.split :], param[:, 1:2]))
        return pieces

    def modulate(self, normed: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """``normed * (1 + scale) + shift`` in fp32; shift/scale are (B, G, dim)."""
        outs = [
            part.float() * (1 + sc) + sh
            for (part, sc), (_, sh) in zip(self._pieces(normed, scale), self._pieces(normed, shift))
        ]
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)

    def gated_add(self, x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        """``x + y * gate`` in fp32, returned in x's dtype."""
        outs = [
            px.float() + py.float() * g
            for (px, g), (py, _) in zip(self._pieces(x, gate), self._pieces(y, gate))
        ]
        out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)
        return out.type_as(x)
