"""Checkpoints: rfkp round trip, peer layout, safe loading."""

from __future__ import annotations

import argparse
import os
import pickle
from pathlib import Path

import pytest
import torch

from rfkp import RFDETRKeypoint
from rfkp.checkpoint import CheckpointError, read_checkpoint
from rfkp.nn.detector import SubArchitecture
from rfkp.variants import tiny


@pytest.fixture(scope="module")
def two_skeleton_model() -> RFDETRKeypoint:
    return RFDETRKeypoint.from_config(
        tiny(num_classes=3, num_keypoints_per_class=[7, 4], class_names=["mouse_top", "mouse_bot", "dish"]),
        device="cpu",
        seed=3,
    )


def test_round_trip_is_exact(two_skeleton_model: RFDETRKeypoint, tmp_path: Path) -> None:
    path = tmp_path / "m.pt"
    two_skeleton_model.save_checkpoint(path)
    loaded = RFDETRKeypoint.from_checkpoint(path, device="cpu")
    assert loaded.config == two_skeleton_model.config
    a, b = two_skeleton_model.network.state_dict(), loaded.network.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    x = torch.randn(1, 3, 256, 256)
    ra, rb = two_skeleton_model.forward_raw(x), loaded.forward_raw(x)
    assert all(torch.equal(ra[k], rb[k]) for k in ra)
    assert not loaded.is_random_init


def test_half_precision_checkpoint(two_skeleton_model: RFDETRKeypoint, tmp_path: Path) -> None:
    full, half = tmp_path / "full.pt", tmp_path / "half.pt"
    two_skeleton_model.save_checkpoint(full)
    two_skeleton_model.save_checkpoint(half, dtype=torch.float16)
    assert half.stat().st_size < 0.6 * full.stat().st_size
    stored = read_checkpoint(half)["model"]
    assert {v.dtype for v in stored.values() if v.is_floating_point()} == {torch.float16}
    loaded = RFDETRKeypoint.from_checkpoint(half, device="cpu")
    for key, value in two_skeleton_model.network.state_dict().items():
        got = loaded.network.state_dict()[key]
        expected = value.half().to(value.dtype) if value.is_floating_point() else value
        assert got.dtype == value.dtype and torch.equal(got, expected), key
    with pytest.raises(ValueError, match="floating type"):
        two_skeleton_model.save_checkpoint(half, dtype=torch.int8)


def test_padded_keypoint_layout(two_skeleton_model: RFDETRKeypoint) -> None:
    out = two_skeleton_model.forward_raw(torch.randn(1, 3, 256, 256))
    kps = out["pred_keypoints"].reshape(1, 20, 2, 7, 8)
    assert torch.all(kps[:, :, 1, 4:] == 0), "padding slots of the 4-keypoint class must be zero"
    assert torch.all(kps[:, :, 0].abs().sum(-1) > 0)


def test_classes_do_not_attend_to_each_others_keypoints() -> None:
    net = RFDETRKeypoint.from_config(tiny(num_classes=3, num_keypoints_per_class=[7, 4]), "cpu", seed=4).network
    with torch.no_grad():  # the keypoint head starts at zero: give it weights so outputs depend on features
        net.keypoint_embed.layers[-1].weight.normal_(std=0.1)
    x = torch.randn(1, 3, 256, 256)
    with torch.inference_mode():
        before = net(x, SubArchitecture(dec_layers=1))["pred_keypoints"].reshape(1, 20, 2, 7, 8)
        saved = net.decoder.keypoint_pos_embed.clone()
        net.decoder.keypoint_pos_embed[:7] += 1.0  # class 0's keypoint tokens only
        after = net(x, SubArchitecture(dec_layers=1))["pred_keypoints"].reshape(1, 20, 2, 7, 8)
        net.decoder.keypoint_pos_embed.copy_(saved)
    assert not torch.allclose(before[:, :, 0], after[:, :, 0])
    assert torch.allclose(before[:, :, 1, :4, :7], after[:, :, 1, :4, :7], atol=1e-6)


class _Payload:
    def __reduce__(self):  # noqa: ANN204 - a crafted checkpoint that would run a command when unpickled
        return (os.system, ("echo pwned > /dev/null",))


def test_malicious_pickle_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"model": {}, "args": _Payload()}, f)
    with pytest.raises(CheckpointError, match="refusing to load|cannot read"):
        read_checkpoint(path)
    torch.save({"model": {"w": torch.zeros(1)}, "args": _Payload()}, path)
    with pytest.raises(CheckpointError, match="allowlist"):
        RFDETRKeypoint.from_checkpoint(path)


def test_namespace_args_are_allowed(tmp_path: Path) -> None:
    path = tmp_path / "ns.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "args": argparse.Namespace(num_queries=5)}, path)
    data = read_checkpoint(path)
    assert data["args"].num_queries == 5


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "cannot read checkpoint .*not a torch checkpoint or corrupt"),
        (b"not a checkpoint at all", "cannot read"),
        (b"hello\n", "cannot read checkpoint .*not a torch checkpoint or corrupt"),  # KeyError in the unpickler
        (b"ab", "cannot read checkpoint .*not a torch checkpoint or corrupt"),  # IndexError in the unpickler
    ],
)
def test_corrupt_files(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        read_checkpoint(path)


def test_missing_and_wrong_layout(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        RFDETRKeypoint.from_checkpoint(tmp_path / "nope.pth")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "x.pth")
    with pytest.raises(CheckpointError, match="not a model checkpoint"):
        RFDETRKeypoint.from_checkpoint(tmp_path / "x.pth")
    torch.save({"format": "rfkp", "version": 1, "model": {"x": torch.zeros(2)}}, tmp_path / "nocfg.pth")
    with pytest.raises(CheckpointError, match="without its 'config'"):
        RFDETRKeypoint.from_checkpoint(tmp_path / "nocfg.pth")
    # an rfdetr layout without the tensors a keypoint model has (e.g. a detection-only checkpoint)
    torch.save({"model": {"backbone.0.encoder.encoder.embeddings.cls_token": torch.zeros(1, 1, 8)}}, tmp_path / "d.pth")
    with pytest.raises(CheckpointError, match="d.pth: lacks the tensor .*not an rfdetr keypoint checkpoint"):
        RFDETRKeypoint.from_checkpoint(tmp_path / "d.pth")
    torch.save({"model": {"foo.weight": torch.zeros(1)}}, tmp_path / "y.pth")
    with pytest.raises(CheckpointError, match="unrecognised"):
        RFDETRKeypoint.from_checkpoint(tmp_path / "y.pth")


def test_saving_to_a_folder_is_refused_and_leaves_nothing(two_skeleton_model: RFDETRKeypoint, tmp_path: Path) -> None:
    folder = tmp_path / "weights"
    folder.mkdir()
    with pytest.raises(IsADirectoryError, match="it is a folder"):
        two_skeleton_model.save_checkpoint(folder)
    assert list(tmp_path.iterdir()) == [folder] and not list(folder.iterdir())
    with pytest.raises(IsADirectoryError, match="names a folder; name the file"):
        two_skeleton_model.save_checkpoint(f"{tmp_path}/new/")  # no file called 'new' is written
    assert list(tmp_path.iterdir()) == [folder]


@pytest.mark.parametrize("bad_value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_by_name(
    two_skeleton_model: RFDETRKeypoint, tmp_path: Path, bad_value: float
) -> None:
    path = tmp_path / "diverged.pt"
    two_skeleton_model.save_checkpoint(path)
    data = read_checkpoint(path)
    names = [k for k, v in data["model"].items() if v.is_floating_point()][:5]
    for name in names:
        data["model"][name].view(-1)[0] = bad_value
    torch.save(data, path)
    message = rf"diverged.pt: 5 weight tensor\(s\) hold NaN or infinite values \({names[0]}, .* and 2 more\)"
    with pytest.raises(CheckpointError, match=message):
        RFDETRKeypoint.from_checkpoint(path, device="cpu")


def test_a_full_disk_is_an_os_error_naming_the_file(two_skeleton_model: RFDETRKeypoint, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """torch's zip writer turns a failed write (ENOSPC) into its own RuntimeError; the save reports an OSError
    naming the checkpoint and the cause, leaves no partial file and keeps the earlier checkpoint."""
    import errno

    path = tmp_path / "m.pt"
    two_skeleton_model.save_checkpoint(path)
    before = path.read_bytes()

    def full_disk(obj: object, f: object) -> None:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 2078336 vs 2078224")  # noqa: B904 - as torch raises it

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match=r"\[Errno 28\] could not write .*m.pt: No space left on device") as info:
        two_skeleton_model.save_checkpoint(path)
    assert info.value.errno == errno.ENOSPC
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["m.pt"]
