"""What crosses the sandbox boundary: a job (the code, what it may see, its arguments) pickled in, and a
result read back with a restricted unpickler that only builds plain values, under size and depth caps."""
from __future__ import annotations

import ast
import builtins
import collections
import fractions
import functools
import io
import pickle
import re
import subprocess
import symtable
import sys
import threading
import time
import types
from typing import Any, Callable

from .common import OPT_OUT, IsolationError


# -- what crosses the boundary -------------------------------------------------------------------
#: Most elements a result may hold, counting a shared part as often as it is reached (what printing it costs),
#: and elements copied by constructors while it is unpickled.
MAX_RESULT_ITEMS = 10_000_000
#: Deepest nesting of containers in a result (printing a deeper one would overflow the stack).
MAX_RESULT_DEPTH = 200


_budget = threading.local()  # elements copied by the guarded constructors during the current unpickling


def _charge(n: int) -> None:
    _budget.used = getattr(_budget, "used", 0) + n
    if _budget.used > MAX_RESULT_ITEMS:
        raise pickle.UnpicklingError(f"the result builds over {MAX_RESULT_ITEMS:,} elements, the cap of a result "
                                     "of isolated code (textopt.sandbox.MAX_RESULT_ITEMS)")


_CONCRETE = (str, bytes, bytearray, list, tuple, dict, set, frozenset, collections.deque)


def _size_refused(what: str, args: tuple) -> pickle.UnpicklingError:
    kinds = ", ".join(type(a).__name__ for a in args)
    return pickle.UnpicklingError(f"{what}({kinds}) is refused in a result: a constructor may only copy values that "
                                  "are already built (no size argument, no lazy iterable)")


def _copying(base: type, name: str, extra: int = 0) -> type:
    """`base` for the unpickler: built from a container already there (its length is charged), never from a
    size or a lazy iterable. Instances are plain `base` objects (__new__ returns one)."""
    def __new__(cls: type, *args: Any) -> Any:
        if len(args) > 1 + extra or (args and not isinstance(args[0], _CONCRETE)):
            raise _size_refused(name, args)
        if args:
            _charge(len(args[0]))
        return base(*args)
    return type(f"_{name}", (base,), {"__new__": __new__, "__module__": __name__, "_real": base})


def _scalar(base: type, name: str, allowed: tuple) -> type:
    """`base` for the unpickler, from text or numbers only (bytes(600 * 2**20) and str(container) are refused)."""
    def __new__(cls: type, *args: Any) -> Any:
        if len(args) > 3 or not all(isinstance(a, allowed) for a in args) or (
                base in (bytes, bytearray) and args and isinstance(args[0], int)):
            raise _size_refused(name, args)
        return base(*args)
    return type(f"_{name}", (base,), {"__new__": __new__, "__module__": __name__, "_real": base})


def _defaultdict(factory: Any = None, *args: Any) -> Any:
    if len(args) > 1 or (args and not isinstance(args[0], _CONCRETE)):
        raise _size_refused("defaultdict", args)
    if args:
        _charge(len(args[0]))
    return collections.defaultdict(getattr(factory, "_real", factory), *args)


def _fraction(*args: Any) -> Any:
    if len(args) > 2 or not all(isinstance(a, int) or (isinstance(a, str) and len(a) < 10_000 and not re.search(r"[eE]", a))
                                for a in args):
        raise _size_refused("Fraction", args)  # Fraction("1e999999999") would compute 10**999999999
    return fractions.Fraction(*args)


_TEXT = (str, bytes, bytearray, int, float, bool, type(None))
#: The constructors a result may call, by the name pickle gives them ("builtins." left out).
_GUARDS: dict[str, Any] = {
    "list": _copying(list, "list"), "tuple": _copying(tuple, "tuple"), "set": _copying(set, "set"),
    "frozenset": _copying(frozenset, "frozenset"), "dict": _copying(dict, "dict"),
    "bytearray": _scalar(bytearray, "bytearray", (bytes, bytearray, str)),
    "bytes": _scalar(bytes, "bytes", (bytes, bytearray, str)),
    "str": _scalar(str, "str", _TEXT), "int": _scalar(int, "int", _TEXT[:-1]),
    "collections.deque": _copying(collections.deque, "deque", extra=1),
    "collections.OrderedDict": _copying(collections.OrderedDict, "OrderedDict"),
    "collections.Counter": _copying(collections.Counter, "Counter"),
    "collections.defaultdict": _defaultdict, "fractions.Fraction": _fraction,
}


_SAFE_BUILTINS = {"float", "complex", "bool", "slice"}  # plus the guarded constructors of _GUARDS
_SAFE_GLOBALS = {
    ("datetime", "date"), ("datetime", "datetime"), ("datetime", "time"), ("datetime", "timedelta"),
    ("datetime", "timezone"), ("decimal", "Decimal"),
}


class _ResultUnpickler(pickle.Unpickler):
    """Builds plain values, and classes defined in `module` (the function's own); anything else is refused.
    Constructors only copy values already built (bytearray(600 MiB) or list(range(10**9)) are refused)
    and what they copy counts toward MAX_RESULT_ITEMS."""

    def __init__(self, data: bytes, module: str | None) -> None:
        super().__init__(io.BytesIO(data))
        self.module = module

    def find_class(self, module: str, name: str) -> Any:
        key = name if module == "builtins" else f"{module}.{name}"
        if key in _GUARDS:
            return _GUARDS[key]
        if module == "builtins" and (name in _SAFE_BUILTINS or (
                isinstance(getattr(builtins, name, None), type) and issubclass(getattr(builtins, name), Exception))):
            return getattr(builtins, name)
        if (module, name) in _SAFE_GLOBALS:
            return getattr(sys.modules.get(module) or __import__(module), name)
        mod = sys.modules.get(module)
        obj = getattr(mod, name, None) if mod is not None and module == self.module and "." not in name else None
        if isinstance(obj, type) and obj.__module__ == module:
            return obj
        raise pickle.UnpicklingError(f"{module}.{name} is not a plain value or a class of {self.module or 'the function'}'s module")


_LEAVES = frozenset({str, bytes, bytearray, int, float, bool, complex, type(None), slice})


def _parts(obj: Any) -> list[Any] | None:
    """What a container holds (dict: keys and values), None for a leaf."""
    if type(obj) in _LEAVES:
        return None
    if isinstance(obj, dict):
        return [*obj.keys(), *obj.values()]
    if isinstance(obj, (list, tuple, set, frozenset, collections.deque)):
        return list(obj)
    if isinstance(obj, BaseException):
        return list(obj.args)
    state = getattr(obj, "__dict__", None)
    return list(state.values()) if isinstance(state, dict) else None


def check_size(obj: Any, *, max_items: int = MAX_RESULT_ITEMS, max_depth: int = MAX_RESULT_DEPTH) -> str | None:
    """Why `obj` is too big to take in (None when it isn't): more than `max_items` elements counting a shared
    part as often as it is reached (a few bytes of pickle can share a list 2**100 times), or nested deeper than
    `max_depth`. Linear in the distinct objects; a cycle counts once."""
    sizes: dict[int, int] = {}
    depths: dict[int, int] = {}
    parts: dict[int, tuple[list[Any], int]] = {}
    open_: set[int] = set()
    stack = [obj]
    while stack:
        top = stack[-1]
        i = id(top)
        if i in sizes:
            stack.pop()
            continue
        if i not in parts:
            inner = _parts(top)
            if inner is None:
                sizes[i], depths[i] = 1, 0
                stack.pop()
                continue
            kids = [k for k in inner if type(k) not in _LEAVES]
            parts[i] = (kids, len(inner) - len(kids))
        kids, leaves = parts[i]
        if i not in open_:
            open_.add(i)
            pending = [k for k in kids if id(k) not in sizes and id(k) not in open_]
            if pending:
                stack.extend(pending)
                continue
        size = 1 + leaves + sum(sizes.get(id(k), 1) for k in kids)  # a kid still open is a cycle: counted once
        depth = 1 + max((depths.get(id(k), 0) for k in kids), default=0)
        if size > max_items:
            return (f"it has over {max_items:,} elements (counting a shared part as often as it is reached), the cap "
                    "of a result of isolated code (textopt.sandbox.MAX_RESULT_ITEMS)")
        if depth > max_depth:
            return (f"it is nested over {max_depth} levels deep, the cap of a result of isolated code "
                    "(textopt.sandbox.MAX_RESULT_DEPTH)")
        sizes[i], depths[i] = size, depth
        open_.discard(i)
        del parts[i]
        stack.pop()
    return None


def _load(data: bytes, module: str | None) -> Any:
    _budget.used = 0
    value = _ResultUnpickler(data, module).load()
    problem = check_size(value)
    if problem is not None:
        raise pickle.UnpicklingError(problem)
    return value


@functools.lru_cache(maxsize=64)
def _names(source: str, filename: str) -> tuple[frozenset[str], frozenset[str]]:
    """(global names the code reads, names its top level binds). Attribute names are not globals: in
    `subprocess.run(...)` only `subprocess` is. Parses and builds symbol tables; never runs anything."""
    tree = ast.parse(source)
    bound: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            bound.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
    used: set[str] = set()
    tables = [symtable.symtable(source, filename, "exec")]
    while tables:
        table = tables.pop()
        top = table.get_type() == "module"
        for sym in table.get_symbols():
            if sym.is_referenced() and (top or sym.is_global()):
                used.add(sym.get_name())
        tables.extend(table.get_children())
    return frozenset(used), frozenset(bound)


def importable(module: str | None) -> bool:
    """True when the worker can import `module` by name (a module loaded from a file, not __main__)."""
    mod = sys.modules.get(module or "")
    return (module not in (None, "__main__", "__mp_main__") and mod is not None
            and getattr(mod, "__spec__", None) is not None and bool(getattr(mod, "__file__", None)))


def _ship(fn_name: str, name: str, value: Any, kind: str) -> tuple[str, Any]:
    if isinstance(value, types.ModuleType):
        if value.__name__ in ("__main__", "__mp_main__"):
            raise IsolationError(f"{fn_name} can't run isolated: the {kind} {name!r} is the __main__ module; {OPT_OUT}")
        return ("module", value.__name__)
    if getattr(value, "__module__", None) == "__main__" and isinstance(value, (type, types.FunctionType)):
        raise IsolationError(
            f"{fn_name} can't run isolated: the {kind} {name!r} is defined in __main__ (your script or notebook), which "
            f"the worker process can't import; move it into a module, pass it as an argument, or {OPT_OUT}")
    try:
        return ("pickle", pickle.dumps(value))
    except Exception as exc:
        raise IsolationError(
            f"{fn_name} can't run isolated: the {kind} {name!r} (a {type(value).__name__}) can't be sent to the worker "
            f"process ({type(exc).__name__}: {exc}); pass it as an argument, or {OPT_OUT}") from None


def build_job(fn: Callable[..., Any], *, name: str, source: str, is_async: bool, args: tuple, kwargs: dict) -> dict[str, Any]:
    """Everything the worker needs to compile `source` and call its function `fn.__name__(*args, **kwargs)`."""
    filename = f"<textopt-code:{name}>"
    used, bound = _names(source, filename)
    closure: dict[str, Any] = {}
    for var, cell in zip(fn.__code__.co_freevars, fn.__closure__ or ()):
        try:
            closure[var] = cell.cell_contents
        except ValueError:  # an empty cell
            pass
    module = fn.__module__ if importable(fn.__module__) else None
    values: dict[str, tuple[str, Any]] = {}
    for var in sorted(used - bound):
        if var in closure:
            values[var] = _ship(name, var, closure[var], "closure variable")
        elif module is None and var in fn.__globals__ and not var.startswith("__"):
            values[var] = _ship(name, var, fn.__globals__[var], "global")
    try:
        payload = pickle.dumps((args, kwargs))
    except Exception as exc:
        raise IsolationError(f"the arguments of {name} can't be sent to the isolated worker "
                             f"({type(exc).__name__}: {exc}); pass plain values, or {OPT_OUT}") from None
    return {"module": module, "source": source, "fn_name": fn.__name__, "filename": filename, "values": values,
            "payload": payload, "is_async": is_async, "name": name}


