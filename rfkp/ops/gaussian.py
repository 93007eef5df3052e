"""Closed-form math of the per-keypoint Gaussian predicted by the keypoint head.

The head emits, per keypoint, ``raw = (log_l11, l21, log_l22)`` (last dim 3): the lower-triangular Cholesky
factor ``L = [[exp(log_l11), 0], [l21, exp(log_l22)]]`` of a 2x2 precision matrix ``P = L L^T`` in normalised
image coordinates (x, y in [0, 1], x right, y down). The training loss per keypoint is

    0.5 * d^T P d / area - log_l11 - log_l22,        area = w * h of the normalised box,

so the maximum-likelihood covariance is ``area * P^-1`` in normalised coordinates and
``area * diag(W, H) P^-1 diag(W, H)`` in pixels.

Everything here is closed form (no ``torch.linalg``), differentiable, works for any leading shape, and keeps
the input dtype (fp32 or fp64). ``P^-1`` is computed from ``L^-1 = [[a, 0], [b, c]]`` with ``a = 1/l11``,
``c = 1/l22``, ``b = -l21 a c`` as ``L^-T L^-1 = [[a^2 + b^2, b c], [b c, c^2]]``: no subtraction, no
division by a determinant, hence no cancellation.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "cholesky_matrix",
    "covariance_normalized",
    "covariance_pixels",
    "ellipse_axes",
    "gaussian_nll",
    "inverse_precision",
    "log_det_precision",
    "log_trace_inverse_precision",
    "mahalanobis_sq",
    "precision_matrix",
    "rescore",
    "trace_inverse_precision",
    "weighted_log_mean_trace",
]

_MIN_FINDABLE_WEIGHT = 1e-12


def _check_raw(raw: torch.Tensor) -> None:
    if raw.ndim < 1 or raw.shape[-1] != 3:
        raise ValueError(f"raw must have last dim 3 (log_l11, l21, log_l22), got shape {tuple(raw.shape)}")


def _sym2(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Symmetric ``[[a, b], [b, c]]`` from three tensors of shape (...) -> (..., 2, 2)."""
    return torch.stack([torch.stack([a, b], dim=-1), torch.stack([b, c], dim=-1)], dim=-2)


def cholesky_matrix(raw: torch.Tensor) -> torch.Tensor:
    """``L = [[exp(log_l11), 0], [l21, exp(log_l22)]]``: raw (..., 3) -> (..., 2, 2)."""
    _check_raw(raw)
    log_l11, l21, log_l22 = raw.unbind(-1)
    zero = torch.zeros_like(l21)
    rows = [torch.stack([log_l11.exp(), zero], dim=-1), torch.stack([l21, log_l22.exp()], dim=-1)]
    return torch.stack(rows, dim=-2)


def precision_matrix(raw: torch.Tensor) -> torch.Tensor:
    """``P = L L^T = [[l11^2, l11 l21], [l11 l21, l21^2 + l22^2]]``: raw (..., 3) -> (..., 2, 2)."""
    _check_raw(raw)
    log_l11, l21, log_l22 = raw.unbind(-1)
    l11 = log_l11.exp()
    l22 = log_l22.exp()
    return _sym2(l11 * l11, l11 * l21, l21 * l21 + l22 * l22)


def inverse_precision(raw: torch.Tensor) -> torch.Tensor:
    """``P^-1`` in box-normalised units (covariance of a unit-area box): raw (..., 3) -> (..., 2, 2)."""
    _check_raw(raw)
    log_l11, l21, log_l22 = raw.unbind(-1)
    a = (-log_l11).exp()
    c = (-log_l22).exp()
    b = -l21 * a * c
    return _sym2(a * a + b * b, b * c, c * c)


def covariance_normalized(raw: torch.Tensor, box_wh: torch.Tensor) -> torch.Tensor:
    """Covariance ``area * P^-1`` in normalised image coordinates.

    Args:
        raw: (..., 3) ``(log_l11, l21, log_l22)``.
        box_wh: (..., 2) normalised box (w, h), broadcastable against raw's leading shape.

    Returns:
        (..., 2, 2) covariance, normalised-coordinate units squared.
    """
    if box_wh.shape[-1] != 2:
        raise ValueError(f"box_wh must have last dim 2 (w, h), got shape {tuple(box_wh.shape)}")
    area = box_wh[..., 0] * box_wh[..., 1]
    return inverse_precision(raw) * area[..., None, None]


def covariance_pixels(raw: torch.Tensor, box_wh: torch.Tensor, image_wh: torch.Tensor) -> torch.Tensor:
    """Covariance ``area * diag(W, H) P^-1 diag(W, H)`` in pixels squared.

    Args:
        raw: (..., 3) ``(log_l11, l21, log_l22)``.
        box_wh: (..., 2) normalised box (w, h), broadcastable.
        image_wh: (..., 2) image (W, H) in pixels, broadcastable.

    Returns:
        (..., 2, 2) covariance in pixels squared, x right, y down.
    """
    if image_wh.shape[-1] != 2:
        raise ValueError(f"image_wh must have last dim 2 (W, H), got shape {tuple(image_wh.shape)}")
    cov = covariance_normalized(raw, box_wh)
    scale = image_wh.to(cov.dtype)
    return cov * (scale[..., :, None] * scale[..., None, :])  # s_i s_j first: both off-diagonals round alike


def log_trace_inverse_precision(raw: torch.Tensor) -> torch.Tensor:
    """``log trace(P^-1)`` in log space: raw (..., 3) -> (...).

    ``trace(P^-1) = 1/l11^2 + 1/l22^2 + l21^2 / (l11 l22)^2``, combined with a logsumexp of
    ``-2 log_l11``, ``-2 log_l22`` and ``2 log|l21| - 2 log_l11 - 2 log_l22``, so it stays finite where the
    trace itself would overflow. ``l21 == 0`` drops the third term exactly (with a zero gradient).
    """
    _check_raw(raw)
    log_l11, l21, log_l22 = raw.unbind(-1)
    log_t1 = -2.0 * log_l11
    log_t2 = -2.0 * log_l22
    abs_l21 = l21.abs()
    nonzero = abs_l21 != 0  # NaN counts as nonzero: it reaches the result, as any NaN input does
    # Double-where keeps the gradient finite at l21 == 0 (the log branch never sees a zero).
    log_abs = torch.log(torch.where(nonzero, abs_l21, torch.ones_like(abs_l21)))
    log_t3 = torch.where(nonzero, 2.0 * log_abs + log_t1 + log_t2, torch.full_like(log_abs, -math.inf))
    return torch.logsumexp(torch.stack([log_t1, log_t2, log_t3], dim=-1), dim=-1)


def trace_inverse_precision(raw: torch.Tensor) -> torch.Tensor:
    """``trace(P^-1)`` (box-normalised units), the expected squared error ``E|d|^2`` for unit area: (...)."""
    return log_trace_inverse_precision(raw).exp()


def weighted_log_mean_trace(
    raw: torch.Tensor, findable_logit: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Log of the findability-weighted arithmetic mean of ``trace(P^-1)`` over the keypoint axis.

    ``log(sum_k w_k T_k / sum_k w_k)`` with ``w_k = max(sigmoid(findable_logit_k), 1e-12)``, computed as
    ``logsumexp(log T + log w) - logsumexp(log w)``.

    Args:
        raw: (..., K, 3) ``(log_l11, l21, log_l22)``.
        findable_logit: (..., K).
        mask: optional (..., K) bool, True for the keypoint slots that exist for the instance's class;
            excluded slots may hold anything (NaN included). A row with no active slot returns 0.

    Returns:
        (...) log mean trace, box-normalised units.
    """
    _check_raw(raw)
    if raw.ndim < 2 or findable_logit.shape != raw.shape[:-1]:
        raise ValueError(
            f"raw (..., K, 3) and findable_logit (..., K) disagree: {tuple(raw.shape)} vs "
            f"{tuple(findable_logit.shape)}"
        )
    log_w = torch.log(torch.sigmoid(findable_logit).clamp(min=_MIN_FINDABLE_WEIGHT))
    if mask is None:
        log_t = log_trace_inverse_precision(raw)
        return torch.logsumexp(log_t + log_w, dim=-1) - torch.logsumexp(log_w, dim=-1)
    if mask.shape != findable_logit.shape or mask.dtype != torch.bool:
        raise ValueError(
            f"mask must be a bool tensor of shape {tuple(findable_logit.shape)}, got {mask.dtype} "
            f"{tuple(mask.shape)}"
        )
    log_t = log_trace_inverse_precision(torch.where(mask[..., None], raw, torch.zeros_like(raw)))
    neg_inf = torch.full_like(log_w, -math.inf)
    log_w = torch.where(mask, log_w, neg_inf)
    num = torch.logsumexp(torch.where(mask, log_t + log_w, neg_inf), dim=-1)
    den = torch.logsumexp(log_w, dim=-1)
    any_active = mask.any(dim=-1)
    return torch.where(any_active, num - torch.where(any_active, den, torch.zeros_like(den)), torch.zeros_like(den))


def rescore(score: torch.Tensor, log_mean_trace: torch.Tensor, alpha: float = 0.2) -> torch.Tensor:
    """Fuse a detection score with its keypoint uncertainty, as the reference postprocess does.

    ``score' = min(sigmoid(log(score) - alpha * log_mean_trace), nextafter(1, 0))``.

    Note the ``log(score)`` (not ``logit(score)``): this is the formula of the released model's
    postprocess, kept bit-for-bit so that rescored scores match it. The result lies in ``[0, 1)``; a lower
    uncertainty (smaller mean trace) raises the score. ``score`` must be in [0, 1] (0 maps to 0).

    Args:
        score: (...) class probabilities in [0, 1].
        log_mean_trace: (...) from :func:`weighted_log_mean_trace`, broadcastable.
        alpha: strength of the uncertainty term.

    Returns:
        (...) rescored probabilities in [0, 1).
    """
    fused = torch.sigmoid(torch.log(score) - alpha * log_mean_trace)
    # 1 - eps/2 is nextafter(1, 0) in every binary float dtype; a constant bound exports to ONNX (Clip)
    return fused.clamp(max=1.0 - torch.finfo(fused.dtype).eps / 2)


def log_det_precision(raw: torch.Tensor) -> torch.Tensor:
    """``log det P = 2 (log_l11 + log_l22)``: raw (..., 3) -> (...)."""
    _check_raw(raw)
    return 2.0 * (raw[..., 0] + raw[..., 2])


def mahalanobis_sq(d: torch.Tensor, raw: torch.Tensor) -> torch.Tensor:
    """``d^T P d = (l11 dx + l21 dy)^2 + (l22 dy)^2``: d (..., 2) (dx, dy), raw (..., 3) -> (...)."""
    _check_raw(raw)
    if d.shape[-1] != 2:
        raise ValueError(f"d must have last dim 2 (dx, dy), got shape {tuple(d.shape)}")
    log_l11, l21, log_l22 = raw.unbind(-1)
    dx, dy = d.unbind(-1)
    u = log_l11.exp() * dx + l21 * dy
    v = log_l22.exp() * dy
    return u * u + v * v


def gaussian_nll(d: torch.Tensor, raw: torch.Tensor, area: torch.Tensor | float) -> torch.Tensor:
    """Training NLL ``0.5 d^T P d / area - log_l11 - log_l22`` (constants dropped).

    Args:
        d: (..., 2) error prediction - target in normalised image coordinates.
        raw: (..., 3) ``(log_l11, l21, log_l22)``.
        area: (...) normalised box area w * h (> 0), broadcastable, or a float.

    Returns:
        (...) per-keypoint NLL. The exact Gaussian NLL differs by ``log(2 pi area)``.
    """
    return 0.5 * mahalanobis_sq(d, raw) / area - raw[..., 0] - raw[..., 2]


def ellipse_axes(
    cov: torch.Tensor, n_sigma: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Semi-axes and orientation of the ``n_sigma`` ellipse of a 2x2 symmetric covariance.

    Closed-form eigen decomposition of ``[[a, b], [b, c]]``: ``lambda = (a + c)/2 +- hypot((a - c)/2, b)``;
    the minor eigenvalue is ``det / lambda_max`` (no cancellation for thin ellipses), clamped at 0.

    Args:
        cov: (..., 2, 2) symmetric positive semi-definite covariance (the two off-diagonal entries are
            averaged).
        n_sigma: scale of the ellipse in standard deviations.

    Returns:
        ``(semi_major, semi_minor, angle)``, each (...): semi-axes ``n_sigma * sqrt(lambda)`` in the units of
        ``sqrt(cov)``, and the angle in radians in (-pi/2, pi/2] of the major axis from +x, in image
        convention (x right, y down, so a positive angle turns from +x towards +y, clockwise on screen).
    """
    if cov.ndim < 2 or cov.shape[-2:] != (2, 2):
        raise ValueError(f"cov must have shape (..., 2, 2), got {tuple(cov.shape)}")
    a = cov[..., 0, 0]
    c = cov[..., 1, 1]
    b = 0.5 * (cov[..., 0, 1] + cov[..., 1, 0])
    half_sum = 0.5 * (a + c)
    radius = torch.hypot(0.5 * (a - c), b)
    lam_max = half_sum + radius
    det = a * c - b * b
    safe_max = torch.where(lam_max > 0, lam_max, torch.ones_like(lam_max))
    lam_min = torch.where(lam_max > 0, det / safe_max, torch.zeros_like(lam_max)).clamp(min=0.0)
    angle = 0.5 * torch.atan2(2.0 * b, a - c)
    return n_sigma * lam_max.clamp(min=0.0).sqrt(), n_sigma * lam_min.sqrt(), angle
