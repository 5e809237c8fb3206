"""The static scan of what a pickle imports: every protocol, no execution."""

from __future__ import annotations

import collections
import pickle
import pickletools

import cloudpickle
import dill
import numpy as np
import pytest

from blackbox.errors import ArtifactError
from blackbox.imports import Global, pickle_globals
from conftest import marker_payload


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_finds_globals_in_every_protocol(protocol):
    obj = [collections.OrderedDict(a=1), np.arange(3), collections.Counter("ab"), collections.OrderedDict(b=2)]
    found = pickle_globals(pickle.dumps(obj, protocol=protocol))
    assert Global("collections", "OrderedDict") in found
    assert Global("collections", "Counter") in found
    assert any(g.module.startswith("numpy") for g in found)
    assert len(found) == len(set(found))  # the memoised second OrderedDict is not listed twice


def test_stack_global_operands_fetched_from_the_memo():
    data = pickle.dumps([collections.OrderedDict, collections.OrderedDict, collections.Counter], protocol=4)
    assert any(op.name in ("BINGET", "LONG_BINGET") for op, _, _ in pickletools.genops(data))
    assert pickle_globals(data) == [Global("collections", "OrderedDict"), Global("collections", "Counter")]


def test_module_references_hidden_in_calls_are_found():
    import json

    def uses_json(x):
        return json.dumps(x)

    assert Global("json", "") in pickle_globals(cloudpickle.dumps(uses_json))
    assert Global("json", "") in pickle_globals(dill.dumps(uses_json, recurse=False, byref=False))


def test_protocol_5_buffers_are_read():
    data = pickle.dumps([bytearray(b"x" * 10), pickle.PickleBuffer(b"y" * 10)], protocol=5)
    assert pickle_globals(data) == []


def test_scanning_never_executes(tmp_path):
    marker = tmp_path / "MARKER"
    found = pickle_globals(marker_payload(marker))
    assert Global("io", "open") in found or Global("builtins", "open") in found
    assert not marker.exists()


@pytest.mark.parametrize("data", [b"", b"not a pickle", pickle.dumps([1, 2, 3])[:-3]])
def test_garbage_is_an_artifact_error(data):
    with pytest.raises(ArtifactError, match="not a pickle"):
        pickle_globals(data)


def test_key_is_unambiguous():
    assert Global("a.b", "C.d").key == "a.b:C.d" and str(Global("a.b", "C.d")) == "a.b.C.d"
    assert Global("numpy", "").key == "numpy"
