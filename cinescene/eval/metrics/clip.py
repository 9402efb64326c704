"""CLIP-V and CLIP-T with a transformers ``CLIPModel`` read from a local directory.

* CLIP-V: cosine similarity of the CLIP image embeddings of generated frame i
  and ground-truth frame i, per frame.
* CLIP-T: cosine similarity of the prompt's CLIP text embedding and each
  generated frame's image embedding, per frame (raw cosine, not x100).

Why transformers and not open-clip: open-clip-torch depends on torchvision,
whose PyPI wheels pin a CUDA torch that would replace the project's torch
(docs/EVAL.md). transformers' slow (PIL) image processor needs no
torchvision and loads the same OpenAI CLIP checkpoints (e.g.
``openai/clip-vit-large-patch14`` saved with ``save_pretrained``).

Weights come from ``eval.clip.weights`` only, a directory or a repo id in the
local Hugging Face cache (:mod:`cinescene.hub`; ``local_files_only``: nothing
is downloaded). Without them :func:`load_clip` raises :class:`ClipUnavailable`
with the one line the caller prints; the metrics are then absent.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from cinescene.config.eval import ClipConfig
from cinescene.hub import WeightsNotFound, resolve_weights


class ClipUnavailable(RuntimeError):
    """CLIP cannot be loaded; the message is one line for the user."""


@contextlib.contextmanager
def _quiet_transformers():
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _image_processor_class():
    """transformers >= 5 names the PIL (torchvision-free) processor ``CLIPImageProcessorPil``."""
    import transformers

    return getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor


def _features(output) -> torch.Tensor:
    """transformers 4 returns the projected embedding; 5 a model output whose pooler_output is it."""
    return output if torch.is_tensor(output) else output.pooler_output


class ClipScorer:
    """CLIP embeddings of frames and prompts, L2-normalised, in fp32."""

    def __init__(self, directory: str | Path, device: str | torch.device = "cpu", batch_size: int = 16):
        from transformers import AutoTokenizer, CLIPModel

        self.device = torch.device(device)
        self.batch_size = batch_size
        with _quiet_transformers():
            self.model = (
                CLIPModel.from_pretrained(str(directory), local_files_only=True).to(self.device).eval()
            )
            self.tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
            kwargs = {} if _image_processor_class().__name__.endswith("Pil") else {"use_fast": False}
            self.processor = _image_processor_class().from_pretrained(
                str(directory), local_files_only=True, **kwargs
            )

    @torch.no_grad()
    def image_embeddings(self, frames: Sequence[np.ndarray]) -> torch.Tensor:
        """(N, D) unit vectors for uint8 RGB frames (N, H, W, 3)."""
        out: list[torch.Tensor] = []
        for start in range(0, len(frames), self.batch_size):
            batch = [np.asarray(f, dtype=np.uint8) for f in frames[start : start + self.batch_size]]
            pixels = self.processor(images=batch, return_tensors="pt")["pixel_values"].to(self.device)
            out.append(_features(self.model.get_image_features(pixel_values=pixels)).float())
        return torch.nn.functional.normalize(torch.cat(out), dim=-1)

    @torch.no_grad()
    def text_embedding(self, prompt: str) -> torch.Tensor:
        """(D,) unit vector; prompts longer than CLIP's context are truncated, as CLIP scores do."""
        limit = self.model.config.text_config.max_position_embeddings
        tokens = self.tokenizer(
            [prompt], padding=True, truncation=True, max_length=limit, return_tensors="pt"
        )
        tokens = {k: v.to(self.device) for k, v in tokens.items() if k in ("input_ids", "attention_mask")}
        return torch.nn.functional.normalize(
            _features(self.model.get_text_features(**tokens)).float(), dim=-1
        )[0]


def load_clip(cfg: ClipConfig, device: str | torch.device = "cpu") -> ClipScorer:
    """The scorer of ``eval.clip.weights``, or :class:`ClipUnavailable` saying why not."""
    if not cfg.weights:
        raise ClipUnavailable(
            "eval.clip.weights is not set (a local CLIPModel directory or its repo id): CLIP-V and CLIP-T "
            "are reported as absent"
        )
    try:
        path = resolve_weights(cfg.weights, "eval.clip.weights")
    except WeightsNotFound as exc:
        raise ClipUnavailable(f"{exc}: CLIP-V and CLIP-T are reported as absent") from None
    if not (path / "config.json").is_file():
        raise ClipUnavailable(
            f"eval.clip.weights={path}: no CLIPModel there (no config.json): CLIP-V and CLIP-T "
            "are reported as absent"
        )
    try:
        return ClipScorer(path, device, cfg.batch_size)
    except (OSError, ValueError, KeyError) as exc:
        message = f"{type(exc).__name__}: {exc}".splitlines()[0]
        raise ClipUnavailable(
            f"eval.clip.weights={path} does not load ({message}): CLIP-V and CLIP-T are reported as absent"
        ) from None


def clip_v(scorer: ClipScorer, generated: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """(F,) cosine similarity of generated and reference frames."""
    if len(generated) != len(reference):
        raise ValueError(f"{len(generated)} generated frames but {len(reference)} reference frames")
    return (
        (scorer.image_embeddings(generated) * scorer.image_embeddings(reference))
        .sum(-1)
        .cpu()
        .double()
        .numpy()
    )


def clip_t(scorer: ClipScorer, prompt: str | None, generated: np.ndarray) -> np.ndarray:
    """(F,) cosine similarity of the prompt and each generated frame."""
    text = scorer.text_embedding(prompt or "")
    return (scorer.image_embeddings(generated) @ text).cpu().double().numpy()
