"""What a pickle will import, read statically from its opcodes; nothing is executed.

Every class or function a pickle needs at load time appears in its opcode stream
as a GLOBAL (module and name inline), an INST, or a STACK_GLOBAL (module and name
taken from the stack, often fetched back from the memo). A small symbolic stack,
driven by pickletools' own opcode descriptions, recovers both names for
STACK_GLOBAL. Protocols 0 to 5 are covered, including BYTEARRAY8 and
NEXT_BUFFER. This is what the save-time self-containment check, the manifest's
requirements and ``blackbox inspect --imports`` are built on.

A few callables turn data into references at load time: ``getattr`` and the
serializers' module importers (their argument names what they fetch), and
``setattr``/``delattr`` (they change what they are given). :func:`scan` follows
a call of one of them whose operands are constants of the stream
(``getattr(numpy, "dtype")`` is the global ``numpy:dtype``) and reports every
other use, as an operand computed at load time or the callable passed on as a
value, in ``Scan.dynamic``: what no static reading can follow.
"""

from __future__ import annotations

import pickletools
from typing import Any, NamedTuple

from ..errors import ArtifactError


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
_GETATTR = Global("builtins", "getattr")
_MUTATORS = {Global("builtins", "setattr"), Global("builtins", "delattr")}
_CALL_ONLY = _MODULE_IMPORTERS | _MUTATORS | {_GETATTR}
"""Callables a scan can vouch for only as the direct callee of a REDUCE with constant operands."""


class Scan(NamedTuple):
    """What a pickle imports, the attributes its constant getattr calls fetch, and what the scan cannot follow.

    ``attributes`` maps each to whether it may be absent (a getattr with a default, which is used then).
    """

    globals: list[Global]
    attributes: dict[Global, bool]
    dynamic: list[str]


def pickle_globals(payload: bytes) -> list[Global]:
    """Return the globals ``payload`` imports when unpickled, in stream order, without duplicates."""
    return scan(payload).globals


def scan(payload: bytes) -> Scan:
    """The globals ``payload`` imports (with constant getattr and module-importer calls followed), and what not."""
    found: dict[Global, None] = {}
    attributes: dict[Global, bool] = {}
    dynamic: dict[str, None] = {}
    stack: list[object] = []
    marks: list[int] = []
    memo: dict[int, object] = {}

    def consumed(values: object) -> None:  # a call-only callable used as anything but a callee escapes the scan
        for value in values if isinstance(values, list) or type(values) is tuple else (values,):
            if type(value) is tuple:  # a Global is a tuple too, and holds only strings
                consumed(value)
            elif value in _CALL_ONLY:
                dynamic[f"{value} passed on as a value"] = None

    arg: Any  # its type is the opcode's: an int for the memo, a str for GLOBAL, ...
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
                if name == "INST" and Global(module, qualname) in _CALL_ONLY:
                    dynamic[f"{Global(module, qualname)} called by INST"] = None
                consumed(_apply(op, stack, marks))
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
                named, result, problem, passed = _call(func, args)
                if problem:
                    dynamic[problem] = None
                if named is not None and not named.name:
                    found[named] = None
                elif named is not None:
                    attributes[named] = attributes.get(named, True) and named is not result
                consumed(passed)
                stack.append(result)
            elif name in ("EXT1", "EXT2", "EXT4"):
                # copyreg's extension registry: a global named by a number we cannot check.
                raise ValueError(f"{name} (copyreg extension code {arg}) cannot be resolved statically")
            else:
                consumed(_apply(op, stack, marks))
    except (ValueError, IndexError, KeyError) as exc:
        raise ArtifactError(f"Payload is not a pickle that can be read statically: {exc}.") from None
    return Scan(list(found), attributes, list(dynamic))


def _call(func: object, args: object) -> tuple[Global | None, object, str | None, object]:
    """A REDUCE of ``func(*args)``: the global it names (if any), what it leaves on the stack,
    the problem if the scan cannot follow it, and the values it hands to the callable."""
    if func not in _CALL_ONLY:
        return None, _OTHER, None, args
    operands: tuple[object, ...] = args if type(args) is tuple else ()
    if func in _MODULE_IMPORTERS:
        if operands and isinstance(operands[0], str):
            module = Global(operands[0], "")
            return module, module, None, args
        return None, _OTHER, f"{func} of a module name computed at load time", args
    if func == _GETATTR:
        target = operands[0] if operands else None
        attribute = operands[1] if len(operands) > 1 else None
        if len(operands) in (2, 3) and isinstance(target, Global) and isinstance(attribute, str):
            named = Global(target.module, f"{target.name}.{attribute}" if target.name else attribute)
            if len(operands) == 2:
                return named, named, None, args
            # dill's shims: getattr(module, name, fallback); the fallback is what the stack holds when
            # the attribute is absent, and is checked where it is used next
            return named, operands[2] if isinstance(operands[2], Global) else _OTHER, None, operands[:2]
        return None, _OTHER, f"{func} of an object or a name computed at load time", args
    if operands and isinstance(operands[0], Global):  # setattr/delattr of a module or a class it names
        return None, _OTHER, f"{func} changing {operands[0]}", args
    return None, _OTHER, None, args


def _apply(op: pickletools.OpcodeInfo, stack: list[object], marks: list[int]) -> list[object]:
    """Pop and push as ``op``'s descriptor says, keeping only the stack's shape; return what was popped."""
    before = op.stack_before
    popped: list[object] = []
    if pickletools.markobject in before:
        below_mark = before.index(pickletools.markobject)
        start = marks.pop()
        popped += stack[start:]
        del stack[start:]
        pops = below_mark
    else:
        pops = len(before)
    if pops:
        if pops > len(stack):
            raise IndexError(f"{op.name} pops more than the stack holds")
        popped += stack[-pops:]
        del stack[-pops:]
    stack.extend(_OTHER for _ in op.stack_after)
    return popped
