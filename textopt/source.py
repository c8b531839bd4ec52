"""The source of a traced function (files, notebooks, the REPL's cells) and trainable code as a Variable
(`CodeVariable`: the source whose edits are checked to still define the function)."""

import ast
import inspect
import re
import sys
import textwrap
from typing import Any, Callable

from .prompts import VALUE_TAGS
from .variable import Variable



# -- source --------------------------------------------------------------------------------------
def _ipython_cells() -> list[str]:
    ip_mod = sys.modules.get("IPython")
    if ip_mod is None:
        return []
    try:
        ip = ip_mod.get_ipython()
    except Exception:
        return []
    if ip is None:
        return []
    cells = ip.user_ns.get("In") or []
    return [c for c in cells if isinstance(c, str)]


def _def_in(text: str, name: str) -> tuple[str, int] | None:
    """The source of the last top-level-or-nested def `name` in `text`, and the line it starts on (1-based)."""
    try:
        tree = ast.parse(textwrap.dedent(text))
    except SyntaxError:
        return None
    found = None
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name:
            found = node
    if found is None:
        return None
    lines = textwrap.dedent(text).splitlines()
    return "\n".join(lines[found.lineno - 1 : found.end_lineno]), found.lineno


def find_source(fn: Callable[..., Any]) -> tuple[str, str, int] | None:
    """(source without decorators, filename, first line number of `def`), or None when it can't be found.

    inspect (which reads linecache: files, and notebook cells registered by IPython), then the IPython
    input history. A plain `python` REPL keeps no source, so there it is None.
    """
    code = getattr(fn, "__code__", None)
    filename = code.co_filename if code else "<unknown>"
    try:
        lines, start = inspect.getsourcelines(fn)
        found = _def_in("".join(lines), fn.__name__)
        if found is not None:
            return found[0], filename, start + found[1] - 1
    except (OSError, TypeError):
        pass
    for cell in reversed(_ipython_cells()):
        if f"def {fn.__name__}" in cell:
            found = _def_in(cell, fn.__name__)
            if found is not None:
                return found[0], "<ipython-history>", found[1]
    return None


def _signature_key(args: ast.arguments) -> tuple[Any, ...]:
    """Names and kinds of parameters, and how many have defaults (annotations may change)."""
    return (
        tuple(a.arg for a in args.posonlyargs),
        tuple(a.arg for a in args.args),
        args.vararg.arg if args.vararg else None,
        tuple(a.arg for a in args.kwonlyargs),
        args.kwarg.arg if args.kwarg else None,
        len(args.defaults),
        tuple(d is not None for d in args.kw_defaults),
    )


def strip_fences(text: str) -> str:
    """Code as LLMs like to send it (```python ... ```) -> the code."""
    t = text.strip()
    if t.startswith("```"):
        body = t.split("\n", 1)[1] if "\n" in t else ""
        if body.rstrip().endswith("```"):
            body = body.rstrip()[:-3]
        return body.strip("\n")
    return text


_FENCE = re.compile(r"```[^\n`]*\n(.*?)(?:```|\Z)", re.S)


def defines(code: str, name: str) -> bool:
    """True when `code` has a top-level `def name(` line (text only: nothing is parsed or run)."""
    return re.search(rf"^(?:async[ \t]+)?def[ \t]+{re.escape(name)}[ \t]*\(", code, re.M) is not None


def extract_code(text: str, entry_point: str | None = None) -> str:
    """The code in an LLM's reply: the first ``` block that defines `entry_point` (else the first block; an
    unclosed last fence counts, for a reply cut off), or the whole text when it has no fence."""
    blocks = [m.group(1) for m in _FENCE.finditer(text)]
    if not blocks:
        return text.strip("\n")
    if entry_point:
        for block in blocks:
            if defines(block, entry_point):
                return block.strip("\n").rstrip()
    return blocks[0].strip("\n").rstrip()


def code_in_reply(text: str, function_name: str) -> str:
    """The code a coder model meant in a reply: `extract_code` (the fenced block that defines
    `function_name`, out of the prose around it), out of a copied <value> tag block if any, then without a top-level `if __name__ == "__main__":` block
    or example calls such as `print(f(3))` after the code. Those never change what the function does, and a
    small model adds them often; a reply that does not parse is returned as it is, so the check can say why."""
    text = extract_code(text, function_name) if "```" in text else text
    text = _untagged(text)
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return text
    drop = [n for n in tree.body if _is_example(n)]
    if not drop or len(drop) == len(tree.body):
        return text
    lines = text.splitlines()
    gone = {i for n in drop for i in range(n.lineno - 1, (n.end_lineno or n.lineno))}
    return "\n".join(line for i, line in enumerate(lines) if i not in gone).rstrip()


#: A block on lines of its own inside one of the update request's value tags: the 1.5B wrote prose and then
#: `<value>` + the code with no fence, or the tag inside the fence (HumanEval/115 in workload (i)).
_TAG_BLOCK = re.compile(r"^<(" + "|".join(VALUE_TAGS) + r")>[ \t]*\n?(.*?)\n?[ \t]*</\1>[ \t]*$", re.S | re.M)


_OPEN_FIRST_LINE = re.compile(r"\A\s*<(" + "|".join(VALUE_TAGS) + r")>[ \t]*\n")


def _untagged(text: str) -> str:
    """The code inside the one value-tag block of `text`, else `text` (two such blocks: nothing is guessed).
    A first line that is only an opening value tag never closed is dropped: the 1.5B opens OptoPrime's
    `<variable>` above the whole program and never closes it (8 proposals of workload (i)'s 40 problems)."""
    first = _OPEN_FIRST_LINE.match(text)
    if first and f"</{first.group(1)}>" not in text:
        return text[first.end():].strip("\n")
    block = _TAG_BLOCK.search(text)
    if block is None or text.count(f"<{block.group(1)}>") != 1:
        return text
    return block.group(2).strip("\n")


def _is_example(node: ast.stmt) -> bool:
    """A top-level statement that only exercises the code: a `__main__` guard, a bare call (print(f(3))), or
    an assert."""
    if isinstance(node, ast.If):
        t = node.test
        return (isinstance(t, ast.Compare) and isinstance(t.left, ast.Name) and t.left.id == "__name__"
                and len(t.comparators) == 1 and isinstance(t.comparators[0], ast.Constant)
                and t.comparators[0].value == "__main__")
    if isinstance(node, ast.Expr):
        return isinstance(node.value, ast.Call)
    return isinstance(node, ast.Assert)


def _function_node(source: str, name: str) -> ast.FunctionDef | ast.AsyncFunctionDef:
    tree = ast.parse(source)
    defs = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == name]
    if not defs:
        raise ValueError(f"the code defines no top-level function named {name!r}")
    return defs[-1]


class CodeVariable(Variable):
    """The source code of a trainable traced function. `check(new)` says why a new version can't be used."""

    def __init__(self, source: str, *, function_name: str, is_async: bool, role: str, name: str) -> None:
        super().__init__(source, role=role, requires_grad=True, name=name)
        self.function_name = function_name
        self.is_async = is_async
        self._signature = _signature_key(_function_node(source, function_name).args)

    def check(self, new_source: str) -> str | None:
        """None when `new_source` may replace the code; else the reason it can't (never runs the code)."""
        if not isinstance(new_source, str) or not new_source.strip():
            return "the new code is empty"
        try:
            tree = ast.parse(new_source)
        except SyntaxError as exc:
            return f"the new code does not parse: {exc.msg} at line {exc.lineno}"
        for node in tree.body:
            ok = isinstance(node, (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Assign))
            ok = ok or (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant))
            if not ok:
                return (
                    f"the new code has a top-level {type(node).__name__} statement at line {node.lineno}; "
                    "send only the function definition (plus imports or helpers)"
                )
        try:
            node = _function_node(new_source, self.function_name)
        except ValueError as exc:
            return f"{exc}; keep the name {self.function_name!r}"
        if isinstance(node, ast.AsyncFunctionDef) != self.is_async:
            return f"{self.function_name!r} must stay {'async ' if self.is_async else ''}def"
        if _signature_key(node.args) != self._signature:
            return (
                f"the signature changed to ({ast.unparse(node.args)}); keep the parameters of {self.function_name!r} "
                "(names, kinds, defaults) exactly as they are"
            )
        return None

    def normalize(self, value: str) -> str:
        """A proposed version as a coder model writes it -> the code (see `code_in_reply`): optimizers call
        this before they check a proposal, so prose around the fence is not a syntax error."""
        return code_in_reply(value, self.function_name) if isinstance(value, str) else value

    def set_value(self, value: str) -> None:
        """Replace the code; a version that doesn't parse or changes name/signature is refused (ValueError)."""
        if isinstance(value, str):
            value = strip_fences(value)
        reason = self.check(value)
        if reason is not None:
            raise ValueError(f"new code for {self.name!r} rejected: {reason}")
        super().set_value(value)


