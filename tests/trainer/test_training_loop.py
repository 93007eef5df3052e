"""The training loop's parts: parameter groups, EMA, schedule, init from another skeleton, exact resume, NAS."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch

from rfkp.api import RFDETRKeypoint
from rfkp.checkpoint import CheckpointError, write_checkpoint
from rfkp.nn.detector import KeypointDETR, SubArchitecture
from rfkp.variants import tiny
from trainer.data.coco import CocoKeypointDataset
from trainer.data.synthetic import make_dataset
from trainer.loop.build import build_network, model_config_for
from trainer.loop.checkpoints import load_train_state
from trainer.loop.ema import ModelEMA
from trainer.loop.optim import OptimizerSettings, parameter_groups
from trainer.loop.trainer import NonFiniteTrainingError, Trainer, TrainSettings, learning_rate_factor
from trainer.nas.space import SearchSpace


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> tuple[CocoKeypointDataset, CocoKeypointDataset]:
    root = tmp_path_factory.mktemp("synthetic")
    train = CocoKeypointDataset(make_dataset(root, "train", 12, seed=0), root / "images")
    val = CocoKeypointDataset(make_dataset(root, "val", 4, seed=1), root / "images")
    return train, val


def _network(dataset: CocoKeypointDataset, seed: int = 0) -> KeypointDETR:
    network, _ = build_network(model_config_for(dataset.schema, tiny(resolution=64)), seed=seed)
    return network


def _settings(**kw: object) -> TrainSettings:
    base = dict(epochs=2, batch_size=4, resolutions=[64], progress=False, tensorboard=False, eval_every=100)
    base.update(kw)
    return TrainSettings(**base)  # type: ignore[arg-type]


def test_backbone_gets_layer_wise_decayed_rates_and_no_decay_on_norms(synthetic) -> None:
    network = _network(synthetic[0])
    depth = len(network.backbone.vit.blocks)
    settings = OptimizerSettings(lr=1e-3, lr_backbone=1e-4, layer_decay=0.5, weight_decay=0.05)
    groups = parameter_groups(network, settings, depth)
    rate = {n: g["lr"] for g in groups for n in g["names"]}
    decay = {n: g["weight_decay"] for g in groups for n in g["names"]}
    assert rate[f"backbone.vit.blocks.{depth - 1}.attn.qkv.weight"] == pytest.approx(1e-4 * 0.5)
    assert rate["backbone.vit.blocks.0.attn.qkv.weight"] == pytest.approx(1e-4 * 0.5**depth)
    assert rate["backbone.vit.patch_embed.weight"] == pytest.approx(1e-4 * 0.5 ** (depth + 1))
    assert rate["class_embed.weight"] == rate["decoder.layers.0.cross_attn.value_proj.weight"] == 1e-3
    assert decay["class_embed.weight"] == 0.05
    assert decay["class_embed.bias"] == decay["backbone.vit.blocks.0.norm1.weight"] == 0.0
    assert decay["backbone.vit.pos_embed"] == decay["backbone.vit.blocks.0.ls1"] == 0.0
    assert sum(len(g["params"]) for g in groups) == sum(1 for _ in network.parameters())


def test_ema_follows_the_warmed_up_decay() -> None:
    model = torch.nn.Linear(2, 1)
    ema = ModelEMA(model, decay=0.9, tau=2.0)
    start = ema.module.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)
    d = 0.9 * (1 - math.exp(-1 / 2.0))
    assert torch.allclose(ema.module.weight, d * start + (1 - d) * model.weight)
    assert not ema.module.weight.requires_grad


def test_learning_rate_warms_up_then_follows_the_cosine_to_the_floor() -> None:
    assert learning_rate_factor(0, 100, 10, 0.1) == pytest.approx(0.1)
    assert learning_rate_factor(9, 100, 10, 0.1) == pytest.approx(1.0)
    assert learning_rate_factor(10, 100, 10, 0.1) == pytest.approx(1.0)
    assert learning_rate_factor(55, 100, 10, 0.1) == pytest.approx(0.55)
    assert learning_rate_factor(100, 100, 10, 0.1) == pytest.approx(0.1)


def test_init_from_a_checkpoint_of_another_skeleton_keeps_the_shared_weights(synthetic, tmp_path) -> None:
    # one class, 17 keypoints, calibrated, in the peer's keypoint convention
    person = KeypointDETR(tiny(resolution=64, covariance_scale=[[2.0] * 17], coco_keypoint_offset=0.0))
    with torch.no_grad():
        for p in person.parameters():
            p.normal_()
    write_checkpoint(tmp_path / "person.pt", person.cfg, person.state_dict())
    config = model_config_for(synthetic[0].schema, person.cfg)
    assert config.num_keypoints_per_class == [3, 5]
    assert config.covariance_scale == []  # the factors belong to the network they were fitted on
    assert config.coco_keypoint_offset == 0.5  # trained on rfkp's targets
    assert config.category_ids == synthetic[0].schema.category_ids
    network, report = build_network(config, tmp_path / "person.pt")
    mine, theirs = network.state_dict(), person.state_dict()
    assert torch.equal(mine["backbone.vit.blocks.1.attn.qkv.weight"], theirs["backbone.vit.blocks.1.attn.qkv.weight"])
    assert torch.equal(mine["decoder.layers.0.cross_attn.value_proj.weight"],
                       theirs["decoder.layers.0.cross_attn.value_proj.weight"])
    # other classes and keypoints: their tensors start fresh, even where the shapes agree (2 classes both)
    assert {"class_embed.weight", "keypoint_queries.queries", "keypoint_queries_enc.queries"} <= set(
        report.reinitialised
    )
    assert mine["class_embed.weight"].shape == theirs["class_embed.weight"].shape
    assert not torch.equal(mine["class_embed.weight"], theirs["class_embed.weight"])
    assert len(report.copied) > 0.8 * len(mine)
    assert "class_embed" in report.summary() and "keypoint_queries.queries" in report.summary()


def test_init_keeps_keypoint_queries_whose_names_the_checkpoint_does_not_know(synthetic, tmp_path) -> None:
    schema = synthetic[0].schema  # two classes, 3 and 5 keypoints, named
    unnamed = KeypointDETR(tiny(resolution=64, num_classes=2, num_keypoints_per_class=[3, 5]))  # kp_0, kp_1, ...
    with torch.no_grad():
        for p in unnamed.parameters():
            p.normal_()
    write_checkpoint(tmp_path / "unnamed.pt", unnamed.cfg, unnamed.state_dict())
    network, report = build_network(model_config_for(schema, unnamed.cfg), tmp_path / "unnamed.pt")
    for name in ("keypoint_queries.queries", "keypoint_queries_enc.queries"):  # same counts: kept in order
        assert name not in report.reinitialised and torch.equal(network.state_dict()[name], unnamed.state_dict()[name])


def test_resumed_run_reproduces_the_uninterrupted_one(synthetic, tmp_path) -> None:
    train, val = synthetic
    full = Trainer(_network(train), train, tmp_path / "full", _settings(epochs=3), device="cpu")
    full.fit()
    first = Trainer(_network(train), train, tmp_path / "split", _settings(epochs=3, max_steps=4), device="cpu")
    first.fit()
    assert (first.epoch, first.batch_in_epoch, first.opt_step) == (1, 1, 4)  # stopped inside the second epoch
    second = Trainer(_network(train, seed=123), train, tmp_path / "split", _settings(epochs=3), device="cpu")
    second.resume()
    second.fit()
    assert second.opt_step == full.opt_step == 9
    for name, tensor in full.network.state_dict().items():
        assert torch.equal(tensor, second.network.state_dict()[name]), name
    for name, tensor in full.ema.module.state_dict().items():
        assert torch.equal(tensor, second.ema.module.state_dict()[name]), name
    assert not list((tmp_path / "split").glob(".*.tmp"))
    no_time = [[{k: v for k, v in row.items() if k != "time"} for row in t.history] for t in (full, second)]
    assert no_time[0] == no_time[1]  # the per-epoch mean losses too, across the mid-epoch restart


def test_resume_rewrites_metrics_from_the_saved_history(synthetic, tmp_path) -> None:
    """A run stopped after saving its state but before appending the epoch's line (or after appending a line
    whose state was never saved) resumes with exactly one line per finished epoch."""
    train = synthetic[0]
    first = Trainer(_network(train), train, tmp_path, _settings(epochs=2, max_steps=3), device="cpu")
    first.fit()  # stops inside epoch 2 with epoch 1 recorded
    metrics = tmp_path / "metrics.jsonl"
    assert [json.loads(line)["epoch"] for line in metrics.read_text().splitlines()] == [1]
    metrics.write_text("")  # the line lost to a crash
    second = Trainer(_network(train), train, tmp_path, _settings(epochs=2), device="cpu")
    second.resume()
    second.fit()
    assert [json.loads(line)["epoch"] for line in metrics.read_text().splitlines()] == [1, 2]
    metrics.write_text(metrics.read_text() + metrics.read_text().splitlines()[-1] + "\n")  # a line never saved
    third = Trainer(_network(train), train, tmp_path, _settings(epochs=2), device="cpu")
    third.resume()
    assert [json.loads(line)["epoch"] for line in metrics.read_text().splitlines()] == [1, 2]
    assert not list(tmp_path.glob(".*.tmp"))


def test_resume_refuses_a_changed_recipe_and_allows_a_longer_run(synthetic, tmp_path) -> None:
    train = synthetic[0]
    Trainer(_network(train), train, tmp_path, _settings(epochs=1, max_steps=1), device="cpu").fit()
    changed = Trainer(_network(train), train, tmp_path, _settings(epochs=2, batch_size=2), device="cpu")
    with pytest.raises(ValueError, match=r"other settings.*batch_size: was 4, now 2 \(only epochs, "):
        changed.resume()
    space = SearchSpace(resolutions=[64], patch_sizes=[16], num_windows=[1, 2], dec_layers=[1, 2], num_queries=[5])
    with pytest.raises(ValueError, match=r"nas: was None, now \{'resolutions': \[64\]"):
        Trainer(_network(train), train, tmp_path, _settings(epochs=2), nas=space, device="cpu").resume()
    other_lr = _settings(epochs=2)
    other_lr.optimizer = OptimizerSettings(lr=3e-4)
    with pytest.raises(ValueError, match=r"optimizer.lr: was 0.0001, now 0.0003 \(only"):  # the value, not the dict
        Trainer(_network(train), train, tmp_path, other_lr, device="cpu").resume()
    longer = Trainer(_network(train), train, tmp_path, _settings(epochs=2, eval_every=2, progress=True), device="cpu")
    longer.resume()  # how long and how it reports may change
    assert longer.opt_step == 1
    again = Trainer(_network(train), train, tmp_path, _settings(epochs=1, max_steps=1), device="cpu")
    again.resume()
    again.fit()  # stopped there already: no further step
    assert again.opt_step == 1


def test_a_nas_sampler_without_to_dict_resumes(synthetic, tmp_path) -> None:
    class Sampler:  # only what ArchSampler asks for
        def sample(self, rng):  # noqa: ANN001, ANN202
            return None

    train = synthetic[0]
    Trainer(_network(train), train, tmp_path, _settings(epochs=1, max_steps=1), nas=Sampler(), device="cpu").save()
    Trainer(_network(train), train, tmp_path, _settings(epochs=1, max_steps=1), nas=Sampler(), device="cpu").resume()


def test_training_state_errors_are_precise(synthetic, tmp_path) -> None:
    trainer = Trainer(_network(synthetic[0]), synthetic[0], tmp_path, _settings(), device="cpu")
    with pytest.raises(FileNotFoundError, match="no training state"):
        trainer.resume()
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read training state"):
        load_train_state(tmp_path / "checkpoint.pt")
    torch.save({"model": {}}, tmp_path / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="not an rfkp training state"):
        trainer.resume()


def test_nas_steps_sample_sub_architectures_reproducibly(synthetic, tmp_path) -> None:
    train = synthetic[0]
    network = _network(train)
    space = SearchSpace(resolutions=[64, 96], patch_sizes=[16], num_windows=[1, 2], dec_layers=[1, 2],
                        num_queries=[5, 20])
    settings = _settings(epochs=1, nas_full_fraction=0.25)
    trainer = Trainer(network, train, tmp_path, settings, nas=space, device="cpu")
    choices = [trainer.choice_for_step(s) for s in range(64)]
    assert choices == [trainer.choice_for_step(s) for s in range(64)]
    assert {c.resolution for c in choices} == {64, 96}
    assert {c.arch.dec_layers for c in choices} == {None, 1, 2}
    assert {c.arch.num_queries for c in choices} >= {5, 20}
    assert SubArchitecture() in {c.arch for c in choices}  # some steps train the full model
    trainer.fit()
    assert trainer.opt_step == 3


def test_epoch_end_writes_weights_metrics_and_tensorboard(synthetic, tmp_path) -> None:
    train, val = synthetic
    settings = _settings(epochs=1, eval_every=1, tensorboard=True)
    trainer = Trainer(_network(train), train, tmp_path, settings, val_set=val, device="cpu")
    history = trainer.fit()
    assert {"ap", "ap50", "train_loss", "ap_triangle", "ap_kite"} <= set(history[0])
    model = RFDETRKeypoint.from_checkpoint(tmp_path / "best.pt")
    assert model.config.class_names == ["triangle", "kite"]
    ema = trainer.ema.module.state_dict()
    assert all(torch.equal(v, ema[k]) for k, v in model.network.state_dict().items())
    assert (tmp_path / "metrics.jsonl").read_text().count("\n") == 1
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_settings_are_validated(synthetic, tmp_path) -> None:
    network = _network(synthetic[0])
    with pytest.raises(ValueError, match="resolution 70 is not a positive multiple"):
        Trainer(network, synthetic[0], tmp_path, _settings(resolutions=[70]), device="cpu")
    with pytest.raises(ValueError, match="amp must be"):
        Trainer(network, synthetic[0], tmp_path, _settings(amp="fp8"), device="cpu")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"optimizer": OptimizerSettings(layer_decay=math.nan)}, "optimizer.layer_decay must be a finite number > 0"),
        ({"optimizer": OptimizerSettings(lr_backbone=math.inf)}, "optimizer.lr_backbone must be a finite number >= 0"),
        ({"clip_grad": -1.0}, "clip_grad must be a finite number >= 0, got -1.0"),
        ({"ema_tau": -1.0}, "ema_tau must be a finite number >= 0"),
        ({"warmup_steps": -5}, "warmup_steps must be >= 0, got -5"),
        ({"save_every_steps": -1}, "save_every_steps must be >= 0"),
        ({"seed": -1}, "seed must be >= 0"),
        ({"max_steps": 0}, "max_steps must be >= 1"),
        ({"ema_decay": math.nan}, "ema_decay must be in [0, 1)"),
    ],
)
def test_numeric_settings_must_be_finite_and_in_range(change: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        _settings(**change).validate([16])


def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_weights(synthetic, tmp_path, monkeypatch) -> None:
    train = synthetic[0]
    trainer = Trainer(_network(train), train, tmp_path, _settings(epochs=3), device="cpu")
    forward = trainer._forward_losses

    def nan_in_epoch_two(samples, choice):  # noqa: ANN001, ANN202
        losses = forward(samples, choice)
        return {**losses, "loss": losses["loss"] * math.nan} if trainer.epoch == 1 else losses

    monkeypatch.setattr(trainer, "_forward_losses", nan_in_epoch_two)
    with pytest.raises(NonFiniteTrainingError, match=r"the loss became nan at step 4 \(epoch 2\); last.pt, best.pt, "
                       r"checkpoint.pt keep the last finite state"):
        trainer.fit()
    assert load_train_state(tmp_path / "checkpoint.pt")["epoch"] == 1
    weights = RFDETRKeypoint.from_checkpoint(tmp_path / "last.pt", device="cpu").network.state_dict()
    assert all(torch.isfinite(t).all() for t in weights.values() if t.is_floating_point())
    assert (tmp_path / "metrics.jsonl").read_text().count("\n") == 1


def test_weights_that_became_nan_are_not_written(synthetic, tmp_path, monkeypatch) -> None:
    """A finite loss can still leave NaN weights (a NaN learning rate did): nothing is saved from them."""
    train = synthetic[0]
    trainer = Trainer(_network(train), train, tmp_path, _settings(epochs=1), device="cpu")
    step = trainer._optimizer_step

    def poisoning_step() -> float:
        norm = step()
        with torch.no_grad():
            next(trainer.ema.module.parameters()).fill_(math.nan)
        return norm

    monkeypatch.setattr(trainer, "_optimizer_step", poisoning_step)
    with pytest.raises(NonFiniteTrainingError, match="the weights became NaN or infinite by step 3 .epoch 1.; nothing was saved"):
        trainer.fit()
    assert not any((tmp_path / name).exists() for name in ("last.pt", "best.pt", "checkpoint.pt", "metrics.jsonl"))


def test_metrics_are_strict_json_with_nan_as_null(synthetic, tmp_path, monkeypatch) -> None:
    import json

    import trainer.loop.trainer as loop

    train, val = synthetic
    monkeypatch.setattr(loop, "evaluation_record", lambda report: {"ap": 0.0, "coverage_2sigma_occluded": math.nan})
    Trainer(_network(train), train, tmp_path, _settings(epochs=1, eval_every=1, max_steps=None), val_set=val,
            device="cpu").fit()
    line = (tmp_path / "metrics.jsonl").read_text()
    record = json.loads(line, parse_constant=lambda name: pytest.fail(f"{name} in metrics.jsonl: {line}"))
    assert record["coverage_2sigma_occluded"] is None and record["ap"] == 0.0


def test_bf16_autocast_step_on_cpu_stays_finite(synthetic, tmp_path) -> None:
    train = synthetic[0]
    trainer = Trainer(_network(train), train, tmp_path, _settings(epochs=1, amp="bf16", max_steps=1), device="cpu")
    trainer.fit()
    assert all(torch.isfinite(p).all() for p in trainer.network.parameters())


def test_an_empty_training_set_is_refused(tmp_path) -> None:
    json_path = make_dataset(tmp_path, "empty", 0, seed=0)
    empty = CocoKeypointDataset(json_path, tmp_path / "images")
    with pytest.raises(ValueError, match="empty.json has no images to train on"):
        Trainer(_network(empty), empty, tmp_path / "run", _settings(), device="cpu")


def test_loss_weights_and_match_costs_reach_the_criterion(synthetic, tmp_path) -> None:
    from trainer.losses import LossWeights
    from trainer.matcher import MatchCosts

    train = synthetic[0]
    settings = _settings(loss_weights=LossWeights(kp_l1=4.0), match_costs=MatchCosts(giou=3.0, kp_nll=0.0))
    trainer = Trainer(_network(train), train, tmp_path / "run", settings, device="cpu")
    assert trainer.criterion.weights.kp_l1 == 4.0
    assert trainer.criterion.matcher.costs == MatchCosts(giou=3.0, kp_nll=0.0)


def test_augmentation_is_the_same_with_any_number_of_workers(synthetic) -> None:
    from trainer.loop.pipeline import epoch_loader

    train = synthetic[0]

    def draws(workers: int) -> list[tuple]:
        return [(image.shape, targets.boxes.round(3).tolist(), targets.keypoints.round(3).tolist())
                for batch in epoch_loader(train, 4, seed=3, epoch=1, num_workers=workers) for image, targets in batch]

    single = draws(0)
    assert len({shape for shape, _, _ in single}) > 2  # the crops differ from image to image
    assert draws(2) == single  # each item draws from (seed, epoch, index), not from its worker


def test_max_steps_on_an_epoch_boundary_still_ends_the_epoch(synthetic, tmp_path) -> None:
    train, val = synthetic  # 12 images in batches of 4: 3 steps per epoch
    trainer = Trainer(_network(train), train, tmp_path, _settings(epochs=2, max_steps=3), val_set=val, device="cpu")
    history = trainer.fit()
    assert (trainer.epoch, trainer.batch_in_epoch, trainer.opt_step) == (1, 0, 3)
    assert [row["epoch"] for row in history] == [1] and "ap" in history[0]  # recorded and validated
    assert (tmp_path / "best.pt").is_file()
    assert [json.loads(line)["epoch"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1]


def test_tensorboard_logs_name_what_they_hold(synthetic, tmp_path) -> None:
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    train, val = synthetic
    settings = _settings(epochs=1, tensorboard=True)
    settings.optimizer = OptimizerSettings(lr=2e-4, lr_backbone=3e-4)
    trainer = Trainer(_network(train), train, tmp_path, settings, val_set=val, device="cpu")
    trainer.fit()
    events = accumulator.EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/epoch_loss", "val/ap"} <= tags
    assert not {"val/time", "val/train_loss"} & tags  # neither is a validation metric
    lrs = [e.value for e in events.Scalars("train/lr")]
    assert max(lrs) == pytest.approx(2e-4, rel=1e-3)  # --lr's schedule, not a backbone block's rate
    assert max(e.value for e in events.Scalars("train/lr_backbone")) == pytest.approx(3e-4, rel=1e-3)


def test_partial_state_files_of_dead_writers_are_removed(tmp_path) -> None:
    import os
    import subprocess
    import time

    from rfkp.checkpoint import save_atomic

    def dead_pid() -> int:
        gone = subprocess.Popen(["true"])
        gone.wait()  # a pid no process has any more
        return gone.pid

    old = time.time() - 2 * 3600  # beyond STALE_PARTIAL_AGE_S
    stale = tmp_path / f".checkpoint.pt.{dead_pid()}.tmp"
    young = tmp_path / f".checkpoint.pt.{dead_pid()}.tmp"  # maybe another container's writer: left alone
    alive = tmp_path / ".checkpoint.pt.1.tmp"  # pid 1 runs: another writer's, left alone
    odd = tmp_path / ".checkpoint.pt.99999999999999999999.tmp"  # no pid at all: left alone, no OverflowError
    bracketed = tmp_path / f".run[1].pt.{dead_pid()}.tmp"  # a name glob would read as a pattern
    for partial in (stale, young, alive, odd, bracketed):
        partial.write_bytes(b"half a checkpoint")
        if partial is not young:
            os.utime(partial, (old, old))
    save_atomic({"x": torch.zeros(1)}, tmp_path / "checkpoint.pt")
    assert not stale.exists() and young.exists() and alive.exists() and odd.exists()
    assert (tmp_path / "checkpoint.pt").is_file()
    save_atomic({"x": torch.zeros(1)}, tmp_path / "run[1].pt")
    assert not bracketed.exists()
    with pytest.raises(CheckpointError, match=r"truncated or not a torch file\?\): \w+"):
        (tmp_path / "empty.pt").write_bytes(b"")
        load_train_state(tmp_path / "empty.pt")


def test_leftover_micro_batches_step_with_their_mean_gradient(synthetic, tmp_path, monkeypatch) -> None:
    train = synthetic[0]  # 3 batches of 4 per epoch
    norms: dict[int, float] = {}

    def run(grad_accum: int) -> None:
        trainer = Trainer(_network(train), train, tmp_path / str(grad_accum), _settings(epochs=1, grad_accum=grad_accum),
                          device="cpu")  # fmt: skip
        step = trainer._optimizer_step

        def recorded() -> float:
            norms[grad_accum] = float(torch.stack([p.grad.norm() for p in trainer.network.parameters()
                                                    if p.grad is not None]).norm())  # fmt: skip
            return step()

        monkeypatch.setattr(trainer, "_optimizer_step", recorded)
        trainer.fit()

    run(3)  # one full step over the 3 micro-batches
    run(4)  # the same 3 as an epoch's leftover: the same mean, not 3/4 of it
    assert norms[4] == pytest.approx(norms[3], rel=1e-5)


def test_a_run_stopped_after_saving_its_state_resumes_with_its_weights_files(synthetic, tmp_path, monkeypatch,
                                                                            caplog) -> None:
    """The epoch's state is saved before its weights files: a run stopped in between resumes, and last.pt and
    best.pt are written again from the state (they were written first, so a stop left weights without a state
    that neither a rerun nor --resume accepted). A best.pt of an earlier epoch that is gone is reported."""
    train, val = synthetic
    trainer = Trainer(_network(train), train, tmp_path, _settings(epochs=2, eval_every=1), val_set=val, device="cpu")

    def stopped(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "_write_last", stopped)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    assert (tmp_path / "checkpoint.pt").is_file()
    assert not (tmp_path / "last.pt").exists() and not (tmp_path / "best.pt").exists()
    resumed = Trainer(_network(train), train, tmp_path, _settings(epochs=2, eval_every=1), val_set=val,
                      device="cpu")
    resumed.resume()
    ema = resumed.ema.module.state_dict()
    for name in ("last.pt", "best.pt"):
        weights = RFDETRKeypoint.from_checkpoint(tmp_path / name, device="cpu").network.state_dict()
        assert all(torch.equal(v, ema[k]) for k, v in weights.items()), name
    resumed.fit()
    assert [row["epoch"] for row in resumed.history] == [1, 2]
    (tmp_path / "best.pt").unlink()
    with caplog.at_level("WARNING"):
        Trainer(_network(train), train, tmp_path, _settings(epochs=2, eval_every=1), val_set=val,
                device="cpu").resume()
    if resumed.history[-1].get("best"):  # the state ends on the best epoch: best.pt is rebuilt from it
        assert (tmp_path / "best.pt").is_file()
    else:
        assert "best.pt (val AP" in caplog.text and "is missing" in caplog.text


def test_predictions_that_overflow_at_validation_stop_the_run_as_divergence(synthetic, tmp_path, monkeypatch) -> None:
    """A diverging model whose clamped loss stays finite can still predict infinite covariances; validation
    then stops the run as a divergence (it failed in the results check, blaming a result row)."""
    import trainer.loop.trainer as loop

    train, val = synthetic
    trainer = Trainer(_network(train), train, tmp_path, _settings(epochs=1, eval_every=1), val_set=val, device="cpu")
    predict = loop.predict_rows

    def overflowing(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        rows = predict(*args, **kwargs)
        for row in rows:
            if "keypoint_covariance" in row:
                row["keypoint_covariance"][0][0][0] = math.inf
        return rows

    monkeypatch.setattr(loop, "predict_rows", overflowing)
    with pytest.raises(NonFiniteTrainingError, match=r"predictions became NaN or infinite by step \d+ \(seen while "
                       r"validating epoch 1\); nothing was saved"):
        trainer.fit()
