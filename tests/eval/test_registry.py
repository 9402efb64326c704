"""The registry: names, absent inputs, and the report's handling of inf and absent values."""

from __future__ import annotations

import json

import numpy as np

from cinescene.config.eval import METRIC_NAMES, EvalConfig
from cinescene.eval import report
from cinescene.eval.metrics import REGISTRY, MetricContext, MetricInputs, compute_metrics


def test_the_registry_holds_exactly_the_configurable_metrics_in_table_order():
    assert tuple(REGISTRY) == METRIC_NAMES
    assert [REGISTRY[n].title for n in METRIC_NAMES[:8]] == [
        "Mat.Pix.",
        "CLIP-V",
        "PSNR",
        "SSIM",
        "RotErr",
        "TransErr",
        "CamMC",
        "CLIP-T",
    ]


def test_missing_inputs_give_absent_values_with_reasons():
    video = np.random.default_rng(0).integers(0, 256, (3, 24, 24, 3), dtype=np.uint8)
    cfg = EvalConfig(metrics=["psnr", "bg_psnr", "rot_err", "mat_pix"])
    result = compute_metrics(
        MetricInputs(generated=video, ground_truth=video), cfg.metrics, MetricContext(cfg)
    )
    assert result.values == {"psnr": float("inf"), "bg_psnr": None, "rot_err": None, "mat_pix": None}
    assert "background" in result.missing["bg_psnr"] and "cameras" in result.missing["rot_err"]
    assert result.per_frame["psnr"] == [float("inf")] * 3


def test_the_report_writes_inf_as_a_string_and_averages_what_is_there():
    records = [
        {"metrics": {"psnr": "inf", "ssim": 0.5, "rot_err": None}},
        {"metrics": {"psnr": 20.0, "ssim": 0.7, "rot_err": 1.5}},
    ]
    summary = report.aggregate(records, ["psnr", "ssim", "rot_err"])
    assert summary["mean"]["psnr"] == float("inf") and abs(summary["mean"]["ssim"] - 0.6) < 1e-12
    assert summary["mean"]["rot_err"] == 1.5 and summary["count"] == {"psnr": 2, "ssim": 2, "rot_err": 1}
    encoded = json.dumps({k: report.json_number(v) for k, v in summary["mean"].items()})
    assert json.loads(encoded)["psnr"] == "inf" and "Infinity" not in encoded
    assert report.json_number(float("nan")) is None and report.number("inf") == float("inf")
