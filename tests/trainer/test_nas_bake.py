"""Baking a sub-architecture: the baked model, run without knobs, equals the original run with them."""

from __future__ import annotations

import pytest
import torch

from rfkp.api import RFDETRKeypoint
from rfkp.variants import tiny
from trainer.nas.bake import bake
from trainer.nas.space import ArchChoice


@pytest.fixture(scope="module")
def model() -> RFDETRKeypoint:
    return RFDETRKeypoint.from_config(tiny(num_classes=3, num_keypoints_per_class=[5, 3]), device="cpu", seed=7)


@pytest.mark.parametrize(
    "choice",
    [
        ArchChoice(192, 12, 1, 1, 7),  # every knob away from the model's (256, 16, 2, 2, 20)
        ArchChoice(224, 16, 2, 2, 20),  # resolution only
        ArchChoice(256, 16, 2, 1, 20),  # decoder layers only
    ],
    ids=lambda c: c.key(),
)
def test_baked_model_equals_the_sub_architecture(model: RFDETRKeypoint, choice: ArchChoice, tmp_path) -> None:
    baked = bake(model, choice)
    cfg = baked.config
    assert (cfg.resolution, cfg.patch_size, cfg.num_windows, cfg.dec_layers, cfg.num_queries) == (
        choice.resolution, choice.patch_size, choice.num_windows, choice.dec_layers, choice.num_queries)
    assert len(baked.network.decoder.layers) == choice.dec_layers
    x = torch.randn(2, 3, choice.resolution, choice.resolution, generator=torch.Generator().manual_seed(0))
    want = model.forward_raw(x, **choice.arch_kwargs())
    got = baked.forward_raw(x)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-5, msg=name)
    # it travels as an ordinary checkpoint, and predict() uses its resolution without being told
    path = tmp_path / "baked.pt"
    baked.save_checkpoint(path)
    again = RFDETRKeypoint.from_checkpoint(path, device="cpu")
    image = torch.rand(3, 150, 170, generator=torch.Generator().manual_seed(1))
    a = again.predict(image, threshold=0.0)
    b = model.predict(image, threshold=0.0, resolution=choice.resolution, **choice.arch_kwargs())
    torch.testing.assert_close(torch.from_numpy(a.keypoints), torch.from_numpy(b.keypoints), rtol=0, atol=1e-3,
                               equal_nan=True)  # fmt: skip
    torch.testing.assert_close(torch.from_numpy(a.score), torch.from_numpy(b.score), rtol=0, atol=1e-5)


def test_the_baked_model_still_trains_with_all_query_groups(model: RFDETRKeypoint) -> None:
    baked = bake(model, ArchChoice(192, 12, 1, 1, 7))
    network = baked.network.train()
    out = network(torch.randn(1, 3, 192, 192))
    assert out["pred_logits"].shape[1] == 7 * baked.config.group_detr
    out["pred_logits"].sum().backward()
    network.eval()


def test_choices_the_model_cannot_run_are_refused(model: RFDETRKeypoint) -> None:
    for choice, message in ((ArchChoice(256, 16, 2, 3, 20), "dec_layers"), (ArchChoice(256, 16, 2, 2, 21), "num_queries"),
                            (ArchChoice(250, 16, 2, 2, 20), "not a multiple"),
                            (ArchChoice(64, 0, 1, 1, 5), "patch_size must be positive integers")):  # fmt: skip
        with pytest.raises(ValueError, match=message):
            bake(model, choice)
