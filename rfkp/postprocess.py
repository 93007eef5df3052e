"""Post-processing: top-k over (query, class) pairs, uncertainty-aware rescoring, decoding to source pixels.

`decode_detections` is pure tensor math with fixed output shapes (no data-dependent filtering), so the same
function runs in Python, inside exported graphs and in the server; `to_keypoint_detections` applies the
score threshold and builds the public `KeypointDetections`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from rfkp.config import ModelConfig
from rfkp.detections import KeypointDetections
from rfkp.ops import gaussian

Rescorer = Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
"""The signature of `rfkp.ops.gaussian_rescore_reference`: (cholesky (N, K, 3), findable_logit (N, K),
active (N, K) bool, score (N,), box_wh (N, 2), image_wh (N, 2), alpha)
-> (score' (N,), log_mean_trace (N,), covariance (N, K, 2, 2))."""


def _top_k_descending(values: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (B, k) of the k largest values of each row of (B, M), ties to the lower index.

    Eager code takes a stable sort; inside an ONNX export it takes TopK, whose definition breaks ties the same
    way (a stable sort does not export, and a TopK over the whole row is slow and too large for TensorRT).
    """
    if torch.onnx.is_in_onnx_export():
        return torch.topk(values, k, dim=1, largest=True, sorted=True).indices
    return torch.sort(values, dim=1, descending=True, stable=True).indices[:, :k]


def decode_detections(
    raw: dict[str, torch.Tensor],
    source_sizes: torch.Tensor,
    *,
    num_keypoints_per_class: list[int],
    num_select: int = 100,
    alpha: float = 0.2,
    rescorer: Rescorer | None = None,
    covariance_scale: list[list[float]] | None = None,
) -> dict[str, torch.Tensor]:
    """Fixed-size decoded detections for a batch.

    Args:
        raw: `pred_logits (B, Q, C)`, `pred_boxes (B, Q, 4)` cxcywh in [0, 1], `pred_keypoints (B, Q, C_kp*K, 8)`.
        source_sizes: (B, 2) (H, W) of the source images in pixels.
        num_select: N, the number of (query, class) pairs kept per image (highest class probability first).
        alpha: rescoring strength; 0 disables rescoring.
        rescorer: computes the rescored scores and pixel covariances of the B * N rows in one call (an
            exported graph passes a fused op here); default: the same math inline.
        covariance_scale: (keypointed classes, K) factors applied to the output covariances
            (`ModelConfig.covariance_scale_table()`, fitted by `rfkp calibrate`); scores and the rescoring
            are unaffected. None: no scaling.

    Returns (all in source-image pixels, origin top-left, pixel centres at +0.5):
        `scores (B, N)` rescored, `labels (B, N)` int64, `boxes (B, N, 4)` xyxy clamped to the image,
        `keypoints (B, N, K, 2)`, `covariance (B, N, K, 2, 2)` (= area * diag(W,H) P^-1 diag(W,H)),
        `findable (B, N, K)`, `visible (B, N, K)` probabilities, `cholesky (B, N, K, 3)` raw precision factors.
        Keypoint slots that the detected class does not have (and all slots of classes without keypoints)
        are NaN. Rows come in descending order of the class probability before rescoring.
    """
    logits, boxes, kps = raw["pred_logits"], raw["pred_boxes"], raw["pred_keypoints"]
    B, Q, C = logits.shape
    n_kp_classes, kmax = len(num_keypoints_per_class), max(num_keypoints_per_class)
    if kps.shape[-2] != n_kp_classes * kmax:
        raise ValueError(f"pred_keypoints has {kps.shape[-2]} slots, expected {n_kp_classes} x {kmax}")
    if source_sizes.shape != (B, 2):
        raise ValueError(f"source_sizes must be ({B}, 2) (H, W), got {tuple(source_sizes.shape)}")
    n = min(num_select, Q * C)
    prob = logits.sigmoid().reshape(B, Q * C)
    # saturated probabilities tie often; ties go to the lower (query, class) index
    flat_idx = _top_k_descending(prob, n)
    scores = torch.gather(prob, 1, flat_idx)
    query = torch.div(flat_idx, C, rounding_mode="floor")
    labels = flat_idx % C

    wh = source_sizes.to(boxes.dtype).flip(-1)  # (B, 2) = (W, H)
    sel_boxes = torch.gather(boxes, 1, query[..., None].expand(B, n, 4))  # cxcywh normalised
    xyxy = _boxes_in_pixels(sel_boxes, wh)
    cls_kps, kp_class, active = _class_keypoints(kps, query, labels, num_keypoints_per_class)
    has_kp = labels < n_kp_classes

    chol = cls_kps[..., 4:7]
    nan = torch.tensor(math.nan, dtype=kps.dtype, device=kps.device)
    if rescorer is not None:
        rows = B * n
        image_wh = wh[:, None, :].expand(B, n, 2).reshape(rows, 2)
        new_scores, _, cov = rescorer(
            chol.reshape(rows, kmax, 3), cls_kps[..., 2].reshape(rows, kmax), active.reshape(rows, kmax),
            scores.reshape(rows), sel_boxes[..., 2:].reshape(rows, 2), image_wh, alpha,
        )  # fmt: skip
        cov = cov.reshape(B, n, kmax, 2, 2)
        if alpha > 0:
            scores = new_scores.reshape(B, n)
    else:
        if alpha > 0:
            lmt = gaussian.weighted_log_mean_trace(chol, cls_kps[..., 2], active)
            scores = torch.where(has_kp & active.any(-1), gaussian.rescore(scores, lmt, alpha), scores)
        cov = gaussian.covariance_pixels(
            torch.where(active[..., None], chol, torch.zeros_like(chol)), sel_boxes[..., None, 2:],
            wh[:, None, None, :],
        )
        cov = torch.where(active[..., None, None], cov, nan)

    if covariance_scale is not None:
        factors = torch.tensor(covariance_scale, dtype=cov.dtype, device=cov.device)
        if factors.shape != (n_kp_classes, kmax):
            raise ValueError(f"covariance_scale must be ({n_kp_classes}, {kmax}), got {tuple(factors.shape)}")
        cov = cov * factors[kp_class][..., None, None]

    keypoints = torch.where(active[..., None], cls_kps[..., :2] * wh[:, None, None, :], nan)
    return {
        "scores": scores,
        "labels": labels,
        "boxes": xyxy,
        "keypoints": keypoints,
        "covariance": cov,
        "findable": torch.where(active, cls_kps[..., 2].sigmoid(), nan),
        "visible": torch.where(active, cls_kps[..., 3].sigmoid(), nan),
        "cholesky": torch.where(active[..., None], chol, nan),
    }


def _boxes_in_pixels(cxcywh: torch.Tensor, wh: torch.Tensor) -> torch.Tensor:
    """(B, n, 4) normalised cxcywh -> xyxy in pixels of the (B, 2) (W, H) images, clamped to the image."""
    xyxy = torch.cat([cxcywh[..., :2] - 0.5 * cxcywh[..., 2:], cxcywh[..., :2] + 0.5 * cxcywh[..., 2:]], -1)
    scale = wh.repeat(1, 2)[:, None, :]
    return torch.minimum((xyxy * scale).clamp(min=0.0), scale)


def _class_keypoints(
    kps: torch.Tensor, query: torch.Tensor, labels: torch.Tensor, num_keypoints_per_class: list[int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The 8 channels of the detected class's keypoint block for each selected (query, label).

    Returns:
        ``(B, n, K, 8)`` channels, the keypointed class index ``(B, n)`` (clamped: classes without keypoints
        read the last block, masked out), and the ``(B, n, K)`` mask of the slots the class has.
    """
    B, n = query.shape
    n_kp_classes, kmax = len(num_keypoints_per_class), max(num_keypoints_per_class)
    sel_kps = torch.gather(kps, 1, query[..., None, None].expand(B, n, kps.shape[2], kps.shape[3]))
    sel_kps = sel_kps.reshape(B, n, n_kp_classes, kmax, kps.shape[3])
    kp_class = labels.clamp(max=n_kp_classes - 1)
    cls_kps = torch.gather(sel_kps, 2, kp_class[..., None, None, None].expand(B, n, 1, kmax, kps.shape[3]))
    cls_kps = cls_kps.select(2, 0)  # (B, n, K, 8); select, not squeeze: no If node in an exported graph
    counts = torch.tensor(num_keypoints_per_class, device=labels.device)
    has_kp = labels < n_kp_classes
    active = (torch.arange(kmax, device=labels.device) < counts[kp_class][..., None]) & has_kp[..., None]
    return cls_kps, kp_class, active


def to_keypoint_detections(
    decoded: dict[str, torch.Tensor],
    source_sizes: torch.Tensor,
    config: ModelConfig,
    threshold: float = 0.5,
) -> list[KeypointDetections]:
    """Keep rows with rescored score > threshold, sort them by that score, convert to numpy per image."""
    out = []
    for i in range(decoded["scores"].shape[0]):
        scores = decoded["scores"][i]
        keep = torch.nonzero(scores > threshold).flatten()
        keep = keep[torch.argsort(scores[keep], descending=True, stable=True)]

        def pick(name: str, dtype: type = np.float32) -> np.ndarray:
            return decoded[name][i][keep].detach().cpu().numpy().astype(dtype)  # noqa: B023

        h, w = (int(v) for v in source_sizes[i].tolist())
        out.append(
            KeypointDetections(
                xyxy=pick("boxes"),
                class_id=pick("labels", np.int64),
                score=pick("scores"),
                keypoints=pick("keypoints"),
                covariance=pick("covariance"),
                findable=pick("findable"),
                visible=pick("visible"),
                class_names=list(config.class_names),
                keypoint_names=[list(n) for n in config.keypoint_names]
                + [[] for _ in range(config.num_classes - len(config.keypoint_names))],
                skeletons=[list(e) for e in config.skeletons]
                + [[] for _ in range(config.num_classes - len(config.skeletons))],
                image_size=(h, w),
                category_ids=list(config.category_ids) or None,
                coco_keypoint_offset=config.coco_keypoint_offset,
            )
        )
    return out
