"""What a pickle will import, read statically from its opcodes; nothing is executed.

Every class or function a pickle needs at load time appears in its opcode stream
as a GLOBAL (module and name inline), an INST, or a STACK_GLOBAL (module and name
taken from the stack, often fetched back from the memo). A small symbolic stack,
driven by pickletools' own opcode descriptions, recovers both names for
STACK_GLOBAL. Protocols 0 to 5 are covered, including BYTEARRAY8 and
NEXT_BUFFER. This is what the save-time self-containment check, the manifest's
requirements and ``blackbox inspect --imports`` are built on.
"""

from __future__ import annotations

import pickletools
from typing import NamedTuple

from .errors import ArtifactError


class Global(NamedTuple):
    """One global a pickle imports: ``module`` and the dotted ``name`` inside it.

    ``name`` is empty when the pickle imports the module object itself.
    """

    module: str
    name: str

    def __str__(self) -> str:
        return f"{self.module}.{self.name}" if self.name else self.module

    @property
    def key(self) -> str:
        """``module:name`` (or ``module``), unambiguous where a dotted name is not."""
        return f"{self.module}:{self.name}" if self.name else self.module


_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "STRING", "BINSTRING", "SHORT_BINSTRING"}
_MEMO_GETS = {"GET", "BINGET", "LONG_BINGET"}
_MEMO_PUTS = {"PUT", "BINPUT", "LONG_BINPUT"}
_OTHER = object()  # any stack value that is not a string, a global or a tuple of those
_TUPLES = {"EMPTY_TUPLE": 0, "TUPLE1": 1, "TUPLE2": 2, "TUPLE3": 3}
# Callables that import a module named by their first argument: serializers
# pickle a reference to a module object this way, not with a GLOBAL.
_MODULE_IMPORTERS = {
    Global("cloudpickle.cloudpickle", "subimport"),
    Global("dill._dill", "_import_module"),
    Global("importlib", "import_module"),
    Global("builtins", "__import__"),
}


def pickle_globals(payload: bytes) -> list[Global]:
    """Return the globals ``payload`` imports when unpickled, in stream order, without duplicates."""
    found: dict[Global, None] = {}
    stack: list[object] = []
    marks: list[int] = []
    memo: dict[int, object] = {}
    try:
        for op, arg, _ in pickletools.genops(payload):
            name = op.name
            if name in _STRING_OPS:
                stack.append(arg.decode("latin-1") if isinstance(arg, bytes) else arg)
            elif name in _MEMO_GETS:
                stack.append(memo.get(arg, _OTHER))
            elif name in _MEMO_PUTS:
                memo[arg] = stack[-1]
            elif name == "MEMOIZE":
                memo[len(memo)] = stack[-1]
            elif name == "MARK":
                marks.append(len(stack))
            elif name in ("GLOBAL", "INST"):
                module, _, qualname = arg.partition(" ")
                found[Global(module, qualname)] = None
                _apply(op, stack, marks)
                if name == "GLOBAL":
                    stack[-1] = Global(module, qualname)
            elif name == "STACK_GLOBAL":
                qualname, module = stack.pop(), stack.pop()
                if not (isinstance(module, str) and isinstance(qualname, str)):
                    raise ValueError("STACK_GLOBAL operands are not strings")
                found[Global(module, qualname)] = None
                stack.append(Global(module, qualname))
            elif name in _TUPLES or name == "TUPLE":
                start = marks.pop() if name == "TUPLE" else len(stack) - _TUPLES[name]
                if start < 0:
                    raise IndexError(f"{name} pops more than the stack holds")
                items = tuple(stack[start:])
                del stack[start:]
                stack.append(items)
            elif name == "REDUCE":
                args, func = stack.pop(), stack.pop()
                if func in _MODULE_IMPORTERS and isinstance(args, tuple) and args and isinstance(args[0], str):
                    found[Global(args[0], "")] = None
                stack.append(_OTHER)
            elif name in ("EXT1", "EXT2", "EXT4"):
                # copyreg's extension registry: a global named by a number we cannot check.
                raise ValueError(f"{name} (copyreg extension code {arg}) cannot be resolved statically")
            else:
                _apply(op, stack, marks)
    except (ValueError, IndexError, KeyError) as exc:
        raise ArtifactError(f"Payload is not a pickle that can be read statically: {exc}.") from None
    return list(found)


def _apply(op: pickletools.OpcodeInfo, stack: list[object], marks: list[int]) -> None:
    """Pop and push as ``op``'s descriptor says, keeping only the stack's shape."""
    before = op.stack_before
    if pickletools.markobject in before:
        below_mark = before.index(pickletools.markobject)
        del stack[marks.pop() :]
        pops = below_mark
    else:
        pops = len(before)
    if pops:
        if pops > len(stack):
            raise IndexError(f"{op.name} pops more than the stack holds")
        del stack[-pops:]
    stack.extend(_OTHER for _ in op.stack_after)
