"""Names and conventions shared by the model repository, the server-side runners and the client.

Ensemble ``rfkp`` (max_batch_size B: every tensor below has a leading batch dimension N <= B):

inputs (exactly one of the two images; THRESHOLD optional):
    IMAGE_BYTES  BYTES  (N, 1)        encoded JPEG/PNG/... images
    IMAGE_RAW    UINT8  (N, H, W, 3)  RGB frames, any H, W (all N of one request share the size)
    THRESHOLD    FP32   (N, 1)        score threshold in [0, 1]; default: the rendered ``threshold``
outputs (D = max_detections, K = max keypoints per class; rows >= COUNT are padding):
    COUNT        INT32  (N, 1)        number of valid detections
    BOXES        FP32   (N, D, 4)     xyxy in source-image pixels (origin top-left, pixel centres +0.5)
    SCORES       FP32   (N, D)        rescored confidences in [0, 1]
    LABELS       INT32  (N, D)        class ids (-1 in padding)
    KEYPOINTS    FP32   (N, D, K, 2)  x, y in source pixels (NaN for a class's inactive slots)
    COVARIANCES  FP32   (N, D, K, 2, 2) keypoint covariances in source pixels^2
    FINDABLE     FP32   (N, D, K)     probabilities
    VISIBLE      FP32   (N, D, K)     probabilities
    SOURCE_SIZE  INT64  (N, 2)        (H, W) of each source image
Padding rows are 0 (LABELS -1). Class names, keypoint names and skeletons are JSON strings in the
ensemble's config ``parameters`` (keys in ``METADATA_KEYS``).

Internal tensors between the steps: ``PIXELS`` FP32 (N, 3, R, R) ImageNet-normalised network input
and the network's raw outputs ``pred_logits`` (N, Q, C),
``pred_boxes`` (N, Q, 4) cxcywh normalised and ``pred_keypoints`` (N, Q, C_kp * K, 8) (one block of K
slots per keypointed class). A ``tensorrt_plan`` network and an ONNX graph served on ONNX Runtime must use
these input/output names (``rfkp export --outputs raw`` writes such graphs).
"""

from __future__ import annotations

__all__ = [
    "DETECTION_OUTPUTS",
    "ENSEMBLE",
    "ENSEMBLE_OUTPUTS",
    "INPUT_BYTES",
    "INPUT_RAW",
    "INPUT_THRESHOLD",
    "METADATA_KEYS",
    "NETWORK",
    "PIXELS",
    "POSTPROCESS",
    "PREPROCESS",
    "RAW_OUTPUTS",
    "SOURCE_SIZE",
]

ENSEMBLE = "rfkp"
PREPROCESS = "rfkp_preprocess"
NETWORK = "rfkp_model"
POSTPROCESS = "rfkp_postprocess"

INPUT_BYTES = "IMAGE_BYTES"
INPUT_RAW = "IMAGE_RAW"
INPUT_THRESHOLD = "THRESHOLD"

PIXELS = "PIXELS"
SOURCE_SIZE = "SOURCE_SIZE"
RAW_OUTPUTS = ("pred_logits", "pred_boxes", "pred_keypoints")

OUT_COUNT = "COUNT"
OUT_BOXES = "BOXES"
OUT_SCORES = "SCORES"
OUT_LABELS = "LABELS"
OUT_KEYPOINTS = "KEYPOINTS"
OUT_COVARIANCES = "COVARIANCES"
OUT_FINDABLE = "FINDABLE"
OUT_VISIBLE = "VISIBLE"
DETECTION_OUTPUTS = (
    OUT_COUNT,
    OUT_BOXES,
    OUT_SCORES,
    OUT_LABELS,
    OUT_KEYPOINTS,
    OUT_COVARIANCES,
    OUT_FINDABLE,
    OUT_VISIBLE,
)
ENSEMBLE_OUTPUTS = (*DETECTION_OUTPUTS, SOURCE_SIZE)

# config ``parameters`` keys (string values; JSON where structured)
PARAM_WEIGHTS = "weights"
PARAM_DEVICE = "device"
PARAM_MODEL_CONFIG = "model_config"
PARAM_MAX_PIXELS = "max_pixels"
PARAM_THRESHOLD = "threshold"
PARAM_MAX_DETECTIONS = "max_detections"
PARAM_NUM_THREADS = "num_threads"
PARAM_RANDOM_INIT = "random_init"
PARAM_RUNTIME = "runtime"
PARAM_CATEGORY_IDS = "category_ids"  # JSON list, empty when the model does not know its COCO ids
PARAM_COCO_KEYPOINT_OFFSET = "coco_keypoint_offset"  # JSON number: keypoints minus this are COCO coordinates

# runtimes of rfkp_model (the ``runtime`` parameter of the rendered ensemble and network)
RUNTIME_TORCH = "torch"
RUNTIME_ONNXRUNTIME = "onnxruntime"
RUNTIME_TENSORRT = "tensorrt_plan"
METADATA_KEYS = ("class_names", "keypoint_names", "skeletons")
