"""``report.html``: an evaluation, or an ablation, as one page people look at.

What it shows: the metrics table; then per held-out sample the generated video (one per model) next to the
ground truth, the scene images the model was given, and the requested vs recovered camera trajectories in
top and side view (:mod:`cinescene.eval.trajectory_plot`), with the sample's numbers.

Self-contained: videos and images are embedded as ``data:`` URIs and the plots as inline SVG; no script,
no style sheet, font or image from anywhere else. The file opens from disk in a browser, offline, without
a server, and can be moved or attached on its own; its size is about the sum of its videos (tens of KB per
video at the CPU scales, a few MB at 81x480x832).

Both pages are built from what the evaluations wrote (``metrics.json`` and the files its records name), so
a report can be rebuilt at any time: :func:`write_eval_report` for ``cinescene eval --out DIR`` and the
training hook's step directories, :func:`write_ablation_report` for ``cinescene bench ablation``.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape
from pathlib import Path

from .report import PAPER, format_metric, metric_title
from .trajectory_plot import sample_trajectory_svg

REPORT = "report.html"
STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; max-width: 1400px; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; } h3 { font-size: 1em; margin: 0 0 .3em; }
p.meta { color: #555; font-size: .9em; margin: .2em 0; }
table { border-collapse: collapse; font-size: .85em; margin: .6em 0; }
th, td { border: 1px solid #ccc; padding: .25em .5em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
tr.floor td { color: #555; font-style: italic; background: #f6f6f6; }
tr.paper td { color: #777; }
section.sample { border-top: 1px solid #ddd; padding-top: .8em; margin-top: 1em; }
.row { display: flex; flex-wrap: wrap; gap: 10px; align-items: flex-start; }
figure { margin: 0; } figcaption { font-size: .8em; color: #444; max-width: 260px; }
video { width: 192px; image-rendering: pixelated; background: #000; display: block; }
img.scene { height: 96px; image-rendering: pixelated; display: block; }
.numbers { font-size: .8em; color: #333; margin: .3em 0; }
"""
MIME = {".mp4": "video/mp4", ".png": "image/png"}


def _embed(path: Path | None) -> str | None:
    """A ``data:`` URI of the file (None when there is none, or it is no mp4 or PNG)."""
    if path is None or path.suffix not in MIME or not path.is_file():
        return None
    return f"data:{MIME[path.suffix]};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def _figure(inner: str, caption: str) -> str:
    return f"<figure>{inner}<figcaption>{escape(caption)}</figcaption></figure>"


def video_html(path: Path | None, caption: str) -> str:
    """A looping, muted, autoplaying video (every frame, with controls), or a line saying it is absent."""
    uri = _embed(path)
    if uri is None:
        return _figure('<div class="numbers">(no video)</div>', caption)
    return _figure(
        f'<video src="{uri}" controls autoplay muted loop playsinline preload="auto"></video>', caption
    )


def image_html(path: Path | None, caption: str) -> str:
    uri = _embed(path)
    if uri is None:
        return ""
    return _figure(f'<img class="scene" src="{uri}" alt="{escape(caption)}">', caption)


def table_html(header: Sequence[str], rows: Sequence[tuple[Sequence[str], str]], table_id: str) -> str:
    """A table; each row is (cells, CSS class of the row)."""
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join(
        f'<tr class="{css}">' + "".join(f"<td>{escape(str(c))}</td>" for c in cells) + "</tr>"
        for cells, css in rows
    )
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def sfm_cell(record: dict) -> str:
    """What SfM made of one sample: registered frames, or why it failed."""
    sfm = record.get("sfm")
    if sfm is None:
        return "–"
    if sfm.get("failure"):
        return f"failed: {sfm['failure']}"
    return f"{sfm['registered']}/{sfm['frames']}"


def sfm_fraction(sfm_failures: int, sfm_attempts: int) -> str:
    if not sfm_attempts:
        return "–"
    registered = sfm_attempts - sfm_failures
    return f"{registered} of {sfm_attempts} ({100 * registered / sfm_attempts:.0f}%)"


@dataclass
class Model:
    """One model's evaluation of the samples (an ablation arm, a floor, or the only one)."""

    label: str
    directory: Path  # where its metrics.json's relative paths start
    records: dict[str, dict]  # key -> its samples/<key>.json record
    shows_video: bool = True  # floors have no generated video of their own

    def file(self, key: str, name: str) -> Path | None:
        """The file ``name`` of ``key``'s record names, if it lies where evaluations write: in the directory
        or in the reference folders beside it (the training hook shares those between its steps). A record
        is data, never a way to put another file into the page."""
        from .evaluate import GROUND_TRUTH, SCENE_IMAGES

        relative = self.records.get(key, {}).get(name)
        if not isinstance(relative, str) or not relative:
            return None
        path = (self.directory / relative).resolve()
        home = self.directory.resolve()
        allowed = (home, home.parent / GROUND_TRUTH, home.parent / SCENE_IMAGES)
        return path if any(path.is_relative_to(root) for root in allowed) else None


@dataclass
class Samples:
    """The held-out samples in page order, and the models evaluated on them."""

    keys: list[str]
    models: list[Model] = field(default_factory=list)

    def reference(self, key: str, name: str) -> Path | None:
        """The file ``name`` (ground truth, scene images) of the first model that recorded one for ``key``."""
        return next((path for path in (m.file(key, name) for m in self.models) if path is not None), None)


def _numbers(record: dict, names: Sequence[str]) -> str:
    cells = [f"{metric_title(n)} {format_metric(record.get('metrics', {}).get(n), n)}" for n in names]
    if record.get("sfm"):
        cells.append(f"SfM {sfm_cell(record)}")
    return " · ".join(cells)


def sample_sections(samples: Samples, names: Sequence[str]) -> str:
    """Per sample: ground truth, each model's video and numbers, the scene images, the trajectories."""
    sections = []
    for key in samples.keys:
        first = next((m.records[key] for m in samples.models if key in m.records), {})
        media = [video_html(samples.reference(key, "ground_truth"), "ground truth")]
        numbers = []
        for model in samples.models:
            record = model.records.get(key)
            if record is None:
                continue
            if model.shows_video:
                media.append(video_html(model.file(key, "video"), model.label))
            numbers.append(f"<div><b>{escape(model.label)}</b>: {escape(_numbers(record, names))}</div>")
        media.append(image_html(samples.reference(key, "scene_images"), "scene images given to the model"))
        plot = sample_trajectory_svg({m.label: m.records[key] for m in samples.models if key in m.records})
        sections.append(
            f'<section class="sample" id="sample-{escape(key)}"><h3>{escape(key)}</h3>'
            f'<p class="meta">{escape(first.get("prompt") or "")}</p>'
            f'<div class="row">{"".join(media)}</div>'
            f'<div class="numbers">{"".join(numbers)}</div>'
            + (
                f'<div class="row">{_figure(plot, "camera trajectory: requested vs recovered by SfM")}</div>'
                if plot
                else ""
            )
            + "</section>"
        )
    return "".join(sections)


def page(title: str, meta: Sequence[str], body: str) -> str:
    lines = "".join(f'<p class="meta">{escape(line)}</p>' for line in meta)
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title><style>{STYLE}</style></head>"
        f"<body><h1>{escape(title)}</h1>{lines}{body}</body></html>\n"
    )


def write_page(path: Path, text: str) -> Path:
    """Written under a temporary name and renamed: a reader never sees half a page."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def write_report_page(
    path: Path,
    title: str,
    meta: Sequence[str],
    tables: Sequence[tuple[str, str]],
    samples: Samples,
    names: Sequence[str],
) -> Path:
    """A report page: ``meta`` lines, the ``(heading, table_html)`` tables, then the samples."""
    body = "".join(f"<h2>{escape(heading)}</h2>{table}" for heading, table in tables)
    body += f"<h2>Samples</h2>{sample_sections(samples, names)}"
    return write_page(path, page(title, meta, body))


def write_eval_report(out: Path, data: dict, label: str) -> Path:
    """``out/report.html`` of one evaluation (``data``: its metrics.json): the means beside the paper's, one
    row per sample, then the samples."""
    names = data["metrics"]
    mean_row = [label, *(format_metric(data["mean"][n], n) for n in names)]
    summary = table_html(
        ["", *(metric_title(n) for n in names), "SfM registered"],
        [
            (["CineScene (paper)", *(format_metric(PAPER.get(n), n) for n in names), "–"], "paper"),
            ([*mean_row, sfm_fraction(data["sfm_failures"], data["sfm_attempts"])], "mean"),
        ],
        "summary",
    )
    records = data["samples"]
    per_sample = table_html(
        ["sample", *(metric_title(n) for n in names), "SfM"],
        [
            ([r["key"], *(format_metric(r["metrics"].get(n), n) for n in names), sfm_cell(r)], "sample")
            for r in records
        ],
        "samples",
    )
    settings = data["settings"]
    meta = [
        f"{data['weights']} weights of {data['checkpoint']} (step {data['step']}); {len(records)} held-out "
        f"samples of {data['data']}; {settings['steps']} sampling steps, guidance {settings['cfg']}, seed "
        f"{settings['seed']}.",
        *(f"left out, unreadable: {why}" for why in data.get("unreadable", {}).values()),
        "The paper's row comes from its own test set and matcher (docs/EVAL.md): for scale only.",
    ]
    samples = Samples([r["key"] for r in records], [Model("generated", out, {r["key"]: r for r in records})])
    tables = [("Means", summary), ("Per sample", per_sample)]
    return write_report_page(out / REPORT, f"Evaluation: {label}", meta, tables, samples, names)


__all__ = [
    "REPORT",
    "Model",
    "Samples",
    "page",
    "sample_sections",
    "table_html",
    "write_eval_report",
    "write_page",
    "write_report_page",
]
