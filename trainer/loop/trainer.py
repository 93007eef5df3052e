"""The training loop: AdamW with layer-wise decay, EMA, AMP, accumulation, clipping, NAS sampling, exact resume.

One ``Trainer`` owns a run directory (see ``trainer.loop.checkpoints``). Every micro-batch ("step") draws its
resolution, and with a NAS space its whole sub-architecture, from ``(seed, step)``; the data pipeline is
step-deterministic too (``trainer.loop.pipeline``), so a run resumed from ``checkpoint.pt`` continues exactly as
the uninterrupted run would have.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from rfkp.api import RFDETRKeypoint
from rfkp.checkpoint import write_checkpoint
from rfkp.config import ModelConfig, check_resolution
from rfkp.detections import COVARIANCE_KEY, FINDABLE_KEY, VISIBLE_KEY
from rfkp.devices import resolve_device
from rfkp.nn.detector import KeypointDETR, SubArchitecture
from trainer.data.coco import CocoKeypointDataset
from trainer.data.collate import collate_at
from trainer.data.values import short_repr
from trainer.evaluation.coco_eval import KeypointEvaluation, evaluate_keypoints
from trainer.evaluation.predict import predict_rows
from trainer.jsonfile import dumps_strict
from trainer.loop.checkpoints import load_train_state, save_train_state
from trainer.loop.ema import ModelEMA
from trainer.loop.optim import OptimizerSettings, build_optimizer
from trainer.loop.pipeline import draw_generator, epoch_batches, epoch_loader
from trainer.losses import LossWeights, SetCriterion
from trainer.matcher import HungarianMatcher, MatchCosts

logger = logging.getLogger(__name__)

_STEP_KEY = 0xA5C4  # separates the per-step draws from the per-item augmentation draws


class ArchSampler(Protocol):
    """What the trainer needs of a NAS search space (``trainer.nas.space.SearchSpace``)."""

    def sample(self, rng: Any) -> Any: ...


#: Settings a resumed run may change: how long it runs and how it reports, not what a step does.
RESUME_MAY_CHANGE = frozenset(
    {"epochs", "max_steps", "eval_every", "eval_batch_size", "num_workers", "save_every_steps", "progress",
     "tensorboard"}
)  # fmt: skip


def _recipe_changes(state: Mapping[str, Any], settings: Mapping[str, Any], recipe: Mapping[str, Any]) -> list[str]:
    """``name: was X, now Y`` for each setting (and NAS space, flip pairs) that differs from the saved state's,
    those of ``RESUME_MAY_CHANGE`` aside. States written before a key was saved are not checked on it."""
    saved = _flat({**state.get("settings", {}), **state.get("recipe", {})})
    now = _flat({**settings, **recipe})
    return [
        f"{name}: was {saved[name]!r}, now {now[name]!r}"
        for name in sorted(now)
        if name in saved and name not in RESUME_MAY_CHANGE and saved[name] != now[name]
    ]


def _flat(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as dotted names (``optimizer.lr``), so a difference names the one value that changed."""
    out: dict[str, Any] = {}
    for name, value in values.items():
        if isinstance(value, Mapping) and name != "flip_pairs" and name != "nas":
            out.update(_flat(value, f"{prefix}{name}."))
        else:
            out[f"{prefix}{name}"] = value
    return out


@dataclass
class TrainSettings:
    """Everything about a run that is not the model architecture or the data."""

    epochs: int = 50
    batch_size: int = 4
    grad_accum: int = 1
    optimizer: OptimizerSettings = field(default_factory=OptimizerSettings)
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1
    clip_grad: float = 0.1
    ema_decay: float = 0.993
    ema_tau: float = 100.0
    amp: str = "auto"
    resolutions: list[int] | None = None
    nas_full_fraction: float = 0.25  # with a NAS space: share of steps that train the full architecture
    eval_every: int = 1
    eval_threshold: float = 0.001
    eval_batch_size: int = 4
    seed: int = 0
    num_workers: int = 0
    save_every_steps: int = 0
    max_steps: int | None = None
    augment: bool = True
    progress: bool = True
    tensorboard: bool = True
    loss_weights: LossWeights = field(default_factory=LossWeights)
    match_costs: MatchCosts = field(default_factory=MatchCosts)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def validate(self, block_sizes: Sequence[int]) -> None:
        """Raise ValueError naming the first setting out of its range (numbers must be finite)."""
        for name in ("epochs", "batch_size", "grad_accum", "eval_every", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "num_workers", "save_every_steps", "seed"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1 (or None), got {self.max_steps}")
        o = self.optimizer
        _check_range("optimizer.lr", o.lr, 0.0, low_open=True)
        _check_range("optimizer.lr_backbone", o.lr_backbone, 0.0)
        _check_range("optimizer.layer_decay", o.layer_decay, 0.0, 1.0, low_open=True)
        _check_range("optimizer.weight_decay", o.weight_decay, 0.0)
        _check_range("clip_grad", self.clip_grad, 0.0)
        _check_range("ema_tau", self.ema_tau, 0.0)
        _check_range("min_lr_ratio", self.min_lr_ratio, 0.0, 1.0)
        _check_range("eval_threshold", self.eval_threshold, 0.0, 1.0)
        _check_range("nas_full_fraction", self.nas_full_fraction, 0.0, 1.0)
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.amp not in ("auto", "bf16", "fp16", "off"):
            raise ValueError(f"amp must be auto, bf16, fp16 or off, got {self.amp!r}")
        for r in self.resolutions or []:
            bad = [b for b in block_sizes if r <= 0 or r % b]
            if bad:
                raise ValueError(f"resolution {r} is not a positive multiple of the block size {bad[0]}")
            check_resolution(r, 1)  # the largest side


def _check_range(name: str, value: float, low: float, high: float = math.inf, *, low_open: bool = False) -> None:
    """Raise ValueError unless ``value`` is finite, above ``low`` (or equal, unless ``low_open``) and <= ``high``."""
    above = value > low if low_open else value >= low
    if not (math.isfinite(value) and above and value <= high):
        bound = f"{'>' if low_open else '>='} {low:g}" + (f" and <= {high:g}" if high < math.inf else "")
        raise ValueError(f"{name} must be a finite number {bound}, got {value}")


def amp_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``setting`` on ``device`` (None: full precision). ``auto`` is bf16 on GPUs that
    support it, fp16 on other GPUs, off on CPU."""
    if setting == "off":
        return None
    if setting == "bf16":
        return torch.bfloat16
    if setting == "fp16":
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return None


def learning_rate_factor(opt_step: int, total_steps: int, warmup_steps: int, min_ratio: float) -> float:
    """Linear warm-up then cosine decay from 1 to ``min_ratio`` over ``total_steps`` optimiser steps."""
    if warmup_steps > 0 and opt_step < warmup_steps:
        return (opt_step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (opt_step - warmup_steps) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class NonFiniteTrainingError(ValueError):
    """The training loss, the gradients or the weights became NaN or infinite: the run stops before anything
    from that step is saved, so ``last.pt``, ``best.pt`` and ``checkpoint.pt`` keep the last finite state."""


@dataclass
class StepChoice:
    resolution: int
    arch: SubArchitecture


class Trainer:
    """Fits a ``KeypointDETR`` on a COCO keypoint dataset and writes checkpoints, logs and metrics to ``run_dir``.

    Args:
        network: the model to train (already initialised or loaded).
        train_set: training data; ``val_set`` optional validation data (model selection by OKS AP).
        nas: a search space whose ``sample(rng)`` returns a choice with ``resolution`` and ``sub_architecture()``;
            None trains the full architecture at ``settings.resolutions`` (one drawn per step).
    """

    def __init__(
        self,
        network: KeypointDETR,
        train_set: CocoKeypointDataset,
        run_dir: str | Path,
        settings: TrainSettings,
        *,
        val_set: CocoKeypointDataset | None = None,
        nas: ArchSampler | None = None,
        device: str | torch.device | None = None,
        sigmas: Mapping[int | str, Any] | None = None,
    ) -> None:
        cfg = network.cfg
        self.settings = settings
        self._lr_factor = 1.0  # the schedule's factor at the last optimiser step
        self.resolutions = list(settings.resolutions or [cfg.resolution])
        settings.validate([cfg.block_size])
        if train_set.schema.num_keypoints_per_class != cfg.num_keypoints_per_class[: len(train_set.schema.categories)]:
            raise ValueError(
                f"the data's keypoints per class {train_set.schema.num_keypoints_per_class} do not match the "
                f"model's {cfg.num_keypoints_per_class}"
            )
        self.device = resolve_device(device)
        self.network = network.to(self.device)
        self.train_set = train_set
        self.val_set = val_set
        self.nas = nas
        self.sigmas = sigmas
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.criterion = SetCriterion(
            cfg.num_keypoints_per_class,
            matcher=HungarianMatcher(cfg.num_keypoints_per_class, costs=settings.match_costs),
            weights=settings.loss_weights,
        )
        self.optimizer = build_optimizer(network, settings.optimizer, len(network.backbone.vit.blocks))
        self.ema = ModelEMA(network, settings.ema_decay, settings.ema_tau)
        self.autocast_dtype = amp_dtype(settings.amp, self.device)
        use_scaler = self.autocast_dtype == torch.float16 and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=use_scaler)
        self.batches_per_epoch = len(epoch_batches(len(train_set), settings.batch_size, settings.seed, 0))
        if self.batches_per_epoch == 0:
            raise ValueError(f"{train_set.annotation_file.name} has no images to train on")
        updates = math.ceil(self.batches_per_epoch / settings.grad_accum)
        self.total_opt_steps = updates * settings.epochs
        # position
        self.epoch = 0
        self.batch_in_epoch = 0
        self.step = 0
        self.opt_step = 0
        self.best_ap = -math.inf
        self.epoch_loss = (0.0, 0)  # (sum, count) of the current epoch's training losses
        self.history: list[dict[str, Any]] = []
        self._writer: Any = None

    # -- state ---------------------------------------------------------------------------------------------------
    def _recipe(self) -> dict[str, Any]:
        """What else decides the run's steps: the NAS space and each category's flip pairs."""
        nas = getattr(self.nas, "to_dict", None)
        return json.loads(json.dumps({
            # a sampler without to_dict is known by its type (a repr would hold a memory address)
            "nas": nas() if nas is not None else (None if self.nas is None else type(self.nas).__qualname__),
            "flip_pairs": {c.name: [list(p) for p in c.flip_pairs] for c in self.train_set.schema.categories},
        }))  # fmt: skip

    def state_dict(self) -> dict[str, Any]:
        return {
            "config": self.network.cfg.to_dict(),
            "settings": json.loads(json.dumps(self.settings.to_dict())),
            "recipe": self._recipe(),
            "model": self.network.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "step": self.step,
            "opt_step": self.opt_step,
            "best_ap": self.best_ap,
            "epoch_loss": list(self.epoch_loss),
            "history": self.history,
            "torch_rng": torch.get_rng_state(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        saved = ModelConfig.from_dict(state["config"])
        if saved != self.network.cfg:
            now = self.network.cfg.to_dict()
            changed = [f"{k} {short_repr(v, 60)} -> {short_repr(now[k], 60)}" for k, v in saved.to_dict().items() if now.get(k) != v]
            raise ValueError(
                "the training state was written for another model configuration: " + "; ".join(changed[:5])
                + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
                + " (saved -> now; the model comes from the training state, so drop or match the --set options "
                "and keep the same data)"
            )
        changed = _recipe_changes(state, json.loads(json.dumps(self.settings.to_dict())), self._recipe())
        if changed:
            raise ValueError(
                "the run was trained with other settings, and resuming exactly needs the same ones: "
                + "; ".join(changed) + f" (only {', '.join(sorted(RESUME_MAY_CHANGE))} may change on resume)"
            )
        self.network.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch = int(state["epoch"])
        self.batch_in_epoch = int(state["batch_in_epoch"])
        self.step = int(state["step"])
        self.opt_step = int(state["opt_step"])
        self.best_ap = float(state["best_ap"])
        # states written before the epoch loss was saved resume with the current epoch's mean restarted
        total, count = state.get("epoch_loss", (0.0, 0))
        self.epoch_loss = (float(total), int(count))
        self.history = list(state["history"])
        torch.set_rng_state(state["torch_rng"])

    def resume(self, path: str | Path | None = None, state: Mapping[str, Any] | None = None) -> None:
        """Continue from ``path`` (default: ``run_dir/checkpoint.pt``), or from its ``state`` already read."""
        path = Path(path) if path is not None else self.run_dir / "checkpoint.pt"
        self.load_state_dict(load_train_state(path) if state is None else state)
        self._write_metrics_file()
        self._restore_weights_files()
        logger.info("resumed from %s at epoch %d, batch %d (step %d)", path, self.epoch, self.batch_in_epoch,
                    self.step)

    def save(self) -> None:
        save_train_state(self.run_dir / "checkpoint.pt", self.state_dict())

    # -- one step ------------------------------------------------------------------------------------------------
    def choice_for_step(self, step: int) -> StepChoice:
        rng = draw_generator(self.settings.seed, _STEP_KEY, step)
        if self.nas is not None and rng.random() >= self.settings.nas_full_fraction:
            choice = self.nas.sample(rng)
            return StepChoice(int(choice.resolution), choice.sub_architecture())
        return StepChoice(int(rng.choice(self.resolutions)), SubArchitecture())

    def _forward_losses(self, samples: Sequence[Any], choice: StepChoice) -> dict[str, torch.Tensor]:
        cfg = self.network.cfg
        batch = collate_at(samples, choice.resolution, cfg.image_mean, cfg.image_std)
        images = batch.images.to(self.device, non_blocking=True)
        targets = [
            {k: (v.to(self.device) if torch.is_tensor(v) else v) for k, v in t.items()} for t in batch.targets
        ]
        enabled = self.autocast_dtype is not None
        with torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32, enabled=enabled):
            outputs = self.network(images, choice.arch)
        return self.criterion(outputs, targets, num_groups=cfg.group_detr)

    def _optimizer_step(self) -> float:
        factor = learning_rate_factor(
            self.opt_step, self.total_opt_steps, self.settings.warmup_steps, self.settings.min_lr_ratio
        )
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor
        self._lr_factor = factor
        self.scaler.unscale_(self.optimizer)
        params = [p for p in self.network.parameters() if p.grad is not None]
        max_norm = self.settings.clip_grad if self.settings.clip_grad > 0 else math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        if not math.isfinite(grad_norm) and not self.scaler.is_enabled():  # fp16's scaler skips such steps itself
            raise NonFiniteTrainingError(
                f"training stopped: the gradient norm became {grad_norm} at step {self.step} (epoch {self.epoch + 1})"
                f"{self._saved_state_note()}"
            )
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.ema.update(self.network)
        self.opt_step += 1
        return grad_norm

    # -- the loop ------------------------------------------------------------------------------------------------
    def fit(self) -> list[dict[str, Any]]:
        """Train until ``settings.epochs`` (or ``max_steps`` optimiser steps); returns the per-epoch history."""
        s = self.settings
        (self.run_dir / "train_settings.json").write_text(json.dumps(s.to_dict(), indent=2), encoding="utf-8")
        self.network.train()
        try:
            if s.max_steps is not None and self.opt_step >= s.max_steps:  # a resumed run that had stopped there
                return self.history
            while self.epoch < s.epochs:
                if self._run_epoch():
                    return self.history
                self._end_epoch()
        finally:
            if self._writer is not None:
                self._writer.flush()
        return self.history

    def _run_epoch(self) -> bool:
        """One epoch from ``batch_in_epoch``; True when ``max_steps`` stopped the run."""
        s = self.settings
        loader = epoch_loader(self.train_set, s.batch_size, s.seed, self.epoch, skip_batches=self.batch_in_epoch,
                              num_workers=s.num_workers, augment=s.augment)
        bar = self._progress(self.batches_per_epoch, self.batch_in_epoch)
        pending = 0
        sums: dict[str, float] = {}
        for samples in loader:
            choice = self.choice_for_step(self.step)
            losses = self._forward_losses(samples, choice)
            self.scaler.scale(losses["loss"] / s.grad_accum).backward()
            loss = float(losses["loss"].detach())  # read after backward: the GPU is not left idle in between
            if not math.isfinite(loss) and not self.scaler.is_enabled():  # fp16's scaler skips such steps itself
                raise NonFiniteTrainingError(
                    f"training stopped: the loss became {loss} at step {self.step + 1} (epoch {self.epoch + 1})"
                    f"{self._saved_state_note()}"
                )
            self.step += 1
            self.batch_in_epoch += 1
            pending += 1
            for name, value in losses.items():
                sums[name] = sums.get(name, 0.0) + float(value.detach())
            self.epoch_loss = (self.epoch_loss[0] + loss, self.epoch_loss[1] + 1)
            last = self.batch_in_epoch == self.batches_per_epoch
            if pending < s.grad_accum and not last:
                continue
            if pending < s.grad_accum:  # an epoch's leftover micro-batches: their mean, as a full step's
                for param in self.network.parameters():
                    if param.grad is not None:
                        param.grad.mul_(s.grad_accum / pending)
            grad_norm = self._optimizer_step()
            self._log_step({k: v / pending for k, v in sums.items()}, grad_norm, choice)
            if bar is not None:
                bar.update(pending)
                bar.set_postfix(loss=f"{sums['loss'] / pending:.3f}", res=choice.resolution)
            pending, sums = 0, {}
            if s.save_every_steps and self.opt_step % s.save_every_steps == 0 and not last:
                self._check_finite_weights()
                self.save()
            if s.max_steps is not None and self.opt_step >= s.max_steps:
                if bar is not None:
                    bar.close()
                if last:  # the epoch is complete: it ends as the run's last (record, validation, best.pt)
                    self._end_epoch(final=True)
                else:
                    self._check_finite_weights()
                    self.save()
                    self._write_last()
                return True
        if bar is not None:
            bar.close()
        return False

    def _end_epoch(self, final: bool = False) -> None:
        """Record the epoch, validate it when due (always when ``final``: the run stops after it), save."""
        s = self.settings
        self._check_finite_weights()
        total, count = self.epoch_loss
        record: dict[str, Any] = {"epoch": self.epoch + 1, "step": self.step, "opt_step": self.opt_step,
                                  "train_loss": total / max(count, 1), "time": time.time()}
        self.epoch_loss = (0.0, 0)
        self.epoch += 1
        self.batch_in_epoch = 0
        evaluate = self.val_set is not None and (self.epoch % s.eval_every == 0 or self.epoch == s.epochs or final)
        if evaluate:
            report = self.evaluate()
            record.update(evaluation_record(report))
            self._log_scalars({f"val/{k}": v for k, v in record.items()
                               if isinstance(v, float) and k not in ("time", "train_loss")}, self.epoch)  # fmt: skip
            if record["ap"] > self.best_ap:
                self.best_ap = record["ap"]
                record["best"] = True
        self._log_scalars({"train/epoch_loss": record["train_loss"]}, self.epoch)
        self.history.append(record)
        # the training state first: a run stopped after it resumes and rewrites the weights files from it
        # (_restore_weights_files); stopped before it, the epoch is simply trained again
        self.save()
        self._write_last()
        if record.get("best"):
            self.write_weights(self.run_dir / "best.pt")
        with open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(dumps_strict(record) + "\n")  # NaN (no matches) as null
        if evaluate:
            logger.info("epoch %d: val AP %.4f (best %.4f), 2-sigma coverage %s", self.epoch, record["ap"],
                        self.best_ap, _fmt(record.get("coverage_2sigma")))

    def _restore_weights_files(self) -> None:
        """On resume: last.pt from the saved EMA (it is what the last save wrote), and best.pt too when the saved
        state ends on the best validated epoch (a run stopped between saving its state and writing best.pt).
        A best.pt of an earlier epoch that is gone cannot be rebuilt: that is said, and the next validation that
        beats the recorded best writes it again."""
        self._write_last()
        last = self.history[-1] if self.history else None
        at_epoch_end = self.batch_in_epoch == 0 and last is not None and last["epoch"] == self.epoch
        if at_epoch_end and last.get("best"):
            self.write_weights(self.run_dir / "best.pt")
        elif math.isfinite(self.best_ap) and not (self.run_dir / "best.pt").is_file():
            logger.warning("best.pt (val AP %.4f) is missing from %s and cannot be rebuilt from the training state; "
                           "the next validation above that AP writes it again", self.best_ap, self.run_dir)

    def _write_metrics_file(self) -> None:
        """Rewrite ``metrics.jsonl`` from the resumed state's history (atomically): a run stopped between saving
        its state and appending the epoch's line, or after a line whose state was never saved, would otherwise
        lose that line or repeat it."""
        path = self.run_dir / "metrics.jsonl"
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text("".join(dumps_strict(row) + "\n" for row in self.history), encoding="utf-8")
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)  # after a failed write (a full disk) no partial file stays

    # -- evaluation and outputs ----------------------------------------------------------------------------------
    def ema_model(self) -> RFDETRKeypoint:
        return RFDETRKeypoint(self.ema.module, self.device)

    def evaluate(self, arch: SubArchitecture | None = None, resolution: int | None = None) -> KeypointEvaluation:
        """OKS AP and calibration of the EMA weights on the validation set."""
        if self.val_set is None:
            raise ValueError("no validation set")
        knobs = {k: v for k, v in asdict(arch or SubArchitecture()).items() if v is not None}
        rows = predict_rows(
            self.ema_model(), self.val_set.coco, self.val_set.images_dir, self.val_set.schema,
            threshold=self.settings.eval_threshold, resolution=resolution, batch_size=self.settings.eval_batch_size,
            progress=self.settings.progress, **knobs,
        )
        self._check_finite_predictions(rows)
        return evaluate_keypoints(self.val_set.coco, rows, sigmas=self.sigmas, source=self.val_set.annotation_file.name,
                                  schema=self.val_set.schema)

    def _check_finite_predictions(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """A diverging model can keep a finite loss (its terms are clamped) while its predictions overflow (a
        covariance of inf): stop as for a NaN loss rather than fail in the results check."""
        for row in rows:
            values = [row.get("score", 0.0), *row.get("keypoints", ()), *row.get(FINDABLE_KEY, ()),
                      *row.get(VISIBLE_KEY, ())]  # fmt: skip
            if not (math.isfinite(sum(map(float, values))) and np.isfinite(row.get(COVARIANCE_KEY, 0.0)).all()):
                raise NonFiniteTrainingError(
                    f"training stopped: the model's predictions became NaN or infinite by step {self.step} (seen "
                    f"while validating epoch {self.epoch}){self._saved_state_note()}"
                )

    def write_weights(self, path: Path) -> None:
        """The EMA weights in rfkp's checkpoint format."""
        write_checkpoint(path, self.network.cfg, self.ema.module.state_dict())

    def _write_last(self) -> None:
        """``last.pt``; without a validation set ``best.pt`` too: with nothing to select by, the latest weights
        are the best known (with one, ``best.pt`` is written only when the validation AP improves)."""
        self.write_weights(self.run_dir / "last.pt")
        if self.val_set is None and self.best_ap == -math.inf:  # a resumed validated run keeps its best.pt
            self.write_weights(self.run_dir / "best.pt")

    def _check_finite_weights(self) -> None:
        """Raise NonFiniteTrainingError before weights that hold NaN or infinities are written (a step with a
        finite loss and gradients can still make them so, e.g. with a huge learning rate)."""
        tensors = [t for t in (*self.network.parameters(), *self.ema.module.parameters()) if t.is_floating_point()]
        if tensors and not bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all()):
            raise NonFiniteTrainingError(
                f"training stopped: the weights became NaN or infinite by step {self.step} (epoch "
                f"{self.epoch + 1}){self._saved_state_note()}"
            )

    def _saved_state_note(self) -> str:
        saved = [name for name in ("last.pt", "best.pt", "checkpoint.pt") if (self.run_dir / name).is_file()]
        kept = f"; {', '.join(saved)} keep the last finite state" if saved else "; nothing was saved"
        return f"{kept} (a lower learning rate, or gradient clipping, may help)"

    # -- logging -------------------------------------------------------------------------------------------------
    def _progress(self, total: int, initial: int) -> Any:
        if not self.settings.progress:
            return None
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=initial, desc=f"epoch {self.epoch + 1}/{self.settings.epochs}",
                    unit="batch", dynamic_ncols=True)

    def _writer_or_none(self) -> Any:
        if not self.settings.tensorboard:
            return None
        if self._writer is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                logger.warning("tensorboard is not installed: no TensorBoard logs (pip install tensorboard)")
                self.settings.tensorboard = False
                return None
            self._writer = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))
        return self._writer

    def _log_scalars(self, scalars: Mapping[str, float], step: int) -> None:
        writer = self._writer_or_none()
        if writer is None:
            return
        for name, value in scalars.items():
            writer.add_scalar(name, value, step)

    def _log_step(self, losses: Mapping[str, float], grad_norm: float, choice: StepChoice) -> None:
        scalars = {f"train/{name}": value for name, value in losses.items()}
        scalars["train/grad_norm"] = grad_norm
        scalars["train/lr"] = self.settings.optimizer.lr * self._lr_factor  # --lr (the heads'), scheduled
        scalars["train/lr_backbone"] = self.settings.optimizer.lr_backbone * self._lr_factor  # before layer decay
        scalars["train/resolution"] = float(choice.resolution)
        scalars["train/ema_decay"] = self.ema.current_decay()
        self._log_scalars(scalars, self.opt_step)


def evaluation_record(report: KeypointEvaluation) -> dict[str, Any]:
    """Flat metrics of an evaluation: AP, AP50, AR, per-category AP, 1/2/3-sigma coverage (visible keypoints)."""
    record: dict[str, Any] = {
        "ap": float(report.overall["AP"]),
        "ap50": float(report.overall["AP50"]),
        "ar": float(report.overall["AR"]),
    }
    for c in report.per_category:
        record[f"ap_{c.name}"] = float(c.stats["AP"])
    if report.calibration is not None:
        for kind in ("visible", "occluded"):
            coverage = report.calibration.coverage(kind)
            suffix = "" if kind == "visible" else "_occluded"
            for k, v in coverage.items():
                record[f"coverage_{k}sigma{suffix}"] = float(v)
    return record


def _fmt(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{100 * value:.1f}%"
