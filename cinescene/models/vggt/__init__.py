"""VGGT (facebookresearch/vggt) for CineScene: aggregator, camera head, preprocessing, weights.

Written for this project with the published facebook/VGGT-1B parameter names
and shapes; see :mod:`.aggregator` for the layout.
"""

from .aggregator import Aggregator
from .camera_head import CameraHead, pose_encoding_to_cameras, quaternion_to_matrix
from .model import VGGT, load_vggt_weights, preprocess_images, select_vggt_keys, vggt_grid

__all__ = [
    "Aggregator",
    "CameraHead",
    "VGGT",
    "load_vggt_weights",
    "pose_encoding_to_cameras",
    "preprocess_images",
    "quaternion_to_matrix",
    "select_vggt_keys",
    "vggt_grid",
]
