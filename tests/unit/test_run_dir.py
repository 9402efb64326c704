"""The run directory's one owner: every name inside it, and metrics.jsonl's one writer and reader, which
reads the rows a crash (a torn last line) or a damaged copy left."""

from __future__ import annotations

import json

import pytest

from cinescene.errors import CineSceneError
from cinescene.run_dir import MetricsFile, RunDir


def test_every_path_of_a_run_directory_comes_from_its_owner(tmp_path):
    run = RunDir(tmp_path)
    assert run.checkpoints == tmp_path / "checkpoints" and run.config == tmp_path / "config.yaml"
    assert (
        run.metrics.path == tmp_path / "metrics.jsonl" and run.rank_log(3) == tmp_path / "logs" / "rank3.log"
    )
    assert run.wandb == tmp_path / "wandb" and run.lock == tmp_path / "run.lock"
    assert run.slurm_jobs == tmp_path / "slurm" / "jobs" and run.trial == tmp_path / "slurm" / "trial.json"
    assert run.job_log("12_3") == tmp_path / "slurm" / "12_3.out"
    assert run.start_record("12", 2) == tmp_path / "slurm" / "12.start-2.json"
    assert not any(tmp_path.iterdir())  # asking creates nothing


def test_metrics_rows_survive_a_torn_last_line_and_damaged_lines(tmp_path):
    metrics = MetricsFile(tmp_path / "metrics.jsonl")
    assert metrics.rows() == [] and metrics.last() == {}
    with metrics.open_append() as handle:
        for step in (1, 2, 3):
            metrics.write_row(handle, step, {"loss": 1.0 / step, "grad_norm": float("nan")})
    with open(metrics.path, "a") as handle:
        handle.write("\x00\x00garbage\n[1, 2]\n" + '{"loss": 9}\n' + '{"step": 4, "lo')  # a crash mid-write
    rows = metrics.rows()
    assert [r["step"] for r in rows] == [1, 2, 3] and rows[0]["grad_norm"] == "nan"
    assert metrics.last() == {"step": 3, "loss": 1.0 / 3, "grad_norm": "nan"}
    assert metrics.keep_through(2) == 5  # step 3 and every damaged line
    assert [json.loads(line)["step"] for line in metrics.path.read_text().splitlines()] == [1, 2]
    metrics.path.write_bytes(b'{"step": 1, "loss": 0.5}\n\xff\xfe{"step": 2}\n')  # not UTF-8 in the middle
    assert [r["step"] for r in metrics.rows()] == [1]


def test_a_metrics_path_that_is_not_a_file_is_one_line(tmp_path):
    (tmp_path / "metrics.jsonl").mkdir()
    with pytest.raises(CineSceneError, match="cannot read the metrics"):
        MetricsFile(tmp_path / "metrics.jsonl").rows()
