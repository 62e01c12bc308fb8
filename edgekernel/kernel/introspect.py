"""Tab completion and inspection answered from the board's own namespace."""
from __future__ import annotations

import ast
import keyword
import re
from typing import Any

from ..device import BoardBusy, BoardSession, DeviceError, LinkError

# The dotted name that ends at the cursor: "machine.P" -> ("machine", "P").
_DOTTED_TAIL = re.compile(r"([A-Za-z_][\w]*(?:\.[A-Za-z_]\w*)*)?(\.?)([A-Za-z_]\w*)?$")
_NAME_AT = re.compile(r"[A-Za-z_][\w.]*")
_HIDDEN = ("_ek",)


def _board_names(board: BoardSession, obj: str | None, prefix: str) -> list[str]:
    """Names on the board starting with prefix: attributes of obj, or globals + builtins."""
    if obj:
        # An expression among the user's names (it names one of them) that binds none.
        result = board.exec(f"_ek.val([n for n in dir({obj}) if n.startswith({prefix!r})])", timeout=5)
    else:
        # In a namespace of its own (the user's globals are _ek.g); builtins may be missing on
        # small ports: globals alone then.
        code = ("try:\n import builtins\n b=dir(builtins)\nexcept ImportError:\n b=[]\n"
                f"_ek.val([n for n in list(_ek.g)+b if n.startswith({prefix!r})])\n")
        result = board.exec(code, timeout=5, scratch=True)
    if result.error or result.value is None:
        return []
    try:
        names = ast.literal_eval(result.value)
    except (ValueError, SyntaxError):
        return []
    return sorted({n for n in names if not n.startswith(_HIDDEN)})


def complete(board: BoardSession | None, code: str, cursor_pos: int) -> dict[str, Any]:
    before = code[:cursor_pos]
    line = before.rsplit("\n", 1)[-1]
    m = _DOTTED_TAIL.search(line)
    obj, dot, prefix = (m.group(1), m.group(2), m.group(3) or "") if m else (None, "", "")
    if not dot and obj:
        # "mach" -> complete the last name itself; "a.b" without a trailing part handled above
        parts = obj.rsplit(".", 1)
        obj, prefix = (parts[0], parts[1] + prefix) if len(parts) == 2 else (None, parts[0] + prefix)
    matches: list[str] = []
    if board is not None and not board.closed:
        try:
            matches = _board_names(board, obj, prefix)
        except (BoardBusy, DeviceError, LinkError):
            matches = []  # the board is running a cell: no answer rather than a wait
    if not obj:
        matches = sorted(set(matches) | {k for k in keyword.kwlist if k.startswith(prefix)})
    return {"status": "ok", "matches": matches, "cursor_start": cursor_pos - len(prefix),
            "cursor_end": cursor_pos, "metadata": {}}


class SignatureIndex:
    """Signatures of functions and classes defined in cells this session.

    MicroPython keeps no argument names at run time, so the host remembers
    them from the cells' source.
    """

    def __init__(self) -> None:
        self._signatures: dict[str, str] = {}

    def learn(self, code: str) -> None:
        try:
            tree = ast.parse(code)
        except (SyntaxError, ValueError):
            return
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                self._signatures[node.name] = f"{node.name}({ast.unparse(node.args)})"
            elif isinstance(node, ast.ClassDef):
                init = next((n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None)
                args = ast.unparse(init.args).split(", ", 1)[1:] if init else []
                self._signatures[node.name] = f"{node.name}({args[0] if args else ''})"

    def get(self, name: str) -> str | None:
        return self._signatures.get(name)


def name_at(code: str, cursor_pos: int) -> str | None:
    """The dotted name under (or just before) the cursor."""
    for m in _NAME_AT.finditer(code):
        if m.start() <= cursor_pos <= m.end():
            return m.group().rstrip(".")
    # shift-tab right after "f(" inspects f
    head = code[:cursor_pos].rstrip()
    if head.endswith("("):
        m = re.search(r"[A-Za-z_][\w.]*$", head[:-1])
        return m.group() if m else None
    return None


def inspect(board: BoardSession | None, code: str, cursor_pos: int, signatures: SignatureIndex) -> dict[str, Any]:
    name = name_at(code, cursor_pos)
    empty = {"status": "ok", "found": False, "data": {}, "metadata": {}}
    if not name or board is None or board.closed:
        return empty
    try:
        info = board.eval(f"(repr({name})[:2000], str(type({name})), getattr({name}, '__doc__', None))", timeout=5)
    except (BoardBusy, DeviceError, LinkError):
        return empty
    if not info:
        return empty
    text_repr, type_name, doc = info
    lines = [f"Type:      {type_name.replace('<class ', '').rstrip('>').strip(chr(39))}"]
    signature = signatures.get(name.rsplit(".", 1)[-1])
    if signature:
        lines.append(f"Signature: {signature}")
    lines.append(f"Repr:      {text_repr}")
    if doc:
        lines.append(f"Docstring: {doc}")
    return {"status": "ok", "found": True, "data": {"text/plain": "\n".join(lines)}, "metadata": {}}
