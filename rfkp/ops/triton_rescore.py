"""Gaussian rescoring in the Triton language (forward; see rfkp.ops.rescore for the math and the reference).

Memory traffic: reads N * K * (3 + 1) floats and N * K bools, N * 5 floats; writes N * (2 + 4K) floats.
One program handles BLOCK_N detections as a (BLOCK_N, BLOCK_K) tile, so the findability-weighted mean over
keypoints is an in-register row reduction, done in log space (logsumexp) like the reference. Computed in
float32 (float64 for float64 inputs).
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl


@triton.jit
def _row_logsumexp(x, valid):
    """logsumexp over axis 1 of the entries where `valid`: -inf for rows without any, +inf for rows with a +inf
    entry, NaN for rows with a NaN (as torch.logsumexp; a NaN maximum is not taken for an empty row)."""
    x = tl.where(valid, x, float("-inf"))
    m = tl.max(x, axis=1)
    empty = m == float("-inf")
    infinite = m == float("inf")
    m_safe = tl.where(empty | infinite, 0.0, m)
    total = tl.sum(tl.where(valid, tl.exp(x - m_safe[:, None]), 0.0), axis=1)
    has_nan = tl.sum((x != x).to(tl.int32), axis=1) > 0
    out = tl.where(empty, float("-inf"), tl.where(infinite, float("inf"), m_safe + tl.log(total)))
    return tl.where(has_nan, float("nan"), out)


@triton.jit
def _rescore_kernel(chol_ptr, findable_ptr, active_ptr, score_ptr, box_ptr, image_ptr,
                    out_score_ptr, out_lmt_ptr, out_cov_ptr, params_ptr, N, K,
                    ACC: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    offs_n = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mask_n = offs_n < N
    mask = mask_n[:, None] & (offs_k < K)[None, :]
    nk = offs_n[:, None] * K + offs_k[None, :]  # (BN, BK)
    use = mask & (tl.load(active_ptr + nk, mask=mask, other=0) != 0)
    # Inactive slots may hold anything: read zeros there so nothing non-finite enters the arithmetic.
    log_l11 = tl.load(chol_ptr + 3 * nk, mask=use, other=0.0).to(ACC)
    l21 = tl.load(chol_ptr + 3 * nk + 1, mask=use, other=0.0).to(ACC)
    log_l22 = tl.load(chol_ptr + 3 * nk + 2, mask=use, other=0.0).to(ACC)
    logit = tl.load(findable_ptr + nk, mask=use, other=0.0).to(ACC)
    # log trace(P^-1) = logsumexp(-2 log_l11, -2 log_l22, 2 log|l21| - 2 log_l11 - 2 log_l22); l21 = 0 drops
    # the third term.
    t1 = -2.0 * log_l11
    t2 = -2.0 * log_l22
    nonzero = l21 != 0.0
    t3 = tl.where(nonzero, 2.0 * tl.log(tl.where(nonzero, tl.abs(l21), 1.0)) + t1 + t2, float("-inf"))
    # Non-finite values follow torch.logsumexp and torch.clamp: NaN stays NaN (propagate_nan), an infinite
    # maximum is the result (an infinite variance scores 0), never inf - inf.
    m = tl.maximum(tl.maximum(t1, t2, propagate_nan=tl.PropagateNan.ALL), t3, propagate_nan=tl.PropagateNan.ALL)
    infinite = (m == float("inf")) | (m == float("-inf"))
    m_safe = tl.where(infinite, 0.0, m)
    log_trace = tl.where(
        infinite, m, m_safe + tl.log(tl.exp(t1 - m_safe) + tl.exp(t2 - m_safe) + tl.exp(t3 - m_safe))
    )
    w = 1.0 / (1.0 + tl.exp(-logit))
    log_w = tl.log(tl.maximum(w, 1e-12, propagate_nan=tl.PropagateNan.ALL))
    any_active = tl.sum(use.to(tl.int32), axis=1) > 0
    lmt = _row_logsumexp(log_trace + log_w, use) - _row_logsumexp(log_w, use)
    lmt = tl.where(any_active, lmt, 0.0)
    s = tl.load(score_ptr + offs_n, mask=mask_n, other=0.5).to(ACC)
    alpha = tl.load(params_ptr).to(ACC)
    below_one = tl.load(params_ptr + 1).to(ACC)  # largest value of the output dtype below 1
    fused = 1.0 / (1.0 + tl.exp(-(tl.log(s) - alpha * lmt)))
    fused = tl.minimum(fused, below_one, propagate_nan=tl.PropagateNan.ALL)
    out_ty = out_score_ptr.dtype.element_ty
    tl.store(out_score_ptr + offs_n, tl.where(any_active, fused, s).to(out_ty), mask=mask_n)
    tl.store(out_lmt_ptr + offs_n, lmt.to(out_ty), mask=mask_n)
    area = (tl.load(box_ptr + 2 * offs_n, mask=mask_n, other=0.0).to(ACC)
            * tl.load(box_ptr + 2 * offs_n + 1, mask=mask_n, other=0.0).to(ACC))
    width = tl.load(image_ptr + 2 * offs_n, mask=mask_n, other=0.0).to(ACC)
    height = tl.load(image_ptr + 2 * offs_n + 1, mask=mask_n, other=0.0).to(ACC)
    # P^-1 = [[a^2 + b^2, b c], [b c, c^2]] with a = 1 / l11, c = 1 / l22, b = -l21 a c.
    a = tl.exp(-log_l11)
    c = tl.exp(-log_l22)
    b = -l21 * a * c
    nan = float("nan")
    cov_xx = tl.where(use, (a * a + b * b) * area[:, None] * width[:, None] * width[:, None], nan)
    cov_xy = tl.where(use, b * c * area[:, None] * width[:, None] * height[:, None], nan)
    cov_yy = tl.where(use, c * c * area[:, None] * height[:, None] * height[:, None], nan)
    tl.store(out_cov_ptr + 4 * nk, cov_xx.to(out_ty), mask=mask)
    tl.store(out_cov_ptr + 4 * nk + 1, cov_xy.to(out_ty), mask=mask)
    tl.store(out_cov_ptr + 4 * nk + 2, cov_xy.to(out_ty), mask=mask)
    tl.store(out_cov_ptr + 4 * nk + 3, cov_yy.to(out_ty), mask=mask)


def gaussian_rescore(cholesky: torch.Tensor, findable_logit: torch.Tensor, active: torch.Tensor,
                     score: torch.Tensor, box_wh: torch.Tensor, image_wh: torch.Tensor,
                     alpha: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Same contract as rfkp.ops.rescore.gaussian_rescore_reference (inputs already checked)."""
    N, K = cholesky.shape[:2]
    out_score = torch.empty_like(score)
    out_lmt = torch.empty_like(score)
    out_cov = cholesky.new_empty(N, K, 2, 2)
    if N == 0:
        return out_score, out_lmt, out_cov
    block_k = triton.next_power_of_2(max(K, 1))
    block_n = max(1, min(64, 2048 // block_k))
    wide = cholesky.dtype == torch.float64
    acc = tl.float64 if wide else tl.float32
    # A tensor, not Python floats: Triton passes float scalars as float32.
    below_one = torch.nextafter(torch.ones((), dtype=score.dtype), torch.zeros((), dtype=score.dtype))
    params = torch.tensor([alpha, float(below_one)], dtype=torch.float64 if wide else torch.float32,
                          device=cholesky.device)
    on_gpu = cholesky.device.type == "cuda"
    with torch.cuda.device(cholesky.device) if on_gpu else contextlib.nullcontext():
        _rescore_kernel[(triton.cdiv(N, block_n),)](
            cholesky.contiguous(), findable_logit.contiguous(), active.contiguous().view(torch.uint8),
            score.contiguous(), box_wh.contiguous(), image_wh.contiguous(), out_score, out_lmt, out_cov,
            params, N, K, ACC=acc, BLOCK_N=block_n, BLOCK_K=block_k,
        )
    return out_score, out_lmt, out_cov
