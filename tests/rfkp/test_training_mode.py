"""Training mode: query groups, auxiliary outputs, gradients reach every parameter."""

from __future__ import annotations

import pytest
import torch

from rfkp.nn.detector import KeypointDETR, SubArchitecture
from rfkp.nn.init import init_weights
from rfkp.variants import tiny


def _loss(out: dict) -> torch.Tensor:
    total = 0.0
    for o in [out, *out["aux_outputs"], out["enc_outputs"]]:
        total = total + o["pred_logits"].sigmoid().mean() + o["pred_boxes"].mean() + o["pred_keypoints"].pow(2).mean()
    return total


def _check_all_grads(arch: SubArchitecture, **config: object) -> None:
    torch.manual_seed(0)
    net = KeypointDETR(tiny(num_classes=3, num_keypoints_per_class=[3, 2], **config))
    init_weights(net)
    # zero-initialised last layers would block gradients to earlier layers in a single step: perturb them
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 1e-2)
    net.train()
    out = net(torch.randn(2, 3, 192, 192), arch)
    groups = net.cfg.group_detr
    q = arch.num_queries or net.cfg.num_queries
    assert out["pred_logits"].shape == (2, groups * q, 3)
    assert len(out["aux_outputs"]) == (arch.dec_layers or net.cfg.dec_layers) - 1
    _loss(out).backward()
    used_layers = arch.dec_layers or net.cfg.dec_layers
    missing = []
    for name, p in net.named_parameters():
        if name.startswith("decoder.layers.") and int(name.split(".")[2]) >= used_layers:
            continue  # layers beyond the sampled depth are legitimately unused
        if p.grad is None or not torch.isfinite(p.grad).all() or p.grad.abs().sum() == 0:
            missing.append(name)
    assert not missing, missing


def test_gradients_reach_every_parameter() -> None:
    _check_all_grads(SubArchitecture())


def test_gradients_for_a_sub_architecture() -> None:
    _check_all_grads(SubArchitecture(patch_size=12, num_windows=1, dec_layers=1, num_queries=7))


def test_gradients_with_a_narrow_keypoint_stream_and_inter_instance_attention() -> None:
    _check_all_grads(SubArchitecture(), keypoint_dim_downscale=4, inter_instance_kp_attn=True)


def test_gradients_with_registers_and_batchnorm_projectors() -> None:
    _check_all_grads(SubArchitecture(num_queries=9), decoder_registers=2, projector_norm="batch")


def test_gradients_with_one_projector_and_no_keypoint_cross_attention() -> None:
    _check_all_grads(SubArchitecture(), dual_projector=False, keypoint_cross_attn=False)


def test_an_unread_second_projector_is_not_run() -> None:
    """Without keypoint cross-attention and with a kp-only second projector, nothing reads that projector's
    map: the model keeps its weights (peer checkpoints carry them) but does not spend the compute."""
    net = KeypointDETR(tiny(keypoint_cross_attn=False))
    init_weights(net)
    calls = []
    net.backbone.keypoint_projector.register_forward_hook(lambda *args: calls.append(1))
    net.eval()(torch.randn(1, 3, 128, 128))
    assert calls == []
    net = KeypointDETR(tiny(keypoint_cross_attn=False, dual_projector_kp_only=False))
    net.backbone.keypoint_projector.register_forward_hook(lambda *args: calls.append(1))
    net.eval()(torch.randn(1, 3, 128, 128))
    assert calls == [1]  # the instance stream reads it


def test_gradients_when_both_streams_read_the_second_projector() -> None:
    _check_all_grads(SubArchitecture(), dual_projector_kp_only=False)


@pytest.mark.parametrize("config", [{}, {"keypoint_dim_downscale": 2, "inter_instance_kp_attn": True},
                                    {"decoder_registers": 3}])
def test_query_groups_do_not_see_each_other(config: dict) -> None:
    torch.manual_seed(0)
    net = KeypointDETR(tiny(**config))
    init_weights(net)
    with torch.no_grad():  # zero-initialised heads would hide the keypoint stream from the outputs
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 1e-2)
    net.train()
    x = torch.randn(1, 3, 256, 256)
    a = net(x)
    with torch.no_grad():
        net.query_feat.weight[20:] += 1.0  # group 1's content queries only
    b = net(x)
    for name in ("pred_logits", "pred_keypoints"):
        assert torch.allclose(a[name][:, :20], b[name][:, :20], atol=1e-6), name
        assert not torch.allclose(a[name][:, 20:], b[name][:, 20:]), name


def test_narrow_keypoint_stream_shapes_and_round_trip(tmp_path) -> None:  # noqa: ANN001
    from rfkp import RFDETRKeypoint

    cfg = tiny(num_classes=2, num_keypoints_per_class=[5], keypoint_dim_downscale=2, inter_instance_kp_attn=True)
    model = RFDETRKeypoint.from_config(cfg, device="cpu")
    layer = model.network.decoder.layers[0]
    kd = cfg.hidden_dim // 2
    assert model.network.keypoint_queries.queries.shape == (5, kd)
    assert layer.kp_cross_attn.value_proj.weight.shape == (kd, kd) and layer.memory_in_proj.weight.shape == (kd, cfg.hidden_dim)
    assert layer.kp_inst_self_attn.num_heads == cfg.sa_heads // 2 and layer.inter_inst_kp_attn.num_heads == cfg.ca_heads // 2
    path = tmp_path / "narrow.pt"
    model.save_checkpoint(path)
    loaded = RFDETRKeypoint.from_checkpoint(path, device="cpu")
    assert loaded.config == cfg
    x = torch.randn(1, 3, 128, 128)
    a, b = model.forward_raw(x), loaded.forward_raw(x)
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="keypoint_dim_downscale must be a divisor of hidden_dim"):
        tiny(keypoint_dim_downscale=3)


def test_registers_are_not_read_out_and_change_the_result() -> None:
    torch.manual_seed(0)
    net = KeypointDETR(tiny(decoder_registers=2)).eval()
    init_weights(net)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 1e-2)
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        a = net(x)
        assert a["pred_logits"].shape[1] == net.cfg.num_queries  # no register rows
        net.register_tokens.add_(1.0)
        b = net(x)
    assert not torch.allclose(a["pred_logits"], b["pred_logits"])  # the queries attend to the registers
    with pytest.raises(ValueError, match="projector_norm must be 'layer' or 'batch'"):
        tiny(projector_norm="group")
