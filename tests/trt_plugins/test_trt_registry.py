"""Loading the library registers exactly the contract's creators (names, versions, namespace, fields), and the
plugin-library entry point getCreators() returns the same ones."""

from __future__ import annotations

import ctypes
from pathlib import Path

from rfkp import tensorrt_plugins
from rfkp.tensorrt_plugins import FIELD_FLOAT32, CreatorInfo

EXPECTED = [
    ("RfkpMSDeformAttn", "1", "rfkp", ()),
    ("RfkpGaussianRescore", "1", "rfkp", (("alpha", FIELD_FLOAT32, 1),)),
]


def _identity(c: CreatorInfo) -> tuple:
    return c.name, c.version, c.namespace, c.fields


def test_creators_are_registered_on_load_under_the_rfkp_namespace(stub_library: Path, shim: ctypes.CDLL) -> None:
    creators = tensorrt_plugins.registered_creators(stub_library)
    assert [_identity(c) for c in creators] == EXPECTED
    assert [c.registered_namespace for c in creators] == ["rfkp", "rfkp"]


def test_get_creators_entry_point_lists_the_same_creators(stub_library: Path, shim: ctypes.CDLL) -> None:
    creators = tensorrt_plugins.entry_point_creators(stub_library)
    assert [_identity(c) for c in creators] == EXPECTED
    assert all(c.registered_namespace is None for c in creators)


def test_registration_logged_no_warning(shim: ctypes.CDLL) -> None:
    shim.rfkp_stub_log_message.restype = ctypes.c_char_p
    messages = [shim.rfkp_stub_log_message(i).decode() for i in range(shim.rfkp_stub_log_count())]
    assert not [m for m in messages if m.startswith("rfkp plugins:")]
