"""The serializer seam: dill (default) or cloudpickle, both embedding user code by value.

Both pickle functions and classes from importable modules *by reference*, which
breaks where those modules are absent. cloudpickle can switch a module to *by
value* with ``register_pickle_by_value``; dill cannot (its ``_locate_function``
keeps importable objects by reference whatever its settings). So for dill,
:class:`_DillPickler` asks a cloudpickle pickler, through the standard
``reducer_override`` hook, how to rebuild the functions, classes and modules of
the by-value modules, and lets dill write everything else its own way. The
by-value code is rebuilt by cloudpickle's well-kept reconstructors, so both
serializers need cloudpickle at load time.

cloudpickle's by-value registry is process-wide, so registration is scoped to
one dump and guarded by a lock.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import pickle
import sys
import threading
import types
from collections.abc import Collection, Iterator
from typing import Any

import cloudpickle
import dill

from ..errors import UsageError

SERIALIZERS = ("dill", "cloudpickle")
PROTOCOL = 5
_REGISTRY_LOCK = threading.Lock()


def check_serializer(name: str) -> str:
    if name not in SERIALIZERS:
        raise UsageError(f"Unknown serializer {name!r}; choose one of {', '.join(SERIALIZERS)}.")
    return name


def version(name: str) -> str:
    """The installed version of a serializer's distribution."""
    return importlib.metadata.version(check_serializer(name))


def dumps(obj: Any, serializer: str, by_value: Collection[str] = ()) -> bytes:
    """Pickle ``obj``, embedding the code of the ``by_value`` top-level modules."""
    check_serializer(serializer)
    with _REGISTRY_LOCK, _registered_by_value(by_value):
        buffer = io.BytesIO()
        if serializer == "dill":
            _DillPickler(buffer, frozenset(by_value)).dump(obj)
        else:
            cloudpickle.Pickler(buffer, protocol=PROTOCOL).dump(obj)
        return buffer.getvalue()


def loads(payload: bytes, serializer: str) -> Any:
    """Unpickle a payload written by :func:`dumps`. Executes code: verify first."""
    if check_serializer(serializer) == "dill":
        return dill.loads(payload)
    return pickle.loads(payload)


def _in_modules(module_name: str | None, modules: Collection[str]) -> bool:
    return bool(module_name) and module_name.partition(".")[0] in modules  # type: ignore[union-attr]


class _DillPickler(dill.Pickler):  # type: ignore[misc]
    """dill, with the objects of by-value modules rebuilt by cloudpickle's reducers."""

    def __init__(self, file: io.BytesIO, by_value: frozenset[str]) -> None:
        super().__init__(file, protocol=PROTOCOL, recurse=True)
        self._by_value = by_value
        # One cloudpickle pickler for the whole dump, so functions of one module
        # share one globals dict, as they would in cloudpickle itself.
        self._by_value_reducers = cloudpickle.Pickler(io.BytesIO(), protocol=PROTOCOL)

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, types.ModuleType) and _in_modules(obj.__name__, self._by_value):
            return self._by_value_reducers.dispatch_table[types.ModuleType](obj)
        if isinstance(obj, (types.FunctionType, type)) and _in_modules(getattr(obj, "__module__", None), self._by_value):
            return self._by_value_reducers.reducer_override(obj)
        return NotImplemented


@contextlib.contextmanager
def _registered_by_value(modules: Collection[str]) -> Iterator[None]:
    """Register top-level modules with cloudpickle for one dump, then restore the registry."""
    added = []
    try:
        for name in sorted(modules):
            module = sys.modules.get(name)
            if module is None:
                raise UsageError(
                    f"Module {name!r} is to be embedded by value but is not imported; "
                    "import it before saving, or drop it from by_value."
                )
            if name not in cloudpickle.list_registry_pickle_by_value():
                cloudpickle.register_pickle_by_value(module)
                added.append(module)
        yield
    finally:
        for module in added:
            cloudpickle.unregister_pickle_by_value(module)
