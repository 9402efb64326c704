"""Credentials never leave the process: masked by value wherever a config or a log line goes out.

What is a secret:

- the value of an environment variable that is a credential by name: a name
  with a credential word as one of its ``_``-separated parts (``WANDB_API_KEY``,
  ``HF_TOKEN``, ``AWS_SECRET_ACCESS_KEY``; not ``TOKENIZERS_PARALLELISM``);
- the value of a config entry that is a credential by name: its key is one of
  :data:`CREDENTIAL_KEYS` (``api_key``, ``password``, ``secret``, ...), matched
  whole, never as a part of a longer name.

Masking is by value: the entry of a credential key becomes ``***``, and every
occurrence of a secret value inside any other string becomes ``***``. Whatever
the project writes or prints passes through here: ``--print-config`` of every
command, ``submit``/``sweep`` dry runs and tables, ``config.yaml`` (and the
checkpoint's copy), each SLURM start record and trial record, an export's
``cinescene.json`` and ``cinescene_config.yaml``, a sample's mp4 metadata and
JSON sidecar, an evaluation's records, every ``wandb.init`` argument and our
log lines. Nothing
is masked for its key name alone, so model fields such as
``num_register_tokens`` or ``vggt_tokens`` are never touched and a masked
config still loads and trains.
No torch here: ``--print-config`` runs before anything heavy is imported.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

MASK = "***"
# Config keys that hold a credential (compared lower-case, whole key only).
CREDENTIAL_KEYS = frozenset(
    {
        "api_key",
        "apikey",
        "password",
        "passwd",
        "secret",
        "secret_key",
        "access_key",
        "access_token",
        "auth_token",
        "hf_token",
        "wandb_api_key",
    }
)
# Environment variable names that hold a credential: a credential word as a whole `_`-separated part.
CREDENTIAL_ENV = re.compile(
    r"(^|_)(TOKEN|SECRET|PASSWORD|PASSWD|APIKEY|(API|ACCESS|PRIVATE|AUTH|SECRET)_KEY)(_|$)"
)
# Shorter values are not searched for inside other strings: they would match by chance ("true", a port).
MIN_SECRET_LEN = 8


def is_credential_key(key: Any) -> bool:
    return str(key).lower() in CREDENTIAL_KEYS


def _credential_values(tree: Any) -> Iterable[str]:
    if isinstance(tree, Mapping):
        for key, value in tree.items():
            if is_credential_key(key) and isinstance(value, str) and value:
                yield value
            else:
                yield from _credential_values(value)
    elif isinstance(tree, (list, tuple)):
        for item in tree:
            yield from _credential_values(item)


def secret_values(environ: Mapping[str, str] | None = None, config: Any = None) -> list[str]:
    """The secret values to mask inside strings, longest first (so a longer secret is masked whole)."""
    environ = os.environ if environ is None else environ
    found = {v for k, v in environ.items() if CREDENTIAL_ENV.search(k.upper())}
    found.update(_credential_values(config))
    return sorted((v for v in found if len(v) >= MIN_SECRET_LEN), key=len, reverse=True)


def mask_text(text: str, secrets: Iterable[str]) -> str:
    for value in secrets:
        text = text.replace(value, MASK)
    return text


def masked_text(text: str, config: Any = None) -> str:
    """``text`` (a command line, a table) with the environment's secrets and ``config``'s credential values
    masked: what a command prints or writes that is not a config tree."""
    return mask_text(text, secret_values(config=config))


def scrub(obj: Any, secrets: list[str] | None = None) -> Any:
    """A copy of a tree of dicts, lists and scalars with every secret masked (see the module doc).

    ``secrets``: the values to mask; by default the environment's credentials
    and the credential entries of ``obj`` itself.
    """
    secrets = secret_values(config=obj) if secrets is None else secrets
    if isinstance(obj, Mapping):
        return {
            k: (MASK if is_credential_key(k) and isinstance(v, str) and v else scrub(v, secrets))
            for k, v in obj.items()
        }
    if isinstance(obj, (list, tuple)):
        return [scrub(v, secrets) for v in obj]
    if isinstance(obj, str):
        return mask_text(obj, secrets)
    return obj
