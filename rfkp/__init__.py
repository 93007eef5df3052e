"""rfkp: real-time RF-DETR keypoint detection with calibrated per-keypoint Gaussians."""

from rfkp.api import RFDETRKeypoint
from rfkp.config import ModelConfig
from rfkp.detections import KeypointDetections

__all__ = ["KeypointDetections", "ModelConfig", "RFDETRKeypoint"]
__version__ = "0.1.0"
