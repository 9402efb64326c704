"""Stand-ins for the Wan encoders on ``encoder=none`` shards (CPU-scale runs and tests).

* Pixel proxy: frames 0, 4, 8, ... (Wan's temporal stride), scaled to [-1, 1],
  average-pooled by ``data.pixel_pool`` -> (3, T, H/p, W/p). Same layout as VAE
  latents, so the model code cannot tell the difference except for C = 3.
* Hashed text embedding: each lower-cased word maps to a fixed standard-normal
  vector seeded by a hash of the word (stable across processes, machines and
  Python versions -- never Python's salted ``hash``); one row per word, zero
  rows after the prompt up to ``model.text_len``, like umT5 padding in Wan.
"""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache

import numpy as np

from .encoders import TEMPORAL_STRIDE


def pool(pixels: np.ndarray, factor: int) -> np.ndarray:
    """uint8 (..., H, W, 3) -> float32 (..., 3, H/f, W/f) in [-1, 1], average-pooled."""
    x = pixels.astype(np.float32) / 127.5 - 1.0
    *lead, height, width, channels = x.shape
    x = x.reshape(*lead, height // factor, factor, width // factor, factor, channels).mean(axis=(-4, -2))
    return np.moveaxis(x, -1, -3)


def video_proxy(frames: np.ndarray, factor: int) -> np.ndarray:
    """uint8 (F, H, W, 3) -> float32 (3, T, H/f, W/f) from frames 0, 4, 8, ..."""
    return np.moveaxis(pool(frames[::TEMPORAL_STRIDE], factor), 0, 1)


@lru_cache(maxsize=1 << 16)
def word_vector(word: str, dim: int) -> np.ndarray:
    seed = int.from_bytes(hashlib.blake2b(word.encode("utf-8"), digest_size=8).digest(), "little")
    vector = np.random.Generator(np.random.PCG64(seed)).standard_normal(dim).astype(np.float32)
    vector.flags.writeable = False
    return vector


def words(prompt: str) -> list:
    return re.findall(r"[a-z0-9]+", prompt.lower())


def hashed_text(prompt: str, dim: int, length: int) -> np.ndarray:
    """(length, dim) float32: one hashed vector per word, zero rows after the prompt."""
    out = np.zeros((length, dim), dtype=np.float32)
    for i, word in enumerate(words(prompt)[:length]):
        out[i] = word_vector(word, dim)
    return out


def pad_text(embedding: np.ndarray, length: int) -> np.ndarray:
    """Real-token embeddings (L, D) -> (length, D) float32, zero-padded or truncated."""
    out = np.zeros((length, embedding.shape[1]), dtype=np.float32)
    n = min(length, len(embedding))
    out[:n] = embedding[:n]
    return out
