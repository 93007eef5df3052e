"""Parity with the public peer (rfdetr 1.11.2) on its random-weight fixture (fp32, CPU)."""

from __future__ import annotations

import pytest
import torch

from rfkp import RFDETRKeypoint
from tests.conftest import shared_path

FIXTURE = ("fixtures", "rfdetr-keypoint-preview-random")


@pytest.fixture(scope="module")
def peer_model() -> RFDETRKeypoint:
    return RFDETRKeypoint.from_checkpoint(shared_path(*FIXTURE, "checkpoint.pth"), device="cpu")


def test_forward_raw_matches_peer(peer_model: RFDETRKeypoint) -> None:
    ref = torch.load(shared_path(*FIXTURE, "raw_outputs.pt"), weights_only=True)
    out = peer_model.forward_raw(ref["input"])
    for key in ("pred_logits", "pred_boxes", "pred_keypoints"):
        assert out[key].shape == ref[key].shape, key
        diff = (out[key] - ref[key]).abs().max().item()
        assert diff <= 1e-4, f"{key}: max abs diff {diff}"


def test_predict_matches_peer(peer_model: RFDETRKeypoint) -> None:
    ref = torch.load(shared_path(*FIXTURE, "predict_outputs.pt"), weights_only=True)
    image = shared_path(*FIXTURE, "image.jpg")
    # the peer keeps its top-k order; compare against the unsorted decode of the same pipeline
    from rfkp.postprocess import decode_detections

    x, sizes = peer_model.preprocess([image])
    raw = peer_model.forward_raw(x)
    dec = {k: v[0] for k, v in decode_detections(raw, sizes, num_keypoints_per_class=[17]).items()}
    assert torch.equal(dec["labels"], ref["class_id"])
    assert (dec["boxes"] - ref["xyxy"]).abs().max() <= 1e-3
    assert (dec["scores"] - ref["detection_confidence"]).abs().max() <= 1e-5
    kp = ref["class_id"] < 1  # rows of the keypointed class
    assert kp.sum() > 50
    assert (dec["keypoints"][kp] - ref["xy"][kp]).abs().max() <= 1e-3
    assert (dec["findable"][kp] - ref["keypoint_confidence"][kp]).abs().max() <= 1e-5
    assert torch.isnan(dec["keypoints"][~kp]).all()
    # covariance: the peer omits the box-area factor; ours = peer * area of the predicted box
    prob = raw["pred_logits"].sigmoid().reshape(-1)
    query = torch.sort(prob, descending=True, stable=True).indices[:100] // raw["pred_logits"].shape[-1]
    area = raw["pred_boxes"][0, query, 2:].prod(-1)
    expected = ref["covariance_peer"][kp] * area[kp, None, None, None]
    rel = (dec["covariance"][kp] - expected).abs() / expected.abs().amax((-1, -2), keepdim=True)
    assert rel.max() <= 1e-4

    # the public predict() returns the same detections, sorted by rescored score
    dets = peer_model.predict(image, threshold=0.0)
    assert len(dets) == 100
    assert dets.image_size == (429, 640)
    order = torch.sort(dec["scores"], descending=True, stable=True).indices
    assert abs(dets.score - dec["scores"][order].numpy()).max() <= 1e-6
    assert abs(dets.xyxy - dec["boxes"][order].numpy()).max() <= 1e-4
    # the peer trains on COCO keypoint coordinates as stored: its COCO rows are its keypoints unchanged
    assert peer_model.config.coco_keypoint_offset == 0.0 and dets.coco_keypoint_offset == 0.0
    i = int((dets.class_id == 0).nonzero()[0][0])  # the first detection of the keypointed class
    row = dets.to_coco_results(image_id=1)[i]
    assert row["keypoints"][:2] == dets.keypoints[i, 0].tolist()


def test_peer_args_fix_what_the_tensors_cannot(caplog: pytest.LogCaptureFixture) -> None:
    """Sampling offsets give heads x points (32 here); the peer's args split it, or the peer's defaults with a
    warning; its postprocess_trace_alpha becomes the rescoring strength."""
    from rfkp.checkpoint import CheckpointError, config_from_peer, read_checkpoint

    data = read_checkpoint(shared_path(*FIXTURE, "checkpoint.pth"))
    state, args = data["model"], dict(data["args"])
    with caplog.at_level("WARNING", logger="rfkp.checkpoint"):
        cfg = config_from_peer(state, args)
    assert (cfg.ca_heads, cfg.ca_points, cfg.sa_heads, cfg.rescore_alpha) == (16, 2, 8, 0.2)
    assert "assuming 16 cross-attention heads x 2 points" in caplog.text and "assuming 8 self-attention" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="rfkp.checkpoint"):
        cfg = config_from_peer(state, {**args, "dec_n_points": 4, "sa_nheads": 4, "postprocess_trace_alpha": 0.3,
                                       "dual_projector_kp_only": True})
    assert (cfg.ca_heads, cfg.ca_points, cfg.sa_heads, cfg.rescore_alpha) == (8, 4, 4, 0.3)
    assert not caplog.text
    assert (config_from_peer(state, {**args, "ca_nheads": 32}).ca_points) == 1
    with pytest.raises(CheckpointError, match="does not fit ca_nheads=8 / dec_n_points=2"):
        config_from_peer(state, {**args, "ca_nheads": 8, "dec_n_points": 2})
    with pytest.raises(CheckpointError, match="does not fit ca_nheads=None / dec_n_points=3"):
        config_from_peer(state, {**args, "dec_n_points": 3})
    # flags that leave the tensors alone come from args: honoured, refused, or assumed with a warning
    assert "assuming True (the released model's" in caplog.text
    assert not config_from_peer(state, {**args, "dual_projector_kp_only": False}).dual_projector_kp_only
    with pytest.raises(CheckpointError, match="bbox_reparam=False, which rfkp does not implement"):
        config_from_peer(state, {**args, "bbox_reparam": False})


def test_peer_variants_load_and_mismatches_are_named(tmp_path) -> None:  # noqa: ANN001
    from rfkp.checkpoint import CheckpointError, read_checkpoint

    data = read_checkpoint(shared_path(*FIXTURE, "checkpoint.pth"))

    def load(state: dict, args: dict | None = None) -> RFDETRKeypoint:
        path = tmp_path / "variant.pth"
        torch.save({"model": state, "args": args or data["args"]}, path)
        return RFDETRKeypoint.from_checkpoint(path, device="cpu")

    state = data["model"]
    with pytest.raises(CheckpointError, match=r"variant.pth: .*missing \['register_ref_points'\]"):
        load({**state, "transformer.register_tokens": torch.zeros(2, 256)})
    registers = {"transformer.register_tokens": torch.randn(3, 256), "transformer.register_ref_points": torch.zeros(3, 4)}
    assert load({**state, **registers}).config.decoder_registers == 3
    queries = state["transformer.keypoint_query_initializer.queries"]
    with pytest.raises(CheckpointError, match="keypoint stream is 100 wide, which does not divide the instance"):
        load({**state, "transformer.keypoint_query_initializer.queries": queries[:, :100]})
    with pytest.raises(CheckpointError, match="does not match the inferred architecture: size mismatch"):
        load({**state, "transformer.keypoint_query_initializer.queries": queries[:, :128]})  # only this tensor
    linear = state["transformer.decoder.layers.0.linear2.weight"]
    with pytest.raises(CheckpointError, match="does not match the inferred architecture: size mismatch for decoder"):
        load({**state, "transformer.decoder.layers.0.linear2.weight": linear[:, :100]})
    # the peer keeps encoder layers after its last feature output; they never reach the outputs
    model = load(state, {**data["args"], "out_feature_indexes": [2, 5, 8, 11]})
    assert len(model.network.backbone.vit.blocks) == 11
