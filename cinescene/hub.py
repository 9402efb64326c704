"""Pretrained weights named by a local path or by a Hugging Face repo id, resolved from the local cache only.

Every option that names pretrained weights (``model.pretrained``, ``model.scene.vggt.weights``,
``eval.clip.weights``, `data prepare` / `sample` ``--vae``, ``--text-encoder`` and ``--tokenizer``)
goes through :func:`resolve_weights`:

- a path that exists is used as it is;
- otherwise a value of the form ``org/name`` (``Wan-AI/Wan2.1-T2V-1.3B-Diffusers``,
  ``facebook/VGGT-1B``, ``openai/clip-vit-large-patch14``) is looked up in the Hugging Face cache,
  the layout ``huggingface_hub`` downloads into (``models--org--name/refs/main`` naming a snapshot
  under ``models--org--name/snapshots/``), and the snapshot directory of ``main`` is used;
- anything else is returned unchanged, so the caller reports the missing path in its own words.

Nothing is downloaded: training and evaluation nodes often have no network, and a run must not fetch
weights behind the user's back. The cache is ``HF_HUB_CACHE`` (default ``$HF_HOME/hub``,
``~/.cache/huggingface/hub``), as for every Hugging Face library; fill it beforehand with
``hf download org/name`` on a machine that has the network.
"""

from __future__ import annotations

import re
from pathlib import Path

from cinescene.errors import CineSceneError

# org/name as the Hub spells repo ids (letters, digits, '-', '_', '.'; one '/'); huggingface_hub's own
# validation then applies its finer rules (no '--' or '..', length).
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")


class WeightsNotFound(CineSceneError):
    """A repo id that is neither a local path nor in the local Hugging Face cache."""


def hub_cache_dir() -> Path:
    """The Hugging Face cache in effect (``HF_HUB_CACHE`` / ``HF_HOME``, as huggingface_hub reads them)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def is_repo_id(value: str) -> bool:
    return bool(_REPO_ID.fullmatch(value))


def resolve_weights(value: str | Path, what: str) -> Path:
    """The local path of the weights ``value`` names (module doc); ``what`` names the option in errors.

    Raises :class:`WeightsNotFound` (one line naming the repo id and the cache directory) for a repo id
    that is not a local path and not in the cache.
    """
    path = Path(value).expanduser()
    text = str(value)
    if path.exists() or not is_repo_id(text):
        return path
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.utils import HFValidationError, LocalEntryNotFoundError, validate_repo_id
    except ImportError:
        raise WeightsNotFound(
            f"{what}={text}: no such path, and huggingface_hub (which resolves repo ids) is not installed"
        ) from None
    try:
        validate_repo_id(text)
    except HFValidationError:
        return path  # not a repo id after all: the caller reports the missing path
    cache = hub_cache_dir()
    try:
        snapshot = Path(snapshot_download(text, cache_dir=cache, local_files_only=True))
    except LocalEntryNotFoundError:
        raise WeightsNotFound(
            f"{what}={text}: no such path, and the Hugging Face repo {text} is not in the local cache "
            f"{cache} (nothing is downloaded: run `hf download {text}` where there is network, with "
            "HF_HUB_CACHE or HF_HOME pointing at a cache this machine sees, or give a local path)"
        ) from None
    except (OSError, ValueError) as exc:  # an unreadable refs/main, a damaged cache entry
        raise WeightsNotFound(
            f"{what}={text}: the local Hugging Face cache entry of {text} in {cache} is unreadable "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'no detail'}); "
            f"download it again (`hf download {text}`) or give a local path"
        ) from None
    snapshots = (cache / f"models--{text.replace('/', '--')}" / "snapshots").resolve()
    if not snapshot.resolve().is_relative_to(snapshots):
        raise WeightsNotFound(
            f"{what}={text}: the local Hugging Face cache in {cache} names {snapshot} as the snapshot of "
            f"{text}, outside {snapshots}; download it again (`hf download {text}`) or give a local path"
        )
    return snapshot
