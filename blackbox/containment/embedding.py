"""Self-containment by construction: embed user code until the payload needs nothing else.

:func:`embed` pickles the estimator, reads the globals the payload would import
(:mod:`blackbox.containment.imports`, from the opcodes), and moves every top-level module the
serving side will not provide (:mod:`blackbox.containment.environment`) into the by-value
set; it repeats until the payload imports only provided modules. A reference it
cannot embed (a C extension, ``__main__``, an object that pickles itself by
name) is refused, naming the reference and where it sits in the estimator.
"""

from __future__ import annotations

import functools
import importlib
import types
from collections import deque
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from typing import Any

from ..errors import SelfContainmentError
from . import serializers
from .environment import ServingEnvironment, embeddable, top_level
from .imports import Global, pickle_globals

_MAX_ROUNDS = 8
_MAX_NODES = 200_000


@dataclass(frozen=True)
class Payload:
    """A pickled estimator and what it needs at load time."""

    data: bytes
    serializer: str
    by_value: tuple[str, ...]
    imports: tuple[Global, ...]
    requirements: dict[str, str]


def embed(
    obj: Any,
    *,
    serializer: str,
    by_value: Collection[str] = (),
    by_reference: Collection[str] = (),
) -> Payload:
    """Pickle ``obj`` so that it loads where only provided modules exist."""
    chosen = {top_level(m) for m in by_value}
    declared = frozenset(top_level(m) for m in by_reference)
    for _ in range(_MAX_ROUNDS):
        env = ServingEnvironment(by_value=frozenset(chosen), by_reference=declared)
        data = serializers.dumps(obj, serializer, chosen)
        globals_ = pickle_globals(data)
        missing = [g for g in globals_ if not env.provides(g.module)]
        if not missing:
            return Payload(data, serializer, tuple(sorted(chosen)), tuple(globals_), env.requirements(globals_))
        new = {top_level(g.module) for g in missing} - chosen
        stuck = [g for g in missing if top_level(g.module) in chosen or not embeddable(top_level(g.module))]
        if stuck or not new:
            raise _refusal(obj, stuck or missing)
        chosen |= new
    raise _refusal(obj, missing)


def _refusal(root: Any, references: list[Global]) -> SelfContainmentError:
    lines = []
    for g in references[:5]:
        path = locate(root, g)
        lines.append(f"- {path + ' -> ' if path else ''}{g}")
    more = f"\n- ... and {len(references) - 5} more" if len(references) > 5 else ""
    modules = sorted({top_level(g.module) for g in references})
    return SelfContainmentError(
        f"Refusing to save: the payload would import {len(references)} name(s) from module(s) "
        f"{', '.join(map(repr, modules))} that the serving side will not have, and blackbox cannot embed them "
        "(compiled code, __main__, or an object that pickles itself by name):\n"
        + "\n".join(lines)
        + more
        + "\nMove that code into a pure-Python module of your project, or, if the server installs "
        "the module, declare it with by_reference=[...].",
        [str(g) for g in references],
    )


def locate(root: Any, target: Global) -> str | None:
    """A readable path from ``root`` to the object ``target`` names, or None if not found."""
    wanted = _resolve(target)
    seen: set[int] = set()
    queue: deque[tuple[Any, tuple[str, ...]]] = deque([(root, ())])
    while queue and len(seen) < _MAX_NODES:
        obj, path = queue.popleft()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if obj is wanted or _names(obj) == (target.module, target.name):
            return " -> ".join(path) or None
        for label, child in _children(obj):
            if not isinstance(child, (str, bytes, int, float, bool, type(None))):
                queue.append((child, path + (label,) if label else path))
    return None


def _resolve(target: Global) -> Any:
    try:
        obj: Any = importlib.import_module(target.module)
        for part in filter(None, target.name.split(".")):
            obj = getattr(obj, part)
        return obj
    except Exception:  # noqa: BLE001  the name is only used to recognise the object
        return None


def _names(obj: Any) -> tuple[str, str] | None:
    if isinstance(obj, (type, types.FunctionType)):
        return (obj.__module__, obj.__qualname__)
    return None


def _children(obj: Any) -> Iterator[tuple[str, Any]]:
    """Labelled references out of ``obj`` (what its pickle would contain); "" adds no label."""
    if isinstance(obj, (list, tuple, set, frozenset)):
        yield from (("", item) for item in obj)
    elif isinstance(obj, dict):
        yield from ((f"[{key!r}]", value) for key, value in obj.items())
    elif isinstance(obj, functools.partial):
        yield from (("", o) for o in (obj.func, *obj.args, *obj.keywords.values()))
    elif isinstance(obj, types.FunctionType):
        yield from ((name, obj.__globals__[name]) for name in obj.__code__.co_names if name in obj.__globals__)
        yield from (("", cell.cell_contents) for cell in obj.__closure__ or () if _has_contents(cell))
        yield from (("", d) for d in obj.__defaults__ or ())
    elif not isinstance(obj, (type, types.ModuleType)) and hasattr(obj, "__dict__"):
        for attr, value in vars(obj).items():
            if isinstance(value, (list, tuple)):
                for i, item in enumerate(value):
                    if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
                        yield f"{attr}[{i}] {item[0]}", item[1]  # (name, estimator), as in Pipeline.steps
                    else:
                        yield f"{attr}[{i}]", item
            else:
                yield f"{type(obj).__name__}.{attr}", value


def _has_contents(cell: types.CellType) -> bool:
    try:
        cell.cell_contents  # noqa: B018  reading an empty cell raises ValueError
    except ValueError:
        return False
    return True
