"""Detections <-> the fixed-shape output tensors of the ``rfkp`` ensemble (see ``protocol``).

``pack_detections`` runs in the server's post-processing step, ``unpack_detections`` in the client;
the round trip is exact (float32 values, int class ids).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from rfkp.config import COCO_PIXEL_OFFSET
from rfkp.detections import KeypointDetections
from rfkp.serving import protocol as P

__all__ = ["ServedMetadata", "pack_detections", "unpack_detections"]


@dataclass(frozen=True)
class ServedMetadata:
    """What the ensemble's config ``parameters`` say about the served model.

    ``keypoint_names`` and ``skeletons`` have one entry per class (empty for classes without keypoints).
    """

    class_names: list[str]
    keypoint_names: list[list[str]]
    skeletons: list[list[tuple[int, int]]]
    random_init: bool = False
    weights: str = ""
    category_ids: list[int] | None = None
    coco_keypoint_offset: float = COCO_PIXEL_OFFSET

    @classmethod
    def from_parameters(cls, params: Mapping[str, str]) -> ServedMetadata:
        """From the ensemble's ``parameters`` (key -> string value)."""
        missing = [k for k in P.METADATA_KEYS if k not in params]
        if missing:
            raise ValueError(f"the served model's configuration lacks the metadata parameters {missing}")
        return cls(
            class_names=[str(n) for n in json.loads(params["class_names"])],
            keypoint_names=[[str(n) for n in names] for names in json.loads(params["keypoint_names"])],
            skeletons=[[(int(a), int(b)) for a, b in edges] for edges in json.loads(params["skeletons"])],
            random_init=bool(json.loads(params.get(P.PARAM_RANDOM_INIT, "false"))),
            weights=params.get(P.PARAM_WEIGHTS, ""),
            category_ids=[int(i) for i in json.loads(params.get(P.PARAM_CATEGORY_IDS, "[]"))] or None,
            coco_keypoint_offset=float(json.loads(params.get(P.PARAM_COCO_KEYPOINT_OFFSET,
                                                             json.dumps(COCO_PIXEL_OFFSET)))),
        )


def pack_detections(
    detections: Sequence[KeypointDetections], *, max_detections: int, max_keypoints: int
) -> dict[str, np.ndarray]:
    """N images' detections -> the ensemble outputs, padded to D = ``max_detections`` rows.

    Returns a dict of ``DETECTION_OUTPUTS`` plus ``SOURCE_SIZE``: COUNT (N, 1) int32, BOXES (N, D, 4),
    SCORES (N, D), LABELS (N, D) int32 (-1 in padding), KEYPOINTS (N, D, K, 2), COVARIANCES
    (N, D, K, 2, 2), FINDABLE / VISIBLE (N, D, K) float32; padding rows are 0.
    """
    n, d, k = len(detections), max_detections, max_keypoints
    out = {
        P.OUT_COUNT: np.zeros((n, 1), np.int32),
        P.OUT_BOXES: np.zeros((n, d, 4), np.float32),
        P.OUT_SCORES: np.zeros((n, d), np.float32),
        P.OUT_LABELS: np.full((n, d), -1, np.int32),
        P.OUT_KEYPOINTS: np.zeros((n, d, k, 2), np.float32),
        P.OUT_COVARIANCES: np.zeros((n, d, k, 2, 2), np.float32),
        P.OUT_FINDABLE: np.zeros((n, d, k), np.float32),
        P.OUT_VISIBLE: np.zeros((n, d, k), np.float32),
        P.SOURCE_SIZE: np.zeros((n, 2), np.int64),
    }
    for i, det in enumerate(detections):
        rows = len(det.score)
        if rows > d:
            raise ValueError(f"image {i} has {rows} detections, more than max_detections={d}")
        kk = det.keypoints.shape[1] if det.keypoints.ndim == 3 else 0
        if kk > k:
            raise ValueError(f"image {i} has {kk} keypoints per detection, more than max_keypoints={k}")
        out[P.OUT_COUNT][i, 0] = rows
        out[P.OUT_BOXES][i, :rows] = det.xyxy
        out[P.OUT_SCORES][i, :rows] = det.score
        out[P.OUT_LABELS][i, :rows] = det.class_id
        out[P.OUT_KEYPOINTS][i, :rows, :kk] = det.keypoints
        out[P.OUT_COVARIANCES][i, :rows, :kk] = det.covariance
        out[P.OUT_FINDABLE][i, :rows, :kk] = det.findable
        out[P.OUT_VISIBLE][i, :rows, :kk] = det.visible
        out[P.SOURCE_SIZE][i] = det.image_size
    return out


def unpack_detections(outputs: Mapping[str, np.ndarray], metadata: ServedMetadata) -> list[KeypointDetections]:
    """The ensemble outputs for N images -> N ``KeypointDetections`` (padding rows dropped)."""
    counts = np.asarray(outputs[P.OUT_COUNT]).reshape(-1)
    sizes = np.asarray(outputs[P.SOURCE_SIZE]).reshape(-1, 2)
    result = []
    for i, count in enumerate(counts.tolist()):
        rows = slice(0, int(count))
        result.append(
            KeypointDetections(
                xyxy=np.asarray(outputs[P.OUT_BOXES][i, rows], np.float32),
                class_id=np.asarray(outputs[P.OUT_LABELS][i, rows], np.int64),
                score=np.asarray(outputs[P.OUT_SCORES][i, rows], np.float32),
                keypoints=np.asarray(outputs[P.OUT_KEYPOINTS][i, rows], np.float32),
                covariance=np.asarray(outputs[P.OUT_COVARIANCES][i, rows], np.float32),
                findable=np.asarray(outputs[P.OUT_FINDABLE][i, rows], np.float32),
                visible=np.asarray(outputs[P.OUT_VISIBLE][i, rows], np.float32),
                class_names=list(metadata.class_names),
                keypoint_names=[list(n) for n in metadata.keypoint_names],
                skeletons=[list(e) for e in metadata.skeletons],
                image_size=(int(sizes[i, 0]), int(sizes[i, 1])),
                category_ids=metadata.category_ids,
                coco_keypoint_offset=metadata.coco_keypoint_offset,
            )
        )
    return result
