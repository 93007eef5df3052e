"""Call-time architecture knobs (weight-sharing NAS): resolution, patch size, decoder layers, queries, windows."""

from __future__ import annotations

import pytest
import torch

from rfkp import RFDETRKeypoint
from rfkp.nn.detector import SubArchitecture
from rfkp.variants import tiny


@pytest.fixture(scope="module")
def model() -> RFDETRKeypoint:
    return RFDETRKeypoint.from_config(tiny(num_classes=3, num_keypoints_per_class=[7, 4]), device="cpu", seed=1)


@pytest.mark.parametrize("resolution", [128, 192, 256, 320])
@pytest.mark.parametrize("patch", [12, 16])
def test_resolutions_and_patch_sizes(model: RFDETRKeypoint, resolution: int, patch: int) -> None:
    if resolution % (2 * patch):
        pytest.skip("resolution not a multiple of patch x windows")
    x = torch.randn(1, 3, resolution, resolution)
    out = model.forward_raw(x, patch_size=patch)
    assert out["pred_logits"].shape == (1, 20, 3)
    assert out["pred_keypoints"].shape == (1, 20, 14, 8)
    assert all(torch.isfinite(v).all() for v in out.values())


def test_bad_resolution_is_rejected(model: RFDETRKeypoint) -> None:
    with pytest.raises(ValueError, match="multiples of 32"):
        model.forward_raw(torch.randn(1, 3, 200, 256))


@pytest.mark.parametrize("windows", [1, 2, 4])
def test_windows(model: RFDETRKeypoint, windows: int) -> None:
    out = model.forward_raw(torch.randn(1, 3, 256, 256), num_windows=windows)
    assert torch.isfinite(out["pred_boxes"]).all()


def test_windows_change_the_result(model: RFDETRKeypoint) -> None:
    x = torch.randn(1, 3, 256, 256)
    a = model.forward_raw(x, num_windows=1)["pred_logits"]
    b = model.forward_raw(x, num_windows=2)["pred_logits"]
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("queries", [1, 10, 20])
def test_queries(model: RFDETRKeypoint, queries: int) -> None:
    out = model.forward_raw(torch.randn(2, 3, 256, 256), num_queries=queries)
    assert out["pred_boxes"].shape == (2, queries, 4)


def test_fewer_queries_are_a_prefix_of_more(model: RFDETRKeypoint) -> None:
    """Queries are top-k proposals: keeping k of them gives the k best of the full set, in the same order."""
    x = torch.randn(1, 3, 256, 256)
    with torch.inference_mode():
        full = model.network(x, SubArchitecture(dec_layers=1), with_aux=True)
        some = model.network(x, SubArchitecture(dec_layers=1, num_queries=5), with_aux=True)
    assert torch.allclose(full["enc_outputs"]["pred_boxes"][:, :5], some["enc_outputs"]["pred_boxes"], atol=1e-6)


def test_decoder_depth_equals_auxiliary_outputs(model: RFDETRKeypoint) -> None:
    x = torch.randn(2, 3, 256, 256)
    with torch.inference_mode():
        full = model.network(x, with_aux=True)
        layers = full["aux_outputs"] + [full]
        for k in (1, 2):
            cut = model.network(x, SubArchitecture(dec_layers=k))
            for key in ("pred_logits", "pred_boxes", "pred_keypoints"):
                assert torch.allclose(cut[key], layers[k - 1][key], atol=1e-5), (k, key)
    with pytest.raises(ValueError, match=r"dec_layers must be in \[1, 2\] for this model, got 3"):
        model.forward_raw(x, dec_layers=3)


def test_preview_resolutions_and_layers() -> None:
    """The preview architecture runs from 384 to 704 and with 1..4 decoder layers."""
    m = RFDETRKeypoint.from_config(tiny(vit_depth=12, out_feature_indexes=[3, 6, 9, 12], dec_layers=4), "cpu")
    for res, layers in ((384, 1), (448, 2), (576, 3), (704, 4)):
        out = m.forward_raw(torch.randn(1, 3, res, res), dec_layers=layers, patch_size=16)
        assert torch.isfinite(out["pred_logits"]).all()
