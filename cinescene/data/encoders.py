"""Encoders `data prepare` applies: ``none`` (keep pixels) and ``wan`` (Wan VAE latents + umT5 text).

``wan`` loads diffusers' ``AutoencoderKLWan`` and transformers'
``UMT5EncoderModel`` + tokenizer from local directories (``from_pretrained``;
a diffusers repository root with ``vae/``, ``text_encoder/``, ``tokenizer/``
subfolders works too). Latents are the posterior mean, normalised with the
VAE config's ``latents_mean``/``latents_std`` as Wan's pipelines do, so a
sampler must undo that before decoding. Scene images are encoded one at a
time as one-frame videos (Wan's causal VAE maps a first frame to one latent
frame). Text embeddings keep only the prompt's real tokens (Wan zeroes the
padding); the loader zero-pads to ``model.text_len``.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Dict, Optional

import numpy as np

from cinescene.errors import CineSceneError

TEXT_LEN = 512  # umT5 context length Wan2.1 trains with


class PixelEncoder:
    """``--encoder none``: shards keep uint8 pixels; the loader builds the pixel proxy."""

    name = "none"

    def info(self) -> dict:
        return {"name": self.name}

    def encode(self, video: np.ndarray, scene: np.ndarray, prompt: str) -> Dict[str, np.ndarray]:
        return {}


def _model_dir(path: Optional[str], subfolder: str, flag: str) -> Path:
    if not path:
        raise CineSceneError(f"--encoder wan needs {flag} PATH (a local directory saved with save_pretrained)")
    root = Path(path)
    if (root / subfolder / "config.json").is_file():
        return root / subfolder
    if not root.is_dir():
        raise CineSceneError(f"{flag} {root}: directory not found")
    return root


def _config_digest(directory: Path) -> str:
    config = directory / "config.json"
    return hashlib.sha256(config.read_bytes()).hexdigest()[:16] if config.is_file() else "unknown"


def wan_model_dirs(vae: Optional[str], text_encoder: Optional[str], tokenizer: Optional[str] = None):
    """Resolve (and check) the VAE, text encoder and tokenizer directories without loading anything."""
    vae_dir = _model_dir(vae, "vae", "--vae")
    text_dir = _model_dir(text_encoder, "text_encoder", "--text-encoder")
    default_tok = text_dir.parent / "tokenizer" if (text_dir.parent / "tokenizer").is_dir() else text_dir
    return vae_dir, text_dir, _model_dir(str(tokenizer or default_tok), "tokenizer", "--tokenizer")


class WanEncoder:
    """``--encoder wan``: Wan VAE latents for video and scene images, umT5 embeddings for the prompt."""

    name = "wan"

    def __init__(self, vae: Optional[str], text_encoder: Optional[str], tokenizer: Optional[str] = None,
                 device: str = "cpu", dtype: str = "float16"):
        import torch

        self.torch = torch
        self.device = torch.device(device)
        self.dtype = np.dtype(dtype)
        self.vae_dir, self.text_dir, self.tokenizer_dir = wan_model_dirs(vae, text_encoder, tokenizer)
        try:
            from diffusers import AutoencoderKLWan
            from transformers import AutoTokenizer, UMT5EncoderModel

            self.vae = AutoencoderKLWan.from_pretrained(self.vae_dir, torch_dtype=torch.float32).to(self.device)
            self.text_encoder = UMT5EncoderModel.from_pretrained(self.text_dir, torch_dtype=torch.float32)
            self.text_encoder.to(self.device)
            self.tokenizer = AutoTokenizer.from_pretrained(self.tokenizer_dir)
        except (OSError, ValueError, KeyError) as exc:
            raise CineSceneError(f"cannot load the Wan encoders ({type(exc).__name__}: {exc})".splitlines()[0]) \
                from None
        self.vae.eval()
        self.text_encoder.eval()
        config = self.vae.config
        self.mean = torch.tensor(config.latents_mean, dtype=torch.float32).view(1, -1, 1, 1, 1)
        self.std = torch.tensor(config.latents_std, dtype=torch.float32).view(1, -1, 1, 1, 1)

    def info(self) -> dict:
        return {"name": self.name, "vae": str(self.vae_dir), "vae_config": _config_digest(self.vae_dir),
                "text_encoder": str(self.text_dir), "text_encoder_config": _config_digest(self.text_dir),
                "tokenizer": str(self.tokenizer_dir), "text_len": TEXT_LEN,
                "latents": "posterior mean, (z - latents_mean) / latents_std", "dtype": self.dtype.name}

    def _latents(self, pixels: np.ndarray):
        """uint8 (F, H, W, 3) -> normalised latents (C, T, h, w)."""
        torch = self.torch
        x = torch.from_numpy(np.ascontiguousarray(pixels)).to(self.device, torch.float32)
        x = x.permute(3, 0, 1, 2).unsqueeze(0) / 127.5 - 1.0
        z = self.vae.encode(x).latent_dist.mode()
        z = (z.cpu() - self.mean) / self.std
        return z[0].numpy()

    def encode(self, video: np.ndarray, scene: np.ndarray, prompt: str) -> Dict[str, np.ndarray]:
        torch = self.torch
        with torch.no_grad():
            latents = self._latents(video)
            scene_latents = np.stack([self._latents(image[None])[:, 0] for image in scene])
            tokens = self.tokenizer(prompt, max_length=TEXT_LEN, padding="max_length", truncation=True,
                                    add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
            mask = tokens["attention_mask"].to(self.device)
            hidden = self.text_encoder(tokens["input_ids"].to(self.device), attention_mask=mask).last_hidden_state
            text = hidden[0, : int(mask.sum())].float().cpu().numpy()
        return {"latents.npy": latents.astype(self.dtype), "scene_latents.npy": scene_latents.astype(self.dtype),
                "text.npy": text.astype(self.dtype)}


def make_encoder(name: str, vae: Optional[str] = None, text_encoder: Optional[str] = None,
                 tokenizer: Optional[str] = None, device: str = "cpu", dtype: str = "float16"):
    if name == "none":
        return PixelEncoder()
    if name == "wan":
        return WanEncoder(vae, text_encoder, tokenizer, device, dtype)
    raise CineSceneError(f"unknown encoder {name!r} (expected 'wan' or 'none')")
