"""The trainer record: what a checkpoint says about the run that saved it (``trainer_state.json``).

One typed record, built by the trainer's save and read back by resume,
``cinescene ckpt info`` and export; nothing else writes or parses the file.
Reading checks every field's type, so a hand-edited or cut file is a
:class:`~.errors.DamagedCheckpointError` naming it, not a KeyError later.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, asdict, dataclass, fields
from enum import Enum
from pathlib import Path
from typing import Any

from .errors import DamagedCheckpointError
from .layout import TRAINER_STATE


class SaveReason(str, Enum):
    """Why a checkpoint was saved (the record's ``reason``)."""

    EVERY_STEPS = "every_steps"  # checkpoint.every_steps
    FINAL = "final"  # train.max_steps reached
    PREEMPTION = "preemption"  # a preemption signal: saved at the next step boundary, then exit 124


#: 2: rank states as safetensors + JSON (1 pickled them), a manifest, the model name and EMA flag.
FORMAT_VERSION = 2


@dataclass(frozen=True)
class TrainerRecord:
    step: int  # optimizer steps done
    consumed_samples: int  # global samples consumed: the data cursor, world-size independent
    global_batch_size: int
    world_size: int  # ranks at save
    dp_size: int
    sp_size: int
    zero_stage: int
    precision: str  # train.precision
    model_name: str  # model.name
    params: dict[str, list[int]]  # every parameter's full shape
    trainable: list[str]  # names of the trained parameters (the ones in the ZeRO shards)
    run_name: str
    ema: bool  # rank states hold an EMA of the trainable weights
    reason: str  # why it was saved: a SaveReason value
    saved_at: str  # local time, ISO 8601
    wandb_run_id: str | None = None
    format: int = FORMAT_VERSION

    @property
    def parameter_count(self) -> int:
        return sum(math.prod(shape) for shape in self.params.values())

    @property
    def trainable_count(self) -> int:
        return sum(math.prod(self.params[name]) for name in self.trainable if name in self.params)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, source: Path) -> TrainerRecord:
        try:
            body = json.loads(text)
        except ValueError as exc:
            raise DamagedCheckpointError(source, f"corrupt JSON ({exc})") from None
        if not isinstance(body, dict):
            raise DamagedCheckpointError(source, "corrupt: not a JSON object")
        if body.get("format") != FORMAT_VERSION:
            raise DamagedCheckpointError(
                source,
                f"written in checkpoint format {body.get('format')!r}; this "
                f"version reads format {FORMAT_VERSION} only (format 1 pickled its "
                "rank states, which are never unpickled)",
            )
        values: dict[str, Any] = {}
        for spec in fields(cls):  # keys this version does not know are ignored
            if spec.name in body:
                values[spec.name] = body[spec.name]
            elif spec.default is not MISSING:
                values[spec.name] = spec.default
            else:
                raise DamagedCheckpointError(source, f"corrupt: no {spec.name!r}")
        record = cls(**values)
        record._check(source)
        return record

    def _check(self, source: Path) -> None:
        def bad(name: str, want: str) -> DamagedCheckpointError:
            return DamagedCheckpointError(
                source, f"corrupt: {name} is {getattr(self, name)!r:.60}, expected {want}"
            )

        for name in (
            "step",
            "consumed_samples",
            "global_batch_size",
            "world_size",
            "dp_size",
            "sp_size",
            "zero_stage",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise bad(name, "an integer >= 0")
        for name in ("precision", "model_name", "run_name", "reason", "saved_at"):
            if not isinstance(getattr(self, name), str):
                raise bad(name, "a string")
        if not isinstance(self.ema, bool):
            raise bad("ema", "true or false")
        if self.wandb_run_id is not None and not isinstance(self.wandb_run_id, str):
            raise bad("wandb_run_id", "a string or null")
        if not (
            isinstance(self.params, dict)
            and all(
                isinstance(k, str) and isinstance(v, list) and all(isinstance(d, int) for d in v)
                for k, v in self.params.items()
            )
        ):
            raise bad("params", "a map of names to shapes")
        if not (isinstance(self.trainable, list) and all(isinstance(n, str) for n in self.trainable)):
            raise bad("trainable", "a list of names")


def _names(items: list[str], limit: int = 6) -> str:
    more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def params_mismatch(saved: Mapping[str, Sequence[int]], current: Mapping[str, Sequence[int]]) -> list[str]:
    """What differs between two {parameter: shape} maps (a checkpoint's and a model's), one phrase each."""
    saved = {k: list(v) for k, v in saved.items()}
    current = {k: list(v) for k, v in current.items()}
    missing = sorted(set(saved) - set(current))
    unexpected = sorted(set(current) - set(saved))
    reshaped = sorted(k for k in set(saved) & set(current) if saved[k] != current[k])
    parts = []
    if reshaped:
        parts.append("shape differs: " + _names([f"{k} {saved[k]} vs {current[k]}" for k in reshaped]))
    if missing:
        parts.append("only in the checkpoint: " + _names(missing))
    if unexpected:
        parts.append("only in this model: " + _names(unexpected))
    return parts


def read_record(step_dir: Path | str) -> TrainerRecord:
    """The trainer record of a step directory (DamagedCheckpointError naming the file when unusable)."""
    path = Path(step_dir) / TRAINER_STATE
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise DamagedCheckpointError(path, "missing") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DamagedCheckpointError(path, f"unreadable ({exc})") from None
    return TrainerRecord.from_json(text, path)
