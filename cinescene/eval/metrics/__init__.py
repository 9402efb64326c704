"""The paper's metrics as plain functions on arrays, and a registry by name.

One module per kind of measurement, each usable on its own:

- :mod:`.pixels`: ``psnr``, ``ssim`` per frame (optionally on a mask), ``background_mask``
- :mod:`.clip`: ``load_clip``, ``clip_v``, ``clip_t`` (transformers CLIPModel from a local path)
- :mod:`.sfm`: ``estimate_poses`` (pycolmap SfM with fixed intrinsics)
- :mod:`.camera`: ``camera_errors`` (RotErr, TransErr, CamMC as CamI2V)
- :mod:`.matching`: ``matched_pixels`` (Mat.Pix.: matcher + USAC MAGSAC), ``register_matcher``
- :mod:`.registry`: ``REGISTRY`` (name -> Metric), ``MetricInputs``, ``MetricContext``, ``compute_metrics``

Definitions and the choices behind them: docs/EVAL.md. Heavy libraries
(OpenCV, pycolmap, transformers) are imported when a metric first needs them.
"""

from .registry import REGISTRY, Metric, MetricContext, MetricInputs, SampleMetrics, compute_metrics

__all__ = ["REGISTRY", "Metric", "MetricContext", "MetricInputs", "SampleMetrics", "compute_metrics"]
