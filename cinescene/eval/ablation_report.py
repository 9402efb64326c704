"""What `cinescene bench ablation` reports: the table (markdown and HTML), the goals as measured, report.html.

``results`` is what ``ablation.json`` holds (:func:`cinescene.eval.ablation.run`): per arm its label, the
switches that make it (``camera``, ``scene``), its training (steps, wall time, final loss) and its
evaluation (means, counts, SfM failures, the evaluation directory); per floor (:mod:`.heldout_floor`) the
same evaluation fields. The table has one row per arm, then the floors of the same held-out clips.

Goals (the issues that asked for the two ablations), each stated with what was measured:

* scene context: the best scene-context arm gains >= 3 dB background PSNR over the arm with the same
  camera conditioning and no scene context;
* camera conditioning: it cuts CamMC by >= 30 % against no camera conditioning (both without scene
  context), and the scene-context arms keep that CamMC while gaining background PSNR.

CamMC means are over the clips where SfM registered, which differ from arm to arm; each camera comparison
is also given over the clips both arms registered (paired), which is the fair one.
"""

from __future__ import annotations

import json
from pathlib import Path

from .html_report import Model, Samples, sfm_fraction, table_html, write_report_page
from .report import format_metric, metric_title

SCENE_GOAL_DB = 3.0
CAMERA_GOAL = 0.30  # CamMC cut of camera conditioning against none
REPORT = "report.html"


# ------------------------------------------------------------------------------------------- the table
def table_rows(results: dict) -> tuple[list[str], list[tuple[list[str], str]]]:
    """(header, rows as (cells, "arm" | "floor")): one row per arm, then one per floor."""
    names = results["metrics"]
    header = [
        "arm",
        "steps",
        "train wall (CPU)",
        "final loss",
        *(metric_title(n) for n in names),
        "SfM registered",
    ]
    attention = any(row.get("attention") for row in results["arms"])
    if attention:
        header.append("context attention (uniform)")
    rows = []
    for row in results["arms"]:
        cells = [
            row["label"],
            str(row["steps"]),
            _train_time(row["train"]),
            "–" if row["final_loss"] is None else f"{row['final_loss']:.4f}",
        ]
        rows.append((cells + _evaluation_cells(row["eval"], names) + _attention_cell(row, attention), "arm"))
    for floor in results.get("floors", []):
        cells = [f"floor: {floor['label']}", "–", "–", "–"]
        rows.append((cells + _evaluation_cells(floor["eval"], names) + (["–"] if attention else []), "floor"))
    return header, rows


def _train_time(timing: dict) -> str:
    """Wall minutes, and the CPU minutes of the training processes where recorded (shared cores stretch the
    wall time, not the CPU time)."""
    wall = f"{timing['wall_s'] / 60:.1f} min"
    return wall if timing.get("cpu_s") is None else f"{wall} ({timing['cpu_s'] / 60:.1f} CPU-min)"


def _evaluation_cells(evaluation: dict, names) -> list[str]:
    cells = [format_metric(evaluation["mean"].get(n), n) for n in names]
    return cells + [sfm_fraction(evaluation.get("sfm_failures", 0), evaluation.get("sfm_attempts", 0))]


def _attention_cell(row: dict, shown: bool) -> list[str]:
    if not shown:
        return []
    probe = row.get("attention")
    return ["–" if probe is None else f"{probe['mass']:.3f} ({probe['uniform']:.3f})"]


def table(results: dict) -> str:
    """table.md: the markdown table and the notes under it (budget, command, goals)."""
    header, rows = table_rows(results)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells, _ in rows]
    return "\n".join(lines + [""] + notes(results)) + "\n"


def notes(results: dict) -> list[str]:
    budget = results["budget"]
    lines = [
        f"Held-out: {budget['heldout_samples']} clips of scenes never trained on ({budget['heldout']}); "
        f"{budget['sample_steps']} sampling steps, guidance {budget['cfg_scale']}, "
        f"{'EMA' if budget['ema'] else 'trained'} weights. SfM registered: clips whose every camera frame "
        "registered; camera errors are means over those (failures are counted, not averaged, as CamI2V).",
        f"Budget per arm: {budget['steps']} steps of {budget['global_batch']} clips (seed {budget['seed']}, "
        f"lr {budget['lr']}, {budget['train_clips']} training clips), {budget['nproc']} CPU rank(s); model "
        f"{budget['model']}; data {budget['data']}.",
        f"Command: `{results['command']}` ({results['date']}, commit {results['commit'] or 'unknown'}, "
        f"{results['device']}).",
    ]
    return lines + [f"Goal: {g}" for g in results.get("goals", [])]


# ------------------------------------------------------------------------------------------- the goals
def _arm(rows: list[dict], camera: bool, scene: bool) -> dict | None:
    return next((r for r in rows if r["camera"] == camera and r["scene"]["enabled"] == scene), None)


def _mean(row: dict, name: str) -> float | None:
    value = row["eval"]["mean"].get(name)
    return None if value is None else float(value)


def paired_cam_mc(a: dict, b: dict) -> tuple[float, float, int] | None:
    """Mean CamMC of arms ``a`` and ``b`` over the clips where SfM registered for both: (a, b, clips)."""
    per_a, per_b = a["eval"].get("per_sample", {}), b["eval"].get("per_sample", {})
    both = [
        k
        for k in per_a
        if per_a[k].get("cam_mc") is not None and (per_b.get(k) or {}).get("cam_mc") is not None
    ]
    if not both:
        return None
    return (
        sum(per_a[k]["cam_mc"] for k in both) / len(both),
        sum(per_b[k]["cam_mc"] for k in both) / len(both),
        len(both),
    )


def _registered(row: dict) -> str:
    return sfm_fraction(row["eval"].get("sfm_failures", 0), row["eval"].get("sfm_attempts", 0))


def goals(rows: list[dict]) -> list[str]:
    """Each goal of the module doc that these arms can answer, as measured (met or not, and by how much)."""
    out = []
    with_camera = _arm(rows, camera=True, scene=False)
    without = _arm(rows, camera=False, scene=False)
    scene_arms = [r for r in rows if r["scene"]["enabled"] and r["camera"]]
    if with_camera is not None and without is not None:
        out.append(_camera_goal(with_camera, without))
    if with_camera is not None and scene_arms:
        base = _mean(with_camera, "bg_psnr")
        gains = [(r, _mean(r, "bg_psnr")) for r in scene_arms]
        gains = [(r, v - base) for r, v in gains if v is not None and base is not None]
        if gains:
            best, db = max(gains, key=lambda item: item[1])
            verdict = "met" if db >= SCENE_GOAL_DB else "missed"
            out.append(
                f"scene context gains >= {SCENE_GOAL_DB:g} dB background PSNR over '{with_camera['label']}': "
                f"{verdict}; best {best['label']} {db:+.2f} dB ("
                + ", ".join(f"{r['label']} {d:+.2f} dB" for r, d in gains)
                + ")."
            )
        if without is not None:
            for arm in scene_arms:
                paired = paired_cam_mc(arm, with_camera)
                if paired is None:
                    out.append(
                        f"'{arm['label']}' keeps the CamMC of '{with_camera['label']}': not measurable, no "
                        f"clip registered for both (SfM registered {_registered(arm)} and "
                        f"{_registered(with_camera)})."
                    )
                else:
                    mine, theirs, n = paired
                    out.append(
                        f"'{arm['label']}' keeps the CamMC of '{with_camera['label']}': {mine:.2f} against "
                        f"{theirs:.2f} on the {n} clips both registered ({100 * (mine / theirs - 1):+.0f}%)."
                    )
    return out


def _camera_goal(with_camera: dict, without: dict) -> str:
    goal = f"camera conditioning cuts CamMC by >= {100 * CAMERA_GOAL:.0f}% against '{without['label']}'"
    paired = paired_cam_mc(with_camera, without)
    if paired is None:
        return (
            f"{goal}: not measurable, no clip registered for both (SfM registered {_registered(with_camera)} "
            f"with camera conditioning, {_registered(without)} without)."
        )
    mine, theirs, n = paired
    cut = 1 - mine / theirs if theirs > 0 else 0.0
    unpaired = [_mean(with_camera, "cam_mc"), _mean(without, "cam_mc")]
    return (
        f"{goal}: {'met' if cut >= CAMERA_GOAL else 'missed'}; {mine:.2f} against {theirs:.2f} on the {n} "
        f"clips both registered ({100 * cut:+.0f}% cut); means over each arm's own registered clips "
        f"{format_metric(unpaired[0], 'cam_mc')} against {format_metric(unpaired[1], 'cam_mc')}."
    )


# ---------------------------------------------------------------------------------------- report.html
def _records(directory: Path) -> dict[str, dict]:
    data = json.loads((directory / "metrics.json").read_text())
    return {r["key"]: r for r in data["samples"]}


def write_html(root: Path, results: dict) -> Path:
    """``root/report.html``: the table, then per held-out sample the ground truth, every arm's video, the
    scene images and every arm's recovered trajectory against the requested one (and the floor's)."""
    header, rows = table_rows(results)
    models = [
        Model(row["label"], Path(row["eval"]["dir"]), _records(Path(row["eval"]["dir"])))
        for row in results["arms"]
    ]
    models += [
        Model(
            f"floor: {f['label']}",
            Path(f["eval"]["dir"]),
            _records(Path(f["eval"]["dir"])),
            shows_video=False,
        )
        for f in results.get("floors", [])
    ]
    keys = list(models[-1].records) if models else []
    for model in models:
        keys += [k for k in model.records if k not in keys]
    meta = [line.replace("`", "") for line in notes(results)]
    tables = [("Arms and floors", table_html(header, rows, "arms"))]
    return write_report_page(
        root / REPORT, f"Ablation: {results['name']}", meta, tables, Samples(keys, models), results["metrics"]
    )


__all__ = ["goals", "notes", "paired_cam_mc", "table", "table_rows", "write_html"]
