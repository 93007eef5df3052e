"""Hungarian matching: optimal against brute force, query groups, cost terms."""

from __future__ import annotations

import itertools

import pytest
import torch

from trainer.losses import SetCriterion
from trainer.matcher import HungarianMatcher, MatchCosts, focal_class_cost

NUM_KP = [3, 2]  # two keypointed classes, padded to 3 slots each


def _outputs(batch: int, queries: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    kps = torch.randn(batch, queries, 6, 8, generator=g)
    kps[..., :2] = torch.rand(batch, queries, 6, 2, generator=g)
    return {
        "pred_logits": torch.randn(batch, queries, 3, generator=g),
        "pred_boxes": torch.rand(batch, queries, 4, generator=g) * 0.4 + 0.2,
        "pred_keypoints": kps,
    }


def _targets(n: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed + 1000)
    kps = torch.rand(n, 3, 3, generator=g)
    kps[..., 2] = torch.randint(0, 3, (n, 3), generator=g).float()
    return {
        "labels": torch.randint(0, 2, (n,), generator=g),
        "boxes": torch.rand(n, 4, generator=g) * 0.4 + 0.2,
        "keypoints": kps,
    }


def _brute_force(cost: torch.Tensor) -> float:
    q, n = cost.shape
    if n <= q:
        return min(sum(cost[p[j], j].item() for j in range(n)) for p in itertools.permutations(range(q), n))
    return min(sum(cost[i, p[i]].item() for i in range(q)) for p in itertools.permutations(range(n), q))


@pytest.mark.parametrize(
    ("queries", "num_targets", "seed"), [(5, 3, 0), (4, 4, 1), (6, 2, 2), (2, 4, 3), (5, 1, 4)]
)
def test_assignment_is_optimal_against_brute_force(queries: int, num_targets: int, seed: int) -> None:
    matcher = HungarianMatcher(NUM_KP)
    outputs = _outputs(1, queries, seed)
    target = _targets(num_targets, seed)
    ((rows, cols),) = matcher(outputs, [target])
    assert len(rows) == min(queries, num_targets) and len(set(rows.tolist())) == len(rows)
    assert len(set(cols.tolist())) == len(cols)
    cost = matcher.cost_matrix(outputs, 0, target)
    assert cost.shape == (queries, num_targets)
    assert cost[rows, cols].sum().item() == pytest.approx(_brute_force(cost), rel=1e-6)


def test_each_group_matches_every_target_within_its_queries() -> None:
    matcher = HungarianMatcher(NUM_KP)
    outputs = _outputs(2, 9, seed=5)
    targets = [_targets(2, 5), _targets(0, 6)]
    (rows, cols), (empty_rows, empty_cols) = matcher(outputs, targets, num_groups=3)
    assert len(empty_rows) == len(empty_cols) == 0
    assert sorted(cols.tolist()) == [0, 0, 0, 1, 1, 1]
    cost = matcher.cost_matrix(outputs, 0, targets[0])
    for g in range(3):
        in_group = (rows >= 3 * g) & (rows < 3 * g + 3)
        assert sorted(cols[in_group].tolist()) == [0, 1]
        assert cost[rows[in_group], cols[in_group]].sum().item() == pytest.approx(
            _brute_force(cost[3 * g : 3 * g + 3]), rel=1e-6
        )


def test_cost_is_the_weighted_sum_of_the_loss_terms() -> None:
    """The cost of a (query, target) pair equals the criterion's weighted per-pair terms (focal for the class)."""
    outputs = _outputs(1, 3, seed=7)
    target = _targets(2, 7)
    costs = MatchCosts()
    cost = HungarianMatcher(NUM_KP, costs).cost_matrix(outputs, 0, target)
    criterion = SetCriterion(NUM_KP)
    for q in range(3):
        for n in range(2):
            pair = [(torch.tensor([q]), torch.tensor([n]))]
            terms = criterion.layer_losses(outputs, [target], pair, num_boxes=1.0)
            label = int(target["labels"][n])
            expected = (
                costs.cls * focal_class_cost(outputs["pred_logits"][0, q, label])
                + costs.bbox * terms["loss_bbox"]
                + costs.giou * (terms["loss_giou"] - 1)
                + sum(terms[f"loss_kp_{k}"] for k in ("l1", "findable", "visible", "nll"))
            )
            torch.testing.assert_close(cost[q, n], expected, rtol=1e-5, atol=1e-5)


def test_focal_class_cost_formula() -> None:
    logits = torch.tensor([-3.0, 0.0, 2.5])
    p = torch.sigmoid(logits)
    expected = 0.25 * (1 - p) ** 2 * -torch.log(p) - 0.75 * p**2 * -torch.log(1 - p)
    torch.testing.assert_close(focal_class_cost(logits), expected)


def test_non_finite_predictions_still_match() -> None:
    outputs = _outputs(1, 4, seed=8)
    outputs["pred_keypoints"][0, 1] = float("nan")
    outputs["pred_logits"][0, 2] = float("nan")
    ((rows, cols),) = HungarianMatcher(NUM_KP)(outputs, [_targets(2, 8)])
    assert len(rows) == 2 and set(rows.tolist()).isdisjoint({1, 2})


def test_bad_inputs_are_refused() -> None:
    matcher = HungarianMatcher(NUM_KP)
    outputs = _outputs(2, 6, seed=9)
    with pytest.raises(ValueError, match="6 queries cannot be split into 4 groups"):
        matcher(outputs, [_targets(1, 0), _targets(1, 1)], num_groups=4)
    with pytest.raises(ValueError, match="1 target dicts for a batch of 2"):
        matcher(outputs, [_targets(1, 0)])
    outputs["pred_keypoints"] = outputs["pred_keypoints"][:, :, :5]
    with pytest.raises(ValueError, match=r"pred_keypoints must be \(\.\.\., 2 classes x 3 slots = 6, 8\)"):
        matcher(outputs, [_targets(1, 0), _targets(1, 1)])
    with pytest.raises(ValueError, match="needs a class with keypoints"):
        HungarianMatcher([])
