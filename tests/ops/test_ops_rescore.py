"""Gaussian rescoring reference and its torch.library op on CPU: closed forms, masking, autograd."""

from __future__ import annotations

import math

import pytest
import torch

import rfkp.ops as ops
from rfkp.ops import library
from rfkp.ops.sample_inputs import rescore_inputs

NAMES = ("cholesky", "findable_logit", "active", "score", "box_wh", "image_wh")


def test_hand_computed_detection():
    # One detection, two active keypoints and one padded slot holding garbage.
    # kp0: L = diag(2, 4) -> P^-1 = diag(1/4, 1/16), trace 0.3125; kp1: L = [[1, 0], [1, 1]] -> P = [[1, 1], [1, 2]],
    # P^-1 = [[2, -1], [-1, 1]], trace 3.
    chol = torch.tensor([[[math.log(2), 0.0, math.log(4)], [0.0, 1.0, 0.0], [float("inf"), 5.0, -1.0]]],
                        dtype=torch.float64)
    logit = torch.tensor([[0.0, math.log(3.0), 7.0]], dtype=torch.float64)  # w = 0.5, 0.75
    active = torch.tensor([[True, True, False]])
    score = torch.tensor([0.6], dtype=torch.float64)
    box = torch.tensor([[0.5, 0.25]], dtype=torch.float64)
    image = torch.tensor([[640.0, 480.0]], dtype=torch.float64)
    new_score, log_mean_trace, cov = ops.gaussian_rescore_reference(chol, logit, active, score, box, image)
    t = (0.5 * 0.3125 + 0.75 * 3.0) / 1.25
    assert log_mean_trace.item() == pytest.approx(math.log(t), rel=1e-12)
    # The released model's formula: sigmoid(log(score) - alpha * log T) = score / (score + T^alpha).
    assert new_score.item() == pytest.approx(0.6 / (0.6 + t**0.2), rel=1e-12)
    area = 0.125
    expected_kp1 = area * torch.tensor([[640.0**2 * 2, -640.0 * 480.0], [-640.0 * 480.0, 480.0**2]],
                                       dtype=torch.float64)
    torch.testing.assert_close(cov[0, 1], expected_kp1, rtol=1e-12, atol=0)
    torch.testing.assert_close(cov[0, 0], area * torch.diag(torch.tensor([640.0**2 / 4, 480.0**2 / 16],
                                                                         dtype=torch.float64)))
    assert torch.isnan(cov[0, 2]).all()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_no_active_keypoint_keeps_the_score_and_rescored_scores_stay_below_one(dtype):
    x = rescore_inputs(4, 4, dtype=dtype)
    x["active"][0] = False
    x["score"][1], x["score"][2], x["score"][3] = 0.0, 1.0, 1.0
    x["cholesky"][3] = torch.tensor([200.0, 0.0, 200.0], dtype=dtype)  # very sharp: sigmoid rounds to 1
    x["active"][3] = True
    new_score, log_mean_trace, _ = ops.gaussian_rescore_reference(*(x[n] for n in NAMES))
    assert log_mean_trace[0].item() == 0.0 and new_score[0] == x["score"][0]
    assert new_score[1].item() == 0.0
    below_one = torch.nextafter(torch.ones((), dtype=dtype), torch.zeros((), dtype=dtype))
    assert new_score[2] < 1 and new_score[3] == below_one


def test_uncertainty_lowers_the_score_and_covariance_is_symmetric_positive():
    x = rescore_inputs(16, 5, dtype=torch.float64)
    x["active"][:] = True
    sharp = dict(x, cholesky=x["cholesky"] + torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64))
    s_blurry, t_blurry, cov = ops.gaussian_rescore_reference(*(x[n] for n in NAMES))
    s_sharp, t_sharp, _ = ops.gaussian_rescore_reference(*(sharp[n] for n in NAMES))
    assert (t_sharp < t_blurry).all() and (s_sharp > s_blurry).all()
    torch.testing.assert_close(cov, cov.transpose(-1, -2))
    assert (torch.linalg.eigvalsh(cov) > 0).all()


def test_op_matches_reference_opcheck_and_gradcheck():
    x = rescore_inputs(4, 3, dtype=torch.float64)
    args = [x[n] for n in NAMES]
    for got, want in zip(ops.gaussian_rescore(*args), ops.gaussian_rescore_reference(*args)):
        assert torch.equal(got.nan_to_num(), want.nan_to_num())
    x["active"][:] = True  # opcheck compares outputs without equal_nan
    grad_args = [x[n].clone().requires_grad_(x[n].is_floating_point()) for n in NAMES]
    torch.library.opcheck(library.gaussian_rescore_op, (*grad_args, 0.2))
    assert torch.autograd.gradcheck(lambda *a: library.gaussian_rescore_op(*a, 0.2), grad_args)


def test_bad_rescore_inputs():
    x = rescore_inputs(2, 3)
    with pytest.raises(ValueError, match=r"findable_logit must be \(2, 3\)"):
        library.gaussian_rescore_op(x["cholesky"], x["findable_logit"][:, :2], x["active"], x["score"],
                                    x["box_wh"], x["image_wh"], 0.2)
    with pytest.raises(TypeError, match="active must be a bool tensor"):
        library.gaussian_rescore_op(x["cholesky"], x["findable_logit"], x["active"].float(), x["score"],
                                    x["box_wh"], x["image_wh"], 0.2)
