"""Encoders `data prepare` applies: ``none`` (keep pixels) and ``wan`` (Wan VAE latents + umT5 text).

``wan`` loads diffusers' ``AutoencoderKLWan`` and transformers'
``UMT5EncoderModel`` + tokenizer from local directories (``from_pretrained``;
a diffusers repository root with ``vae/``, ``text_encoder/``, ``tokenizer/``
subfolders works too, and so does its repo id in the local Hugging Face cache,
e.g. ``Wan-AI/Wan2.1-T2V-1.3B-Diffusers``: :mod:`cinescene.hub`). Latents are
the posterior mean, normalised with the VAE config's ``latents_mean``/``latents_std``
as Wan's pipelines do, so a sampler must undo that before decoding. Scene images are encoded one at a
time as one-frame videos (Wan's causal VAE maps a first frame to one latent
frame). Text embeddings keep only the prompt's real tokens (Wan zeroes the
padding); the loader zero-pads to ``model.text_len``. The manifest names each
model by its path and by a content id (:func:`model_id`), so shards encoded by
another checkpoint with the same config are told apart.
"""

from __future__ import annotations

import fnmatch
import hashlib
from pathlib import Path

import numpy as np

from cinescene.errors import CineSceneError
from cinescene.hub import resolve_weights

TEXT_LEN = 512  # umT5 context length Wan2.1 trains with
TEMPORAL_STRIDE = 4  # Wan VAE: latent frame i covers source frames 4i-3 .. 4i; its camera is frame 4i


class PixelEncoder:
    """``--encoder none``: shards keep uint8 pixels; the loader builds the pixel proxy."""

    name = "none"

    def info(self) -> dict:
        return {"name": self.name}

    def encode(self, video: np.ndarray, scene: np.ndarray, prompt: str) -> dict[str, np.ndarray]:
        return {}


def _model_dir(path: str | None, subfolder: str, flag: str) -> Path:
    if not path:
        raise CineSceneError(
            f"--encoder wan needs {flag} PATH (a local directory saved with save_pretrained, "
            "or a Hugging Face repo id in the local cache)"
        )
    root = resolve_weights(path, flag)
    if (root / subfolder / "config.json").is_file():
        return root / subfolder
    if not root.is_dir():
        raise CineSceneError(f"{flag} {root}: directory not found")
    return root


# Files that make a saved model what it is (diffusers / transformers save_pretrained layouts).
MODEL_FILES = ("config.json", "*.safetensors", "*.bin", "*.pt", "*.pth", "*.ckpt")
TOKENIZER_FILES = ("*.json", "*.model", "*.txt")
HEAD_BYTES = 1 << 20  # read whole: a safetensors header (names, dtypes, shapes) and the first weights
SLICES, SLICE_BYTES = 16, 1 << 16  # plus this many evenly spaced slices: weights past the head


def file_fingerprint(path: Path) -> str:
    """sha256 of a file's size, its first MiB and 16 evenly spaced 64 KiB slices (all of a small file).

    Cheap on multi-GB weights (about 2 MiB read per file) and still tells apart two checkpoints
    of one architecture: their config and safetensors headers agree, their weights do not.
    """
    size = path.stat().st_size
    digest = hashlib.sha256(f"{size}\n".encode())
    with open(path, "rb") as handle:
        if size <= HEAD_BYTES + SLICES * SLICE_BYTES:
            digest.update(handle.read())
        else:
            digest.update(handle.read(HEAD_BYTES))
            for k in range(SLICES):
                handle.seek(HEAD_BYTES + (size - HEAD_BYTES - SLICE_BYTES) * k // (SLICES - 1))
                digest.update(handle.read(SLICE_BYTES))
    return digest.hexdigest()


def model_id(directory: Path, patterns=MODEL_FILES) -> str:
    """A 16-hex id of a saved model from its files' names, sizes and fingerprints (not its path)."""
    names = sorted(
        p.name
        for p in Path(directory).iterdir()
        if p.is_file() and any(fnmatch.fnmatchcase(p.name, pattern) for pattern in patterns)
    )
    if not names:
        return "unknown"
    digest = hashlib.sha256()
    for name in names:
        path = Path(directory) / name
        digest.update(f"{name}\t{path.stat().st_size}\t{file_fingerprint(path)}\n".encode())
    return digest.hexdigest()[:16]


def wan_model_dirs(vae: str | None, text_encoder: str | None, tokenizer: str | None = None):
    """Resolve (and check) the VAE, text encoder and tokenizer directories without loading anything."""
    vae_dir = _model_dir(vae, "vae", "--vae")
    text_dir = _model_dir(text_encoder, "text_encoder", "--text-encoder")
    default_tok = text_dir.parent / "tokenizer" if (text_dir.parent / "tokenizer").is_dir() else text_dir
    return vae_dir, text_dir, _model_dir(str(tokenizer or default_tok), "tokenizer", "--tokenizer")


class WanEncoder:
    """``--encoder wan``: Wan VAE latents for video and scene images, umT5 embeddings for the prompt."""

    name = "wan"

    def __init__(
        self,
        vae: str | None,
        text_encoder: str | None,
        tokenizer: str | None = None,
        device: str = "cpu",
        dtype: str = "float16",
    ):
        import torch

        self.torch = torch
        self.device = torch.device(device)
        self.dtype = np.dtype(dtype)
        self.vae_dir, self.text_dir, self.tokenizer_dir = wan_model_dirs(vae, text_encoder, tokenizer)
        try:
            from diffusers import AutoencoderKLWan

            self.vae = AutoencoderKLWan.from_pretrained(self.vae_dir, torch_dtype=torch.float32).to(
                self.device
            )
        except (OSError, ValueError, KeyError) as exc:
            raise CineSceneError(
                f"cannot load the Wan encoders ({type(exc).__name__}: {exc})".splitlines()[0]
            ) from None
        self.vae.eval()
        # umT5-XXL loads on the first prompt: the training eval hook decodes with the VAE only (the held-out
        # shards hold the prompts' embeddings) and must not put the text encoder beside the model.
        self._text = None
        config = self.vae.config
        self.mean = torch.tensor(config.latents_mean, dtype=torch.float32).view(1, -1, 1, 1, 1)
        self.std = torch.tensor(config.latents_std, dtype=torch.float32).view(1, -1, 1, 1, 1)
        self._info = {
            "name": self.name,
            "vae": str(self.vae_dir),
            "vae_id": model_id(self.vae_dir),
            "text_encoder": str(self.text_dir),
            "text_encoder_id": model_id(self.text_dir),
            "tokenizer": str(self.tokenizer_dir),
            "tokenizer_id": model_id(self.tokenizer_dir, TOKENIZER_FILES),
            "text_len": TEXT_LEN,
            "latents": "posterior mean, (z - latents_mean) / latents_std",
            "dtype": self.dtype.name,
        }

    def info(self) -> dict:
        """What made these shards (the manifest's ``encoder``): model paths, content ids, settings."""
        return dict(self._info)

    def _latents(self, pixels: np.ndarray):
        """uint8 (F, H, W, 3) -> normalised latents (C, T, h, w)."""
        torch = self.torch
        x = torch.from_numpy(np.ascontiguousarray(pixels)).to(self.device, torch.float32)
        x = x.permute(3, 0, 1, 2).unsqueeze(0) / 127.5 - 1.0
        z = self.vae.encode(x).latent_dist.mode()
        z = (z.cpu() - self.mean) / self.std
        return z[0].numpy()

    def _text_models(self):
        """(tokenizer, umT5), loaded on first use."""
        if self._text is None:
            try:
                from transformers import AutoTokenizer, UMT5EncoderModel

                encoder = UMT5EncoderModel.from_pretrained(self.text_dir, torch_dtype=self.torch.float32)
                self._text = (
                    AutoTokenizer.from_pretrained(self.tokenizer_dir),
                    encoder.to(self.device).eval(),
                )
            except (OSError, ValueError, KeyError) as exc:
                raise CineSceneError(
                    f"cannot load the Wan text encoder ({type(exc).__name__}: {exc})".splitlines()[0]
                ) from None
        return self._text

    def encode_text(self, prompt: str) -> np.ndarray:
        """umT5 embeddings of the prompt's real tokens, (L, 4096) float32 (padding dropped: Wan zeroes it)."""
        torch = self.torch
        tokenizer, text_encoder = self._text_models()
        with torch.no_grad():
            tokens = tokenizer(
                prompt,
                max_length=TEXT_LEN,
                padding="max_length",
                truncation=True,
                add_special_tokens=True,
                return_attention_mask=True,
                return_tensors="pt",
            )
            mask = tokens["attention_mask"].to(self.device)
            hidden = text_encoder(tokens["input_ids"].to(self.device), attention_mask=mask).last_hidden_state
            return hidden[0, : int(mask.sum())].float().cpu().numpy()

    def encode_images(self, images: np.ndarray) -> np.ndarray:
        """uint8 images (S, H, W, 3) -> normalised latents (S, C, h, w), each a one-frame video."""
        with self.torch.no_grad():
            return np.stack([self._latents(image[None])[:, 0] for image in images])

    def decode_latents(self, latents) -> np.ndarray:
        """Normalised latents (C, T, h, w) (as :meth:`encode` stores) -> uint8 frames (4(T-1)+1, H, W, 3)."""
        torch = self.torch
        with torch.no_grad():
            z = torch.as_tensor(latents, dtype=torch.float32)[None] * self.std + self.mean
            video = self.vae.decode(z.to(self.device)).sample[0].float().clamp(-1, 1)
            return ((video.permute(1, 2, 3, 0) + 1) * 127.5).round().to(torch.uint8).cpu().numpy()

    def encode(self, video: np.ndarray, scene: np.ndarray, prompt: str) -> dict[str, np.ndarray]:
        with self.torch.no_grad():
            latents = self._latents(video)
        return {
            "latents.npy": latents.astype(self.dtype),
            "scene_latents.npy": self.encode_images(scene).astype(self.dtype),
            "text.npy": self.encode_text(prompt).astype(self.dtype),
        }


def make_encoder(
    name: str,
    vae: str | None = None,
    text_encoder: str | None = None,
    tokenizer: str | None = None,
    device: str = "cpu",
    dtype: str = "float16",
):
    if name == "none":
        return PixelEncoder()
    if name == "wan":
        return WanEncoder(vae, text_encoder, tokenizer, device, dtype)
    raise CineSceneError(f"unknown encoder {name!r} (expected 'wan' or 'none')")
