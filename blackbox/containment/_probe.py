"""Child-process side of blackbox.containment.isolation: load an artifact where user code cannot be found.

Run as ``python -I -m blackbox.containment._probe ARTIFACT`` (JSON options on stdin) from an empty
directory. Before anything else it makes the blocked top-level modules
unimportable, then loads the artifact with blackbox.load and runs its golden
sample, and prints one JSON line with the outcome. Its exit code is the outcome's.
An exception from the model's own code (not a blackbox error) is a failed
self-test naming it, except a module it imports while it runs that cannot be
found here: that is not self-contained, with the advice of
:func:`blackbox.containment.isolation.missing_module_advice`. A crash or a hang is seen by
the parent (no JSON line).
"""

from __future__ import annotations

import importlib.abc
import json
import sys
import time
import types
from collections.abc import Sequence
from typing import Any


class _Blocker(importlib.abc.MetaPathFinder):
    """Makes modules unimportable, so an accidental reference cannot be satisfied."""

    def __init__(self, blocked: frozenset[str]) -> None:
        self.blocked = blocked

    def find_spec(self, fullname: str, path: Sequence[str] | None = None, target: types.ModuleType | None = None) -> None:
        if fullname.partition(".")[0] in self.blocked:
            raise ModuleNotFoundError(f"No module named {fullname!r} (blocked by blackbox verify)", name=fullname)
        return None


def main(path: str, options: dict[str, Any]) -> int:
    blocked = frozenset(options["block"])
    sys.meta_path.insert(0, _Blocker(blocked))
    for name in [m for m in sys.modules if m.partition(".")[0] in blocked]:
        del sys.modules[name]
    started = time.perf_counter()
    import blackbox

    outcome: dict[str, Any] = {"status": "ok", "blocked": sorted(blocked)}
    try:
        model = blackbox.load(
            path,
            trusted_keys=options["trusted_keys"],
            allow_unsigned=options["allow_unsigned"],
            strict=options["strict"],
            oms_bundle=options.get("oms_bundle"),
        )
        model.self_test()
        if options.get("records") is not None:
            outcome["predictions"] = model.predict_batch(options["records"])
        outcome["leaked"] = sorted(m for m in sys.modules if m.partition(".")[0] in blocked)
    except blackbox.BlackboxError as exc:
        outcome.update(
            status=exc.code,
            error=type(exc).__name__,
            message=exc.message,
            exit_code=exc.exit_code,
            details=getattr(exc, "differences", None) or getattr(exc, "references", None) or [],
        )
    except Exception as exc:  # noqa: BLE001  the model's own code raised while loading or predicting its golden sample
        missing = _missing_module(exc)
        if missing is not None:
            from blackbox.containment.isolation import missing_module_advice

            outcome.update(
                status=blackbox.SelfContainmentError.code,
                error=blackbox.SelfContainmentError.__name__,
                message=missing_module_advice(missing, blocked),
                exit_code=blackbox.SelfContainmentError.exit_code,
                details=[missing],
            )
        else:
            outcome.update(
                status=blackbox.SelfTestError.code,
                error=type(exc).__name__,
                message=f"Loading the artifact and running its golden sample raised {type(exc).__name__}: {exc}",
                exit_code=blackbox.SelfTestError.exit_code,
                details=[],
            )
    outcome["seconds"] = round(time.perf_counter() - started, 4)
    print(json.dumps(outcome, default=str))
    return int(outcome.get("exit_code", 0))


def _missing_module(exc: BaseException) -> str | None:
    """The module a ModuleNotFoundError names, raised as ``exc`` or as its explicit cause (``raise ... from``).

    Not a mere ``__context__``: code that falls back when an optional import fails then fails otherwise.
    """
    seen = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, ModuleNotFoundError) and cause.name:
            return cause.name
        cause = cause.__cause__
    return None


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], json.loads(sys.stdin.read())))
