"""The weight-sharing search space: which sub-architectures one set of weights is trained and searched over.

A sub-architecture (``ArchChoice``) is an input resolution plus the four call-time knobs of ``KeypointDETR``
(``SubArchitecture``): patch size, windows per side, decoder layers and queries. The input side must be a
multiple of ``patch_size * num_windows`` (the "block"), so not every combination of the axes is valid:
``SearchSpace.sample`` and ``grid`` only produce valid ones, and a space in which some value of an axis can
never be used is rejected with a message naming that value.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rfkp.config import ModelConfig, check_resolution
from rfkp.nn.detector import SubArchitecture

#: Default resolution range of ``SearchSpace.for_config``, as fractions of the model's resolution.
RESOLUTION_RANGE = (0.67, 1.33)
#: Patch sizes tried besides the model's own (FlexiViT resizing makes any of them usable with one kernel).
PATCH_FAMILY = (12, 16)

logger = logging.getLogger(__name__)

AXES = ("resolutions", "patch_sizes", "num_windows", "dec_layers", "num_queries")


@dataclass(frozen=True)
class ArchChoice:
    """One sub-architecture: input side ``resolution`` (pixels, square) and the ``SubArchitecture`` knobs."""

    resolution: int
    patch_size: int
    num_windows: int
    dec_layers: int
    num_queries: int

    @classmethod
    def full(cls, cfg: ModelConfig) -> ArchChoice:
        """The full model as configured."""
        return cls(cfg.resolution, cfg.patch_size, cfg.num_windows, cfg.dec_layers, cfg.num_queries)

    @property
    def block_size(self) -> int:
        return self.patch_size * self.num_windows

    def sub_architecture(self) -> SubArchitecture:
        return SubArchitecture(self.patch_size, self.num_windows, self.dec_layers, self.num_queries)

    def arch_kwargs(self) -> dict[str, int]:
        """The knobs as keywords of ``RFDETRKeypoint.forward_raw`` / ``predict`` (resolution excluded)."""
        return dataclasses.asdict(self.sub_architecture())

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)

    def key(self) -> str:
        """A short, unique, file-name-safe label, e.g. ``r576-p12-w2-d4-q100``."""
        return (
            f"r{self.resolution}-p{self.patch_size}-w{self.num_windows}"
            f"-d{self.dec_layers}-q{self.num_queries}"
        )

    def check_model(self, cfg: ModelConfig) -> None:
        """Raises ValueError when the model cannot run this choice (too many layers or queries, bad side)."""
        bad = [name for name, value in self.as_dict().items()
               if isinstance(value, bool) or not isinstance(value, int) or value < 1]  # fmt: skip
        if bad:
            raise ValueError(f"{self.key()}: {', '.join(bad)} must be positive integers")
        if self.resolution % self.block_size:
            raise ValueError(
                f"{self.key()}: resolution {self.resolution} is not a multiple of patch_size x num_windows "
                f"= {self.patch_size} x {self.num_windows} = {self.block_size}"
            )
        if not 1 <= self.dec_layers <= cfg.dec_layers:
            raise ValueError(f"{self.key()}: dec_layers must be in [1, {cfg.dec_layers}] for this model")
        if not 1 <= self.num_queries <= cfg.num_queries:
            raise ValueError(f"{self.key()}: num_queries must be in [1, {cfg.num_queries}] for this model")


def _axis(values: Iterable[Any], name: str) -> tuple[int, ...]:
    values = list(values)
    if not values:
        raise ValueError(f"search space: {name} is empty")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
            raise ValueError(f"search space: {name} must hold positive integers, got {v!r}")
    return tuple(sorted({int(v) for v in values}))


def _multiples(step: int, lo: float, hi: float) -> list[int]:
    return list(range(step * math.ceil(lo / step), int(hi) + 1, step))


@dataclass(frozen=True)
class SearchSpace:
    """Values of each axis (stored sorted and de-duplicated). Every value is usable by some valid choice."""

    resolutions: tuple[int, ...]
    patch_sizes: tuple[int, ...]
    num_windows: tuple[int, ...]
    dec_layers: tuple[int, ...]
    num_queries: tuple[int, ...]

    def __post_init__(self) -> None:
        for name in AXES:
            object.__setattr__(self, name, _axis(getattr(self, name), name))
        blocks = sorted({p * w for p, w in itertools.product(self.patch_sizes, self.num_windows)})
        for r in self.resolutions:
            check_resolution(r, 1)  # the largest side
            if all(r % b for b in blocks):
                raise ValueError(
                    f"resolution {r} is not a multiple of patch_size x num_windows for any patch size in "
                    f"{list(self.patch_sizes)} and windows in {list(self.num_windows)} "
                    f"(block sizes {', '.join(map(str, blocks))})"
                )
        pairs = self.valid_pairs()
        for p in self.patch_sizes:
            if all(p != q for q, _ in pairs):
                raise ValueError(
                    f"patch size {p} fits none of the resolutions {list(self.resolutions)} with windows "
                    f"{list(self.num_windows)}"
                )
        for w in self.num_windows:
            if all(w != v for _, v in pairs):
                raise ValueError(
                    f"num_windows {w} fits none of the resolutions {list(self.resolutions)} with patch sizes "
                    f"{list(self.patch_sizes)}"
                )

    # -- construction ----------------------------------------------------------------------------------------
    @classmethod
    def for_config(cls, cfg: ModelConfig) -> SearchSpace:
        """A default space around a model.

        Resolutions in 0.67..1.33 x ``cfg.resolution`` that are multiples of every block size, plus
        ``cfg.resolution``; patch sizes {cfg's, 12, 16}; windows {1, cfg's}; 1..cfg's decoder layers; queries
        {Q, Q/2, Q/4}. When fewer than three resolutions are multiples of every block, the extra patch sizes
        are dropped so that the resolution axis keeps its range.
        """
        windows = sorted({1, cfg.num_windows})
        lo, hi = cfg.resolution * RESOLUTION_RANGE[0], cfg.resolution * RESOLUTION_RANGE[1]
        patches = sorted({cfg.patch_size, *PATCH_FAMILY})
        step = math.lcm(*(p * w for p in patches for w in windows))
        resolutions = sorted({cfg.resolution, *_multiples(step, lo, hi)})
        if len(resolutions) < 3:
            patches = [cfg.patch_size]
            step = math.lcm(*(cfg.patch_size * w for w in windows))
            resolutions = sorted({cfg.resolution, *_multiples(step, lo, hi)})
        queries = {q for q in (cfg.num_queries, cfg.num_queries // 2, cfg.num_queries // 4) if q >= 1}
        return cls(
            resolutions=tuple(resolutions),
            patch_sizes=tuple(patches),
            num_windows=tuple(windows),
            dec_layers=tuple(range(1, cfg.dec_layers + 1)),
            num_queries=tuple(queries),
        )

    def override(self, **axes: Sequence[int] | None) -> SearchSpace:
        """A copy with axes replaced, each by a sequence of values (None: kept). Patch sizes and windows that
        were kept from this space but fit none of the new resolutions are left out (a default patch size of 12
        with resolutions 224 and 256, say); values the caller gave are never dropped."""
        unknown = sorted(set(axes) - set(AXES))
        if unknown:
            raise ValueError(f"unknown search space axes {unknown}; axes are {list(AXES)}")
        changes = {name: _axis(value, name) for name, value in axes.items() if value is not None}  # checked first
        values = {name: changes.get(name, getattr(self, name)) for name in AXES}
        for name, other in (("patch_sizes", "num_windows"), ("num_windows", "patch_sizes")):
            if name in changes:
                continue
            fits = [v for v in values[name]
                    if any(r % (v * o) == 0 for o in values[other] for r in values["resolutions"])]  # fmt: skip
            if fits and len(fits) < len(values[name]):
                dropped = sorted(set(values[name]) - set(fits))
                logger.info("search space: %s %s fit none of the resolutions %s; left out", name, dropped,
                            list(values["resolutions"]))
                values[name] = tuple(fits)
        return dataclasses.replace(self, **values)

    def to_dict(self) -> dict[str, list[int]]:
        return {name: list(getattr(self, name)) for name in AXES}

    @classmethod
    def from_dict(cls, data: Mapping[str, Sequence[int]]) -> SearchSpace:
        missing, unknown = sorted(set(AXES) - set(data)), sorted(set(data) - set(AXES))
        if missing or unknown:
            raise ValueError(f"search space dict: missing axes {missing}, unknown axes {unknown}")
        return cls(**{name: tuple(data[name]) for name in AXES})

    # -- checks and enumeration ------------------------------------------------------------------------------
    def valid_pairs(self) -> list[tuple[int, int]]:
        """(patch_size, num_windows) pairs that fit at least one resolution of the space."""
        return [
            (p, w)
            for p, w in itertools.product(self.patch_sizes, self.num_windows)
            if any(r % (p * w) == 0 for r in self.resolutions)
        ]

    def check_model(self, cfg: ModelConfig) -> None:
        """Raises ValueError naming a decoder-layer or query count the model does not have."""
        for d in self.dec_layers:
            if d > cfg.dec_layers:
                raise ValueError(f"dec_layers {d} exceeds the model's {cfg.dec_layers} decoder layers")
        for q in self.num_queries:
            if q > cfg.num_queries:
                raise ValueError(f"num_queries {q} exceeds the model's {cfg.num_queries} queries")

    def __contains__(self, choice: object) -> bool:
        if not isinstance(choice, ArchChoice):
            return False
        return (
            choice.resolution in self.resolutions
            and choice.patch_size in self.patch_sizes
            and choice.num_windows in self.num_windows
            and choice.dec_layers in self.dec_layers
            and choice.num_queries in self.num_queries
            and choice.resolution % choice.block_size == 0
        )

    def sample(self, rng: np.random.Generator) -> ArchChoice:
        """A valid choice: uniform over usable (patch, windows) pairs, then over the resolutions that fit
        them, and independently uniform over decoder layers and queries."""
        pairs = self.valid_pairs()
        p, w = pairs[int(rng.integers(len(pairs)))]
        fits = [r for r in self.resolutions if r % (p * w) == 0]
        return ArchChoice(
            resolution=fits[int(rng.integers(len(fits)))],
            patch_size=p,
            num_windows=w,
            dec_layers=self.dec_layers[int(rng.integers(len(self.dec_layers)))],
            num_queries=self.num_queries[int(rng.integers(len(self.num_queries)))],
        )

    def grid(self) -> list[ArchChoice]:
        """Every valid choice, ordered by resolution, patch size, windows, decoder layers, queries."""
        return [
            ArchChoice(r, p, w, d, q)
            for r, p, w, d, q in itertools.product(
                self.resolutions, self.patch_sizes, self.num_windows, self.dec_layers, self.num_queries
            )
            if r % (p * w) == 0
        ]
