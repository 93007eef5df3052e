"""Training mode: query groups, auxiliary outputs, gradients reach every parameter."""

from __future__ import annotations

import torch

from rfkp.nn.detector import KeypointDETR, SubArchitecture
from rfkp.nn.init import init_weights
from rfkp.variants import tiny


def _loss(out: dict) -> torch.Tensor:
    total = 0.0
    for o in [out, *out["aux_outputs"], out["enc_outputs"]]:
        total = total + o["pred_logits"].sigmoid().mean() + o["pred_boxes"].mean() + o["pred_keypoints"].pow(2).mean()
    return total


def _check_all_grads(arch: SubArchitecture) -> None:
    torch.manual_seed(0)
    net = KeypointDETR(tiny(num_classes=3, num_keypoints_per_class=[3, 2]))
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


def test_query_groups_do_not_see_each_other() -> None:
    torch.manual_seed(0)
    net = KeypointDETR(tiny())
    init_weights(net)
    net.train()
    x = torch.randn(1, 3, 256, 256)
    a = net(x)["pred_logits"]
    with torch.no_grad():
        net.query_feat.weight[20:] += 1.0  # group 1's content queries only
    b = net(x)["pred_logits"]
    assert torch.allclose(a[:, :20], b[:, :20], atol=1e-6)
    assert not torch.allclose(a[:, 20:], b[:, 20:])
