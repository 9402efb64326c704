"""RotErr, TransErr, CamMC: CamI2V's definitions, invariances and known values."""

from __future__ import annotations

import numpy as np
import pytest

from cinescene.eval.metrics import camera
from cinescene.sampling.cameras import preset


def _rotation_z(angle):
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])


def test_identical_trajectories_score_zero_whatever_the_world_frame_and_scale():
    path = preset("orbit_left", 9)
    world = np.eye(4)
    world[:3, :3] = _rotation_z(0.7)
    world[:3, 3] = [3.0, -2.0, 1.0]
    moved = world @ path
    moved[:, :3, 3] *= 7.5  # SfM's arbitrary scale (about the new origin)
    errors = camera.camera_errors(path, moved)
    assert all(abs(v) < 1e-6 for v in errors.values()), errors  # arccos near 1 resolves ~1e-8


def test_known_errors():
    gt = np.repeat(np.eye(4)[None], 3, 0)
    gt[:, 0, 3] = [0.0, 0.5, 1.0]  # a 1 m truck
    est = gt.copy()
    est[2, :3, :3] = _rotation_z(0.3)  # last frame turned 0.3 rad
    est[2, 0, 3] = 0.5  # ... and only half way: normalised by its own max, 0.5 -> 1
    errors = camera.camera_errors(gt, est)
    assert errors["rot_err"] == pytest.approx(0.3)
    # est translations / max(0.5) = [0, 1, 1]: frame 1 is 0.5 off, frame 2 exact
    assert errors["trans_err"] == pytest.approx(0.5)
    expected_mc = 0.5 + np.linalg.norm(_rotation_z(0.3) - np.eye(3))
    assert errors["cam_mc"] == pytest.approx(expected_mc)


def test_a_static_trajectory_does_not_divide_by_zero():
    still = preset("pan_left", 5)  # rotation only: every translation zero
    errors = camera.camera_errors(still, still)
    assert errors == {"rot_err": 0.0, "trans_err": 0.0, "cam_mc": 0.0}


def test_a_wrong_trajectory_scores_worse():
    right, wrong = preset("dolly_in", 9), preset("truck_left", 9)
    assert camera.camera_errors(right, wrong)["trans_err"] > 5
    assert camera.camera_errors(preset("pan_left", 9), preset("pan_right", 9))["rot_err"] > 5


def test_sfm_does_not_take_over_sigterm():
    """Importing pycolmap installs glog's crash handler on
    SIGTERM; a trainer's preemption handler must survive."""
    import subprocess
    import sys

    code = (
        "import os, signal, time\n"
        "signal.signal(signal.SIGTERM, lambda *_: print('flag set', flush=True))\n"
        "from cinescene.eval.metrics.sfm import import_pycolmap\n"
        "import_pycolmap()\n"
        "os.kill(os.getpid(), signal.SIGTERM)\n"
        "time.sleep(0.5)\n"
        "print('still running', flush=True)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.split() == ["flag", "set", "still", "running"], done.stderr
    assert "Aborted" not in done.stderr
