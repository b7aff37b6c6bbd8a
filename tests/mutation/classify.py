"""Whether a mutant changes logic or only text (a message, a docstring, log text): judged by its diff."""

from __future__ import annotations

import ast
import textwrap
from collections.abc import Iterator

# Calls whose string arguments are messages for people: logging and warnings.
_LOG_OBJECTS = {"log", "logger", "logging", "LOG", "warnings"}


def is_text_only(original: str, mutant: str) -> bool:
    """True when every difference between the two function sources is inside a string that only people
    read: a docstring, an f-string's literal text, an exception's message (``raise X(...)``, ``XError(...)``)
    or a log or warning call (there, any change to the arguments). A changed string anywhere else (a
    dict key, a compared value, a regex) is logic."""
    a, b = (ast.parse(textwrap.dedent(src)).body[0] for src in (original, mutant))
    differences = list(_differences(a, b, ()))
    return bool(differences) and all(_in_text(path, x, y) for path, x, y in differences)


Difference = tuple[tuple[ast.AST, ...], object, object]


def _differences(a: object, b: object, path: tuple[ast.AST, ...]) -> Iterator[Difference]:
    """The smallest differing pairs of the two trees, each with its ancestors in ``a``."""
    if type(a) is not type(b):
        yield path, a, b
    elif isinstance(a, ast.AST) and isinstance(b, ast.AST):
        for field in a._fields:
            if isinstance(a, (ast.FunctionDef, ast.AsyncFunctionDef)) and field == "name":
                continue  # mutmut renames the copies it compares
            yield from _differences(getattr(a, field), getattr(b, field), (*path, a))
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            yield path, a, b
        else:
            for x, y in zip(a, b, strict=True):
                yield from _differences(x, y, path)
    elif a != b:
        yield path, a, b


def _in_text(path: tuple[ast.AST, ...], a: object, b: object) -> bool:
    if any(isinstance(node, ast.Call) and _is_log_call(node) and node.func not in path for node in path):
        return True  # anything in a log call's arguments: only the log line changes (logging never raises)
    if not (path and isinstance(path[-1], ast.Constant) and isinstance(a, str) and isinstance(b, str)):
        return False
    if len(path) >= 2 and isinstance(path[-2], ast.JoinedStr):
        return True  # the literal text of an f-string: a formatted message, never a key
    if len(path) >= 3 and isinstance(path[-2], ast.Expr) and path[-2] is _first_statement(path[-3]):
        return True  # a docstring
    return any(
        isinstance(ancestor, ast.Raise) or (isinstance(ancestor, ast.Call) and _is_message_call(ancestor))
        for ancestor in path
    )


def _first_statement(node: ast.AST) -> ast.AST | None:
    body = getattr(node, "body", None)
    return body[0] if isinstance(body, list) and body else None


def _is_log_call(call: ast.Call) -> bool:
    func = call.func
    return (
        isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id in _LOG_OBJECTS
    )


def _is_message_call(call: ast.Call) -> bool:
    """A log or warning call, or an exception built (``SomethingError(...)``): its strings are messages."""
    if _is_log_call(call):
        return True
    func = call.func
    name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
    return name.endswith(("Error", "Exception", "Warning"))
