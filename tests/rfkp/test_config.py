"""ModelConfig refuses values of the wrong type or size with a message naming the field, and takes what JSON
gives for tuples and floats."""

from __future__ import annotations

import json

import pytest
import torch

from rfkp.checkpoint import CheckpointError, load_config_and_state
from rfkp.config import MAX_RESOLUTION, ModelConfig
from rfkp.variants import VARIANTS, tiny


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_variants_are_valid_and_round_trip_through_json(name: str) -> None:
    config = VARIANTS[name]()
    again = ModelConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config
    assert isinstance(again.image_mean, tuple) and all(isinstance(e, tuple) for e in again.skeletons[0])


def test_numpy_numbers_are_taken_as_python_numbers() -> None:
    import numpy as np

    config = ModelConfig(num_classes=np.int64(2), rescore_alpha=np.float32(0.25), num_keypoints_per_class=[np.int32(3)])
    assert type(config.num_classes) is int and type(config.rescore_alpha) is float
    assert type(config.num_keypoints_per_class[0]) is int
    json.dumps(config.to_dict())


def test_json_types_are_converted() -> None:
    config = ModelConfig(image_mean=[0, 0, 1], rescore_alpha=1, vit_mlp_ratio=2, covariance_scale=[[1] * 17])
    assert config.image_mean == (0.0, 0.0, 1.0) and isinstance(config.image_mean[0], float)
    assert isinstance(config.rescore_alpha, float) and isinstance(config.covariance_scale[0][0], float)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(dec_layers=2.5), "dec_layers: expected int, got 2.5"),
        (dict(dec_layers=True), "dec_layers: expected int, got True"),
        (dict(dual_projector=1), "dual_projector: expected bool"),
        (dict(projector_norm=None), "projector_norm: expected str"),
        (dict(num_keypoints_per_class=[7, "4"]), r"num_keypoints_per_class\[1\]: expected int"),
        (dict(num_keypoints_per_class=7), "num_keypoints_per_class: expected a list"),
        (dict(image_mean=[0.5, 0.5]), "image_mean: expected 3 values"),
        (dict(image_std=[1.0, 0.0, 1.0]), "image_std finite and > 0"),
        (dict(skeletons=[[(0, 17)]]), r"skeleton edge \(0, 17\)"),
        (dict(skeletons=[[(0, 1, 2)]]), r"skeletons\[0\]\[0\]: expected 2 values"),
        (dict(num_keypoints_per_class=[3, -1], num_classes=3), "must be >= 0"),
        (dict(num_queries=0), "num_queries must be >= 1"),
        (dict(resolution=500), "not a multiple of patch_size x num_windows = 24"),
        (dict(resolution=24 * 171), f"above the largest supported input side {MAX_RESOLUTION}"),
        (dict(vit_heads=5), "vit_dim 384 is not divisible by vit_heads 5"),
        (dict(ca_heads=3), "hidden_dim 256 is not divisible by ca_heads 3"),
        (dict(hidden_dim=384, keypoint_dim_downscale=3), r"width 128 is not divisible by its 5 heads \(ca_heads 16 // 3\)"),
        (dict(out_feature_indexes=[3, 13]), "out_feature_indexes must lie in 1..vit_depth 12"),
        (dict(rescore_alpha=float("nan")), "rescore_alpha must be finite"),
        (dict(rescore_alpha=10**400), "rescore_alpha: 1000.* is too large for a float"),
        (dict(keypoint_names=[["a"] * 17, ["b"]]), "1 keypointed classes but 2 keypoint name lists"),
    ],
)
def test_invalid_values_name_the_field(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ModelConfig(**overrides)


def test_category_ids() -> None:
    assert ModelConfig(num_classes=3, category_ids=[1, 5, 2]).category_ids == [1, 5, 2]
    for bad in ([1, 2], [1, 1, 2]):
        with pytest.raises(ValueError, match="category_ids must name 3 distinct ids"):
            ModelConfig(num_classes=3, category_ids=bad)


def test_predict_carries_the_category_ids() -> None:
    from rfkp.api import RFDETRKeypoint

    model = RFDETRKeypoint.from_config(tiny(num_classes=2, num_keypoints_per_class=[3], category_ids=[7, 3]))
    dets = model.predict(torch.rand(3, 64, 64), threshold=0.0, num_select=4)
    assert dets.category_ids == [7, 3]
    assert {r["category_id"] for r in dets.to_coco_results(image_id=0)} <= {7, 3}


def test_from_dict_refuses_non_mappings_and_unknown_keys() -> None:
    with pytest.raises(ValueError, match="mapping of field names"):
        ModelConfig.from_dict([("num_classes", 2)])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown model config keys"):
        ModelConfig.from_dict({"num_clases": 2})


def test_checkpoint_with_an_invalid_config_is_refused_with_its_path(tmp_path) -> None:
    from rfkp.api import RFDETRKeypoint

    path = tmp_path / "model.pt"
    RFDETRKeypoint.from_config(tiny(num_keypoints_per_class=[3], num_queries=4)).save_checkpoint(path)
    data = torch.load(path, weights_only=True)
    data["config"]["dec_layers"] = "2"
    torch.save(data, path)
    with pytest.raises(CheckpointError, match=r"model.pt: invalid model config: config field dec_layers"):
        load_config_and_state(path)
