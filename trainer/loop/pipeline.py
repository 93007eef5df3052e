"""A step-deterministic training data pipeline, so a resumed run sees exactly the batches of an uninterrupted one.

Every random draw is a function of ``(seed, epoch, index)`` or ``(seed, step)``, never of a generator that
lives across steps:

- the epoch's order is a permutation drawn from ``(seed, epoch)``;
- the augmentation of dataset item ``i`` in epoch ``e`` draws from ``(seed, epoch, i)`` (also inside
  ``DataLoader`` workers, whatever their number);
- the batch resolution (and, with NAS, the whole sub-architecture) is drawn by the trainer from
  ``(seed, step)``.

Resuming in the middle of an epoch skips the batches already done; nothing else has to be restored.

A bad image (not decodable, or of another size than its annotation says) raises its own one-line error in the
main process, also when it was loaded in a ``DataLoader`` worker (torch would wrap it in "Caught ValueError in
DataLoader worker process 0. Original Traceback ...").
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.utils.data

from trainer.data.coco import CocoKeypointDataset
from trainer.data.targets import ImageTargets
from trainer.data.transforms import TrainAugment

Sample = tuple[np.ndarray, ImageTargets]


@dataclass(frozen=True)
class SampleError:
    """What a worker returns for an item whose image could not be loaded: the error, raised again as it is in
    the main process (``ValueError`` and ``OSError`` only: the data's fault; other errors keep torch's
    traceback)."""

    error: ValueError | OSError


def draw_generator(*keys: int) -> np.random.Generator:
    """A numpy generator determined by the integer keys (seed, epoch, index, ...)."""
    return np.random.default_rng([int(k) & 0xFFFFFFFF for k in keys])


class AugmentedEpoch(torch.utils.data.Dataset):
    """Dataset items of one epoch, each augmented with its own ``(seed, epoch, index)`` generator."""

    def __init__(self, dataset: CocoKeypointDataset, seed: int, epoch: int, augment: bool = True,
                 **augment_kwargs: float) -> None:
        self.dataset = dataset
        self.seed = seed
        self.epoch = epoch
        self.augment = augment
        self._augment = TrainAugment(dataset.schema, **augment_kwargs)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Sample | SampleError:
        try:
            image, targets = self.dataset[index]
        except (ValueError, OSError) as err:
            if torch.utils.data.get_worker_info() is None:
                raise
            return SampleError(err)
        if self.augment:
            rng = draw_generator(self.seed, self.epoch, index)
            image, targets = self._augment(image, targets, rng=rng)
        return image, targets


def epoch_order(num_items: int, seed: int, epoch: int) -> list[int]:
    return draw_generator(seed, epoch, 0x5EED).permutation(num_items).tolist()


def epoch_batches(num_items: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The epoch's batches of dataset indices (a last, short batch is dropped when there is more than one)."""
    order = epoch_order(num_items, seed, epoch)
    batches = [order[i : i + batch_size] for i in range(0, num_items, batch_size)]
    if len(batches) > 1 and len(batches[-1]) < batch_size:
        batches.pop()
    return batches


def _collate_samples(samples: Sequence[Sample | SampleError]) -> list[Sample | SampleError]:
    return list(samples)


def _raise_sample_errors(batches: Iterator[list[Sample | SampleError]]) -> Iterator[list[Sample]]:
    for batch in batches:
        for sample in batch:
            if isinstance(sample, SampleError):
                raise sample.error
        yield batch  # type: ignore[misc]


def epoch_loader(
    dataset: CocoKeypointDataset,
    batch_size: int,
    seed: int,
    epoch: int,
    *,
    skip_batches: int = 0,
    num_workers: int = 0,
    augment: bool = True,
) -> Iterator[list[Sample]]:
    """Batches of augmented samples (unresized) of one epoch, from batch ``skip_batches`` on.

    Raises (when iterated):
        ValueError, OSError: an image that cannot be loaded, with the dataset's own message (also from workers).
    """
    batches = epoch_batches(len(dataset), batch_size, seed, epoch)[skip_batches:]
    loader = torch.utils.data.DataLoader(
        AugmentedEpoch(dataset, seed, epoch, augment=augment),
        batch_sampler=batches,
        collate_fn=_collate_samples,
        num_workers=num_workers,
        persistent_workers=False,
    )
    return _raise_sample_errors(iter(loader))
