"""The TensorRT engine builder without TensorRT: batch profiles, the missing-package message, the build steps
against a stand-in ``tensorrt`` module (the real one needs a GPU), and the plugin identity shared with C++."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from rfkp.export import engine, plugin_nodes
from rfkp.export.engine import BatchProfile, EngineBuildError, build_engine, tensorrt_available

REPO = Path(__file__).resolve().parents[2]


def test_batch_profiles() -> None:
    assert BatchProfile.dynamic(8) == BatchProfile(1, 4, 8)
    assert BatchProfile.dynamic(1) == BatchProfile(1, 1, 1)
    assert BatchProfile.fixed(3) == BatchProfile(3, 3, 3)
    with pytest.raises(ValueError):
        BatchProfile(2, 1, 4)


@pytest.mark.skipif(tensorrt_available(), reason="tensorrt is installed here")
def test_missing_tensorrt_raises_with_the_install_hint(tmp_path: Path) -> None:
    with pytest.raises(EngineBuildError, match="cmake -S csrc/tensorrt"):
        build_engine(tmp_path / "m.onnx", tmp_path / "m.plan", resolution=64, profile=BatchProfile.fixed(1))


class _Tensor(SimpleNamespace):
    pass


class _Layer:
    def __init__(self, name: str, kind: str, dtypes: list[str]) -> None:
        self.name, self.type, self.precision = name, kind, None
        self.outputs = [_Tensor(dtype=d) for d in dtypes]
        self.num_outputs = len(dtypes)
        self.output_types: dict[int, str] = {}

    def get_output(self, i: int) -> _Tensor:
        return self.outputs[i]

    def set_output_type(self, i: int, dtype: str) -> None:
        self.output_types[i] = dtype


CONTRACT = {(op, plugin_nodes.PLUGIN_VERSION, plugin_nodes.PLUGIN_NAMESPACE) for op in plugin_nodes.PLUGINS}


def _fake_tensorrt(  # noqa: ANN202
    layers: list[_Layer], contract: set[tuple[str, str, str]], *, static: bool = True, parse_ok: bool = True
):
    """A stand-in ``tensorrt`` module. `contract`: the creators the plugin library provides; `static`: it
    registers them when loaded (the default build), else through IPluginRegistry.load_library."""
    calls: dict[str, object] = {"flags": []}
    creators: set[tuple[str, str, str]] = set()

    class Registry:
        def load_library(self, path: str) -> object:
            calls["library"] = path
            creators.update(contract)
            return object()

        def get_creator(self, name: str, version: str, namespace: str) -> object | None:
            return object() if (name, version, namespace) in creators else None

    class Network:
        num_layers = len(layers)

        def get_layer(self, i: int) -> _Layer:
            return layers[i]

    class Parser:
        num_errors = 0 if parse_ok else 1

        def __init__(self, network: Network, logger: object) -> None:
            pass

        def parse_from_file(self, path: str) -> bool:
            calls["parsed"] = path
            return parse_ok

        def get_error(self, i: int) -> str:
            return "In node 3 (importFallbackPluginImporter): creator not found"

    class Profile:
        def set_shape(self, name: str, lo: tuple, opt: tuple, hi: tuple) -> None:
            calls["profile"] = (name, lo, opt, hi)

    class Config:
        def set_flag(self, flag: str) -> None:
            calls["flags"].append(flag)  # type: ignore[union-attr]

        def add_optimization_profile(self, profile: Profile) -> None:
            calls["profiles"] = 1

    class Builder:
        def __init__(self, logger: object) -> None:
            pass

        def create_network(self, flags: int) -> Network:
            return Network()

        def create_builder_config(self) -> Config:
            return Config()

        def create_optimization_profile(self) -> Profile:
            return Profile()

        def build_serialized_network(self, network: Network, config: Config) -> bytes:
            return b"plan"

    class Logger:
        WARNING = 2

        def __init__(self, severity: int) -> None:
            pass

    def cdll(path: str, mode: int) -> object:  # static registration happens on load
        calls["dlopen"] = path
        if static:
            creators.update(contract)
        return object()

    registry = Registry()
    trt = SimpleNamespace(
        Logger=Logger, Builder=Builder, OnnxParser=Parser, get_plugin_registry=lambda: registry,
        init_libnvinfer_plugins=lambda logger, ns: True, float32="fp32", float16="fp16",
        LayerType=SimpleNamespace(CONSTANT="constant", PLUGIN_V3="plugin"), MemoryPoolType=SimpleNamespace(WORKSPACE="ws"),
        BuilderFlag=SimpleNamespace(FP16="FP16", OBEY_PRECISION_CONSTRAINTS="OBEY"),
    )  # fmt: skip
    calls["cdll"] = cdll
    return trt, calls


def _layers() -> list[_Layer]:
    return [
        _Layer("/network/backbone/Conv", "conv", ["fp32"]),
        _Layer("/Sigmoid", "activation", ["fp32"]),
        _Layer("/TopK", "topk", ["fp32", "int32"]),
        _Layer("/Constant_3", "constant", ["fp32"]),
        _Layer("/rfkp::RfkpGaussianRescore", "plugin", ["fp32", "fp32", "fp32"]),
    ]


@pytest.mark.parametrize("static", [True, False], ids=["static-registration", "library-entry-points"])
def test_build_steps_profile_and_fp32_post_processing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, static: bool
) -> None:
    layers = _layers()
    trt, calls = _fake_tensorrt(layers, CONTRACT, static=static)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(engine.ctypes, "CDLL", calls["cdll"])
    lib = tmp_path / "librfkp_trt_plugins.so"
    lib.write_bytes(b"")
    out = build_engine(tmp_path / "m.onnx", tmp_path / "e" / "m.plan", resolution=64,
                       profile=BatchProfile.dynamic(8), plugin_lib=lib)  # fmt: skip
    assert out.read_bytes() == b"plan"
    assert calls["dlopen"] == str(lib) and calls["parsed"] == str(tmp_path / "m.onnx")
    assert ("library" in calls) == (not static)
    assert calls["profile"] == ("PIXELS", (1, 3, 64, 64), (4, 3, 64, 64), (8, 3, 64, 64))
    assert calls["flags"] == ["FP16", "OBEY"]
    # the network layer stays free, the constant too; the rest is pinned to FP32, the top-k's scores included
    # (its int indices keep their type); the plugin through its output types only
    assert [layer.precision for layer in layers] == [None, "fp32", "fp32", None, None]
    assert layers[2].output_types == {0: "fp32"}
    assert layers[4].output_types == {0: "fp32", 1: "fp32", 2: "fp32"}


def test_build_reports_missing_plugins_and_parse_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trt, calls = _fake_tensorrt(_layers(), set())
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(engine.ctypes, "CDLL", calls["cdll"])
    monkeypatch.setenv(engine.PLUGIN_LIB_ENV, str(tmp_path / "absent.so"))
    with pytest.raises(EngineBuildError, match="plugin library not found"):
        build_engine(tmp_path / "m.onnx", tmp_path / "m.plan", resolution=64, profile=BatchProfile.fixed(1))
    monkeypatch.delenv(engine.PLUGIN_LIB_ENV)
    with pytest.raises(EngineBuildError, match="RfkpMSDeformAttn v1 \\(rfkp\\)"):  # no library at all
        build_engine(tmp_path / "m.onnx", tmp_path / "m.plan", resolution=64, profile=BatchProfile.fixed(1))
    lib = tmp_path / "libother.so"
    lib.write_bytes(b"")
    with pytest.raises(EngineBuildError, match="RfkpGaussianRescore v1 \\(rfkp\\)"):  # a library without them
        build_engine(tmp_path / "m.onnx", tmp_path / "m.plan", resolution=64, profile=BatchProfile.fixed(1),
                     plugin_lib=lib)  # fmt: skip
    assert calls["library"] == str(lib)
    trt, calls = _fake_tensorrt(_layers(), set(), parse_ok=False)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    with pytest.raises(EngineBuildError, match="could not parse"):
        build_engine(tmp_path / "m.onnx", tmp_path / "m.plan", resolution=64, profile=BatchProfile.fixed(1),
                     plugins=False, fp16=False)  # fmt: skip
    assert calls["flags"] == []


def test_plugin_identity_matches_the_cpp_plugins() -> None:
    header = REPO / "csrc" / "tensorrt" / "common" / "plugin_common.h"
    if not header.is_file():
        pytest.skip(f"{header} not found")
    text = header.read_text()
    namespace = re.search(r'kNamespace\[\]\s*=\s*"([^"]*)"', text)
    version = re.search(r'kVersion\[\]\s*=\s*"([^"]*)"', text)
    if not (namespace and version):
        pytest.skip("plugin identity constants not found in plugin_common.h")
    assert (namespace.group(1), version.group(1)) == (
        plugin_nodes.PLUGIN_NAMESPACE,
        plugin_nodes.PLUGIN_VERSION,
    )


def test_the_plugin_library_is_checked_on_its_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`check_plugin_library` (what `rfkp export` runs before exporting): a file that is no library, and a
    library without the rfkp creators, are each reported with the library's name."""
    trt, calls = _fake_tensorrt(_layers(), CONTRACT)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    lib = tmp_path / "notalib.txt"
    lib.write_text("text")

    def not_a_library(path: str, mode: int) -> object:
        raise OSError(f"{path}: file too short")

    monkeypatch.setattr(engine.ctypes, "CDLL", not_a_library)
    with pytest.raises(EngineBuildError, match=r"cannot load the plugin library .*notalib.txt: .*file too short"):
        engine.check_plugin_library(lib)
    trt, calls = _fake_tensorrt(_layers(), set())
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(engine.ctypes, "CDLL", calls["cdll"])
    with pytest.raises(EngineBuildError, match="TensorRT plugins not registered: RfkpMSDeformAttn"):
        engine.check_plugin_library(lib)
    trt, calls = _fake_tensorrt(_layers(), CONTRACT)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(engine.ctypes, "CDLL", calls["cdll"])
    assert engine.check_plugin_library(lib) == lib and calls["dlopen"] == str(lib)
