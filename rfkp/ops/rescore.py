"""Gaussian rescoring of a batch of detections: the PyTorch reference of the rescoring kernels.

It composes the project's Gaussian math (`rfkp.ops.gaussian`, the same functions the post-processing uses),
so the kernels are held to exactly what the CPU path computes. Per detection, over its active keypoint slots:

- log_mean_trace = log(sum_k w_k trace(P_k^-1) / sum_k w_k), w_k = max(sigmoid(findable_logit_k), 1e-12),
  in log space (box-normalised units); 0 when no slot is active.
- score' = min(sigmoid(log(score) - alpha * log_mean_trace), nextafter(1, 0)) (the released model's formula,
  note log, not logit), and score' = score when no slot is active (detections without keypoints keep their
  score, as in the post-processing).
- covariance = area * diag(W, H) P^-1 diag(W, H) in pixels^2 (area = w * h of the normalised box), NaN for
  inactive slots.
"""

from __future__ import annotations

import torch

from rfkp.ops import gaussian

RESCORE_ALPHA = 0.2


def _below_one(t: torch.Tensor) -> torch.Tensor:
    return torch.nextafter(torch.ones_like(t), torch.zeros_like(t))


def gaussian_rescore_reference(
    cholesky: torch.Tensor,
    findable_logit: torch.Tensor,
    active: torch.Tensor,
    score: torch.Tensor,
    box_wh: torch.Tensor,
    image_wh: torch.Tensor,
    alpha: float = RESCORE_ALPHA,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rescore N detections with K keypoint slots each.

    Args:
        cholesky: (N, K, 3) (log_l11, l21, log_l22) per keypoint.
        findable_logit: (N, K).
        active: (N, K) bool; inactive slots (padding of classes with fewer keypoints) may hold anything.
        score: (N,) detection probability in [0, 1].
        box_wh: (N, 2) box width and height, normalised to the image.
        image_wh: (N, 2) image width and height in pixels.
        alpha: strength of the uncertainty penalty.

    Returns:
        score' (N,) in [0, 1), log_mean_trace (N,) and pixel covariances (N, K, 2, 2), in the input dtype;
        half-precision inputs are computed in float32.
    """
    dtype = cholesky.dtype
    work = torch.float64 if dtype == torch.float64 else torch.float32
    active = active.to(torch.bool)
    chol = cholesky.to(work)
    log_mean_trace = gaussian.weighted_log_mean_trace(chol, findable_logit.to(work), active)
    s = score.to(work)
    any_active = active.any(-1)
    rescored = torch.where(any_active, gaussian.rescore(s, log_mean_trace, alpha), s).to(dtype)
    # gaussian.rescore keeps rescored scores below 1 in the working dtype; keep them below 1 in the output too.
    rescored = torch.where(any_active & (rescored >= 1), _below_one(rescored), rescored)
    safe = torch.where(active[..., None], chol, torch.zeros_like(chol))
    cov = gaussian.covariance_pixels(safe, box_wh.to(work)[:, None, :], image_wh.to(work)[:, None, :])
    cov = torch.where(active[..., None, None], cov, torch.full_like(cov, torch.nan))
    return rescored, log_mean_trace.to(dtype), cov.to(dtype)
