"""The weight-sharing search space: only valid choices, reproducible sampling that covers every value."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from rfkp.nn.detector import SubArchitecture
from rfkp.variants import nano, preview, tiny
from trainer.nas.space import AXES, ArchChoice, SearchSpace

CONFIGS = {"preview": preview(), "nano": nano(), "tiny": tiny(), "tiny128": tiny(resolution=128)}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_default_space_is_valid_and_holds_the_full_model(name: str) -> None:
    cfg = CONFIGS[name]
    space = SearchSpace.for_config(cfg)
    grid = space.grid()
    assert all(c.resolution % (c.patch_size * c.num_windows) == 0 for c in grid)
    assert len(set(grid)) == len(grid)
    assert ArchChoice.full(cfg) in grid and ArchChoice.full(cfg) in space
    lo, hi = 0.67 * cfg.resolution, 1.33 * cfg.resolution
    assert all(lo <= r <= hi for r in space.resolutions) and len(space.resolutions) >= 3
    assert space.num_windows == tuple(sorted({1, cfg.num_windows}))
    assert space.dec_layers == tuple(range(1, cfg.dec_layers + 1))
    assert max(space.num_queries) == cfg.num_queries and cfg.patch_size in space.patch_sizes
    space.check_model(cfg)


def test_preview_default_space() -> None:
    space = SearchSpace.for_config(preview())
    assert space.resolutions == (480, 576, 672)  # multiples of 12, 16, 24 and 32 around 576
    assert space.patch_sizes == (12, 16) and space.num_queries == (25, 50, 100)
    assert len(space.grid()) == 3 * 2 * 2 * 4 * 3


def test_grid_is_exactly_the_valid_product() -> None:
    space = SearchSpace((192, 200, 256), (8, 16), (1, 2), (1, 2), (10, 20))
    product = itertools.product(space.resolutions, space.patch_sizes, space.num_windows, space.dec_layers,
                                space.num_queries)  # fmt: skip
    expected = [ArchChoice(*v) for v in product if v[0] % (v[1] * v[2]) == 0]
    assert space.grid() == expected
    assert ArchChoice(200, 16, 1, 1, 10) not in space.grid()  # 200 is not a multiple of 16
    assert ArchChoice(200, 8, 1, 1, 10) in space


def test_sampling_is_valid_reproducible_and_covers_every_value() -> None:
    space = SearchSpace((192, 200, 256, 288), (8, 12, 16), (1, 2), (1, 2, 3), (25, 50, 100))
    draws = [space.sample(np.random.default_rng(7)) for _ in range(3)]
    assert draws[0] == draws[1] == draws[2]
    rng_a, rng_b = np.random.default_rng(123), np.random.default_rng(123)
    seq_a = [space.sample(rng_a) for _ in range(1500)]
    assert seq_a == [space.sample(rng_b) for _ in range(1500)]
    rng_c = np.random.default_rng(124)
    assert seq_a[:50] != [space.sample(rng_c) for _ in range(50)]
    assert all(c in space and c.resolution % c.block_size == 0 for c in seq_a)
    for axis, field in zip(AXES, ("resolution", "patch_size", "num_windows", "dec_layers", "num_queries")):
        assert {getattr(c, field) for c in seq_a} == set(getattr(space, axis)), axis
    # a resolution that fits only some blocks is still drawn, and only with them
    assert {(c.patch_size, c.num_windows) for c in seq_a if c.resolution == 200} == {(8, 1)}


def test_arch_choice_forms() -> None:
    choice = ArchChoice(320, 16, 2, 3, 50)
    assert choice.key() == "r320-p16-w2-d3-q50"
    assert choice.sub_architecture() == SubArchitecture(16, 2, 3, 50)
    assert choice.arch_kwargs() == {"patch_size": 16, "num_windows": 2, "dec_layers": 3, "num_queries": 50}
    assert ArchChoice(**choice.as_dict()) == choice
    choice.check_model(preview())
    with pytest.raises(ValueError, match="dec_layers must be in"):
        ArchChoice(576, 12, 2, 5, 100).check_model(preview())
    with pytest.raises(ValueError, match="resolution 500 is not a multiple"):
        ArchChoice(500, 12, 2, 4, 100).check_model(preview())


def test_dict_round_trip_and_override() -> None:
    space = SearchSpace.for_config(tiny())
    assert SearchSpace.from_dict(space.to_dict()) == space
    narrowed = space.override(resolutions=(256, 192), patch_sizes=[16], num_windows=[2], dec_layers=None)
    assert (
        narrowed.resolutions == (192, 256) and narrowed.patch_sizes == (16,) and narrowed.num_windows == (2,)
    )
    assert narrowed.dec_layers == space.dec_layers
    with pytest.raises(ValueError, match="missing axes"):
        SearchSpace.from_dict({"resolutions": [256]})
    with pytest.raises(ValueError, match="unknown search space axes"):
        space.override(windows=[2])


def test_kept_patch_sizes_that_fit_no_new_resolution_are_left_out() -> None:
    """Resolutions given alone: the space's own patch size 12 fits neither 224 nor 256 (with windows 1, 2) and
    is left out, where it used to make the space invalid; a patch size the caller gives is kept and checked."""
    space = SearchSpace.for_config(tiny(patch_size=16, num_windows=2, resolution=256))
    assert 12 in space.patch_sizes
    narrowed = space.override(resolutions=[224, 256])
    assert narrowed.patch_sizes == (16,) and narrowed.resolutions == (224, 256)
    with pytest.raises(ValueError, match="patch size 12 fits none of the resolutions"):
        space.override(resolutions=[224, 256], patch_sizes=[12, 16])
    for axes in ({"patch_sizes": [0]}, {"num_windows": [0]}, {"patch_sizes": ["16"]}):  # checked before pruning
        with pytest.raises(ValueError, match="must hold positive integers"):
            space.override(resolutions=[224, 256], **axes)


def test_invalid_spaces_name_the_value() -> None:
    with pytest.raises(
        ValueError, match=r"resolution 250 is not a multiple .* \(block sizes 12, 16, 24, 32\)"
    ):
        SearchSpace((256, 250), (12, 16), (1, 2), (1,), (10,))
    with pytest.raises(ValueError, match="patch size 20 fits none of the resolutions"):
        SearchSpace((192,), (16, 20), (1,), (1,), (10,))
    with pytest.raises(ValueError, match="num_windows 5 fits none"):
        SearchSpace((192,), (16,), (1, 5), (1,), (10,))
    with pytest.raises(ValueError, match="dec_layers is empty"):
        SearchSpace((192,), (16,), (1,), (), (10,))
    for bad in (0, -4, True, 2.5):
        with pytest.raises(ValueError, match="must hold positive integers"):
            SearchSpace((192,), (16,), (1,), (1,), (bad,))
    space = SearchSpace((192,), (16,), (1,), (1, 3), (10, 30))
    with pytest.raises(ValueError, match="dec_layers 3 exceeds the model's 2"):
        space.check_model(tiny())
    with pytest.raises(ValueError, match="num_queries 30 exceeds the model's 20"):
        space.override(dec_layers=[1]).check_model(tiny())
