"""The static scan of what a pickle imports: every protocol, no execution."""

from __future__ import annotations

import collections
import functools
import pickle
import pickletools

import cloudpickle
import dill
import numpy as np
import pytest

from blackbox.containment.imports import Global, pickle_globals, scan
from blackbox.errors import ArtifactError

from _helpers import marker_payload


class _Reduce:
    """Pickles as ``func(*args)``: a hand-made REDUCE."""

    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


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


def test_constant_getattr_and_importer_calls_are_followed():
    """getattr(module, "name") is read as the global module:name; an importer's constant argument as a module."""
    data = pickle.dumps(_Reduce(getattr, (_Reduce(cloudpickle.cloudpickle.subimport, ("collections",)), "OrderedDict")), protocol=4)
    found = scan(data)
    assert Global("collections", "") in found.globals and found.attributes == {Global("collections", "OrderedDict"): False}
    assert found.dynamic == []


@pytest.mark.parametrize("obj, problem", [
    (_Reduce(getattr, (_Reduce(str, ("os",)), "system")), "builtins.getattr of an object or a name computed"),
    (_Reduce(functools.reduce, (getattr, ("path", "join"), _Reduce(cloudpickle.cloudpickle.subimport, ("os",)))),
     "builtins.getattr passed on as a value"),
    (_Reduce(cloudpickle.cloudpickle.subimport, (_Reduce(str, ("os",)),)), "subimport of a module name computed"),
    (_Reduce(delattr, (collections.OrderedDict, "popitem")), "builtins.delattr changing collections.OrderedDict"),
])
def test_uses_a_static_reading_cannot_follow_are_reported(obj, problem):
    assert any(problem in use for use in scan(pickle.dumps(obj, protocol=4)).dynamic)
