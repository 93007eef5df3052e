"""Numerical contracts of rfkp.ops.gaussian against independent fp64 / exact-rational computations."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch

from rfkp.ops import gaussian as g

EXTREME_RAW = [
    (20.0, 0.0, 20.0),
    (-20.0, 0.0, -20.0),
    (20.0, 0.0, -20.0),
    (-20.0, 5.0, 20.0),
    (0.0, 1e4, 0.0),
    (-20.0, -1e6, -20.0),
    (3.0, -0.25, -1.5),
]


def _random_raw(*shape: int, dtype: torch.dtype = torch.float64, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    raw = torch.randn(*shape, 3, generator=gen, dtype=dtype)
    raw[..., 1] *= 3.0
    return raw


def _explicit_precision(raw: torch.Tensor) -> torch.Tensor:
    lower = torch.zeros(*raw.shape[:-1], 2, 2, dtype=raw.dtype)
    lower[..., 0, 0] = raw[..., 0].exp()
    lower[..., 1, 0] = raw[..., 1]
    lower[..., 1, 1] = raw[..., 2].exp()
    return lower @ lower.transpose(-1, -2)


def _exact_inverse(raw_row: tuple[float, float, float]) -> list[list[Fraction]]:
    """P^-1 with exact rational arithmetic from the float values of l11, l21, l22."""
    l11 = Fraction(math.exp(raw_row[0]))
    l21 = Fraction(raw_row[1])
    l22 = Fraction(math.exp(raw_row[2]))
    p00, p01, p11 = l11 * l11, l11 * l21, l21 * l21 + l22 * l22
    det = p00 * p11 - p01 * p01
    return [[p11 / det, -p01 / det], [-p01 / det, p00 / det]]


def test_cholesky_and_precision_match_explicit_matrices() -> None:
    raw = _random_raw(4, 5)
    lower = g.cholesky_matrix(raw)
    assert lower.shape == (4, 5, 2, 2)
    assert torch.equal(lower[..., 0, 1], torch.zeros(4, 5, dtype=torch.float64))
    torch.testing.assert_close(lower @ lower.transpose(-1, -2), _explicit_precision(raw))
    torch.testing.assert_close(g.precision_matrix(raw), _explicit_precision(raw), rtol=1e-12, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_inverse_precision_matches_linalg_inv(dtype: torch.dtype) -> None:
    raw = _random_raw(3, 7, dtype=dtype)
    inv = g.inverse_precision(raw)
    assert inv.dtype == dtype and inv.shape == (3, 7, 2, 2)
    expected = torch.linalg.inv(_explicit_precision(raw.double()))
    tol = 1e-5 if dtype == torch.float32 else 1e-11
    torch.testing.assert_close(inv.double(), expected, rtol=tol, atol=0)


@pytest.mark.parametrize("row", EXTREME_RAW)
def test_inverse_precision_extremes_match_exact_rationals(row: tuple[float, float, float]) -> None:
    inv = g.inverse_precision(torch.tensor(row, dtype=torch.float64))
    exact = _exact_inverse(row)
    for i in range(2):
        for j in range(2):
            want = float(exact[i][j])
            assert inv[i, j].item() == pytest.approx(want, rel=1e-12, abs=0), (i, j)
    # Log of the trace in fp32 stays finite and accurate even where the trace overflows fp32.
    exact_trace = exact[0][0] + exact[1][1]
    log_exact = math.log(exact_trace.numerator) - math.log(exact_trace.denominator)
    log_tr32 = g.log_trace_inverse_precision(torch.tensor(row, dtype=torch.float32)).item()
    assert math.isfinite(log_tr32)
    assert log_tr32 == pytest.approx(log_exact, rel=1e-6, abs=1e-5)
    log_tr64 = g.log_trace_inverse_precision(torch.tensor(row, dtype=torch.float64)).item()
    assert log_tr64 == pytest.approx(log_exact, rel=1e-13, abs=1e-13)


def test_log_trace_finite_where_trace_overflows_fp32() -> None:
    raw = torch.tensor([-20.0, -1e6, -20.0])
    assert torch.isinf(g.trace_inverse_precision(raw))
    assert torch.isfinite(g.log_trace_inverse_precision(raw))


def test_trace_matches_trace_of_inverse() -> None:
    raw = _random_raw(6, 4, seed=1)
    expected = torch.linalg.inv(_explicit_precision(raw)).diagonal(dim1=-2, dim2=-1).sum(-1)
    torch.testing.assert_close(g.trace_inverse_precision(raw), expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(g.log_trace_inverse_precision(raw), expected.log(), rtol=1e-12, atol=1e-14)


def test_covariances_match_explicit_and_broadcast() -> None:
    raw = _random_raw(2, 5, seed=2)  # (N=2, K=5, 3)
    box_wh = torch.tensor([[[0.3, 0.5]], [[0.1, 0.8]]], dtype=torch.float64)  # (2, 1, 2)
    image_wh = torch.tensor([640.0, 480.0], dtype=torch.float64)
    inv = torch.linalg.inv(_explicit_precision(raw))
    area = (box_wh[..., 0] * box_wh[..., 1])[..., None, None]
    cov_n = g.covariance_normalized(raw, box_wh)
    torch.testing.assert_close(cov_n, area * inv, rtol=1e-12, atol=0)
    scale = torch.diag(image_wh)
    cov_p = g.covariance_pixels(raw, box_wh, image_wh)
    torch.testing.assert_close(cov_p, area * (scale @ inv @ scale), rtol=1e-12, atol=0)
    assert cov_p.shape == (2, 5, 2, 2)
    # exactly symmetric in fp32 too (the two off-diagonals were once scaled in different orders)
    raw32 = torch.randn(4000, 3, generator=torch.Generator().manual_seed(0))
    cov32 = g.covariance_pixels(raw32, torch.rand(4000, 2, generator=torch.Generator().manual_seed(1)),
                                torch.tensor([640.0, 429.0]))
    assert torch.equal(cov32, cov32.mT)


def test_log_det_mahalanobis_nll_match_explicit() -> None:
    raw = _random_raw(4, 3, seed=3)
    gen = torch.Generator().manual_seed(4)
    d = torch.randn(4, 3, 2, generator=gen, dtype=torch.float64)
    precision = _explicit_precision(raw)
    torch.testing.assert_close(g.log_det_precision(raw), torch.logdet(precision), rtol=1e-12, atol=1e-12)
    maha = (d[..., None, :] @ precision @ d[..., :, None])[..., 0, 0]
    torch.testing.assert_close(g.mahalanobis_sq(d, raw), maha, rtol=1e-12, atol=1e-14)
    area = torch.tensor([0.2, 0.05, 0.5, 1.0], dtype=torch.float64)[:, None]
    nll = 0.5 * maha / area - 0.5 * torch.logdet(precision)
    torch.testing.assert_close(g.gaussian_nll(d, raw, area), nll, rtol=1e-12, atol=1e-12)
    # The full Gaussian log-density differs from this NLL only by log(2 pi area).
    cov = area[..., None, None] * torch.linalg.inv(precision)
    logpdf = torch.distributions.MultivariateNormal(torch.zeros_like(d), covariance_matrix=cov).log_prob(d)
    torch.testing.assert_close(-logpdf, nll + torch.log(2 * math.pi * area), rtol=1e-10, atol=1e-10)


def test_weighted_log_mean_trace_matches_direct_mean() -> None:
    raw = _random_raw(3, 6, seed=5)
    logits = torch.randn(3, 6, generator=torch.Generator().manual_seed(6), dtype=torch.float64) * 4
    trace = torch.linalg.inv(_explicit_precision(raw)).diagonal(dim1=-2, dim2=-1).sum(-1)
    w = torch.sigmoid(logits)
    expected = torch.log((w * trace).sum(-1) / w.sum(-1))
    torch.testing.assert_close(g.weighted_log_mean_trace(raw, logits), expected, rtol=1e-12, atol=1e-12)


def test_weighted_log_mean_trace_mask_ignores_inactive_slots() -> None:
    raw = _random_raw(2, 5, seed=7)
    logits = torch.randn(2, 5, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    mask = torch.tensor([[True, True, True, False, False], [False, False, False, False, False]])
    poisoned = raw.clone()
    poisoned[~mask] = float("nan")
    out = g.weighted_log_mean_trace(poisoned, logits, mask)
    torch.testing.assert_close(out[0], g.weighted_log_mean_trace(raw[0, :3], logits[0, :3]))
    assert out[1].item() == 0.0
    with pytest.raises(ValueError, match="bool"):
        g.weighted_log_mean_trace(raw, logits, mask.float())


def test_weighted_log_mean_trace_clamps_weights() -> None:
    raw = torch.tensor([[0.0, 0.0, 0.0], [-3.0, 0.0, -3.0]], dtype=torch.float64)
    logits = torch.tensor([-200.0, -300.0], dtype=torch.float64)  # both weights clamp to 1e-12: plain mean
    trace = torch.tensor([2.0, 2 * math.exp(6.0)], dtype=torch.float64)
    assert g.weighted_log_mean_trace(raw, logits).item() == pytest.approx(math.log(trace.mean().item()))


def test_rescore_formula_and_range() -> None:
    score = torch.tensor([0.0, 0.3, 0.9, 1.0, 1.0], dtype=torch.float64)
    lmt = torch.tensor([0.5, -2.0, 3.0, 0.0, -500.0], dtype=torch.float64)
    out = g.rescore(score, lmt, alpha=0.2)
    for s, t, o in zip(score.tolist(), lmt.tolist(), out.tolist()):
        z = (math.log(s) if s > 0 else -math.inf) - 0.2 * t
        expected = 1.0 / (1.0 + math.exp(-z)) if z < 700 else 1.0
        assert o == pytest.approx(min(expected, math.nextafter(1.0, 0.0)), rel=1e-12, abs=0)
    assert out[0].item() == 0.0 and out[-1].item() < 1.0
    assert (g.rescore(score.float(), lmt.float()) < 1.0).all()


def test_ellipse_axes_known_cases() -> None:
    cov = torch.tensor([[[4.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [0.0, 4.0]], [[2.0, 1.0], [1.0, 2.0]]])
    major, minor, angle = g.ellipse_axes(cov, n_sigma=2.0)
    torch.testing.assert_close(major, torch.tensor([4.0, 4.0, 2.0 * math.sqrt(3.0)]))
    torch.testing.assert_close(minor, torch.tensor([2.0, 2.0, 2.0]))
    # y points down: a positive covariance tilts the major axis from +x towards +y, i.e. +45 degrees.
    torch.testing.assert_close(angle, torch.tensor([0.0, math.pi / 2, math.pi / 4]))


def test_ellipse_axes_match_eigh() -> None:
    raw = _random_raw(50, seed=9)
    cov = g.covariance_pixels(raw, torch.tensor([0.2, 0.4], dtype=torch.float64), torch.tensor([64.0, 48.0]))
    major, minor, angle = g.ellipse_axes(cov, n_sigma=1.5)
    evals, evecs = torch.linalg.eigh(cov)
    torch.testing.assert_close(major, 1.5 * evals[:, 1].sqrt(), rtol=1e-9, atol=0)
    torch.testing.assert_close(minor, 1.5 * evals[:, 0].sqrt(), rtol=1e-7, atol=0)
    direction = torch.stack([angle.cos(), angle.sin()], dim=-1)
    alignment = (direction * evecs[:, :, 1]).sum(-1).abs()
    torch.testing.assert_close(alignment, torch.ones(50, dtype=torch.float64), rtol=0, atol=1e-9)


def test_gradcheck_fp64() -> None:
    raw = _random_raw(2, 3, seed=10).requires_grad_(True)
    d = torch.randn(2, 3, 2, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    d.requires_grad_(True)
    area = torch.tensor([[0.3], [0.6]], dtype=torch.float64, requires_grad=True)
    box_wh = torch.tensor([[[0.4, 0.5]], [[0.9, 0.2]]], dtype=torch.float64, requires_grad=True)
    logits = torch.randn(2, 3, generator=torch.Generator().manual_seed(12), dtype=torch.float64)
    logits.requires_grad_(True)
    assert torch.autograd.gradcheck(g.gaussian_nll, (d, raw, area))
    assert torch.autograd.gradcheck(g.log_trace_inverse_precision, (raw,))
    assert torch.autograd.gradcheck(g.trace_inverse_precision, (raw,))
    assert torch.autograd.gradcheck(g.covariance_normalized, (raw, box_wh))
    assert torch.autograd.gradcheck(g.weighted_log_mean_trace, (raw, logits))


def test_gradient_finite_at_zero_l21() -> None:
    raw = torch.tensor([[0.5, 0.0, -0.5]], dtype=torch.float64, requires_grad=True)
    g.log_trace_inverse_precision(raw).sum().backward()
    assert torch.isfinite(raw.grad).all() and raw.grad[0, 1].item() == 0.0


def test_samples_have_predicted_covariance_and_coverage() -> None:
    raw = torch.tensor([[0.4, 1.3, -0.7], [-1.0, -2.5, 0.8]], dtype=torch.float64)
    box_wh = torch.tensor([[0.3, 0.2], [0.05, 0.6]], dtype=torch.float64)
    area = box_wh[:, 0] * box_wh[:, 1]
    cov = g.covariance_normalized(raw, box_wh)
    dist = torch.distributions.MultivariateNormal(torch.zeros(2, 2, dtype=torch.float64), covariance_matrix=cov)
    torch.manual_seed(13)
    n = 200_000
    samples = dist.sample((n,))  # (n, 2, 2)
    empirical = torch.einsum("nki,nkj->kij", samples, samples) / n
    scale = cov.diagonal(dim1=-2, dim2=-1).sqrt()
    corr_err = (empirical - cov) / (scale[:, :, None] * scale[:, None, :])
    assert corr_err.abs().max().item() < 0.015
    maha = g.mahalanobis_sq(samples, raw) / area  # chi-square with 2 dof under the model
    for k in (1.0, 2.0, 3.0):
        coverage = (maha <= k * k).double().mean(0)
        expected = 1.0 - math.exp(-k * k / 2.0)
        assert (coverage - expected).abs().max().item() < 0.005, (k, coverage)


def test_bad_shapes_raise() -> None:
    with pytest.raises(ValueError, match="last dim 3"):
        g.inverse_precision(torch.zeros(4, 2))
    with pytest.raises(ValueError, match="last dim 2"):
        g.mahalanobis_sq(torch.zeros(4, 3), torch.zeros(4, 3))
    with pytest.raises(ValueError, match=r"\(\.\.\., 2, 2\)"):
        g.ellipse_axes(torch.zeros(3, 3))
    with pytest.raises(ValueError, match="disagree"):
        g.weighted_log_mean_trace(torch.zeros(2, 4, 3), torch.zeros(2, 5))
