"""Code that edgekernel installs on the board, and how cells are wrapped for it.

Why a helper on the board at all: the raw REPL separates a program's output
from its traceback only by two \\x04 bytes, so a program that prints \\x04
desynchronises any host that trusts them. Instead each cell runs inside
``_ek.run(marker, source)``, which reports the outcome after *marker*, a
random token chosen per execution that the program cannot guess:

    <output> M R <repr of trailing expression>   (only if there is one)
             M I <prompt> M W <echo of the typed line> M i   (input())
             M E <traceback>                     (only if it raised)
             M D                                 (always, last)

followed by the raw REPL's own ``\\x04\\x04>``. Every marker is the same
fixed-length token plus one letter, so the host needs no other framing.

The helper is written for the oldest firmware we meet (MicroPython 1.9.2 on
the micro:bit: no ``compile``, no ``sys.stdout``) and kept small for 16 KB
of RAM.
"""
from __future__ import annotations

import ast
import re
import secrets

MARKER_LEAD = b"\x1e"
MARKER_LEN = 4  # lead byte + 3 random letters: ~185,000 markers, and few bytes on a 115200-baud wire
NO_STDIN_SUFFIX = "X"

HELPER_SOURCE = """\
try:
    _ek0 = _ek.input
except NameError:
    _ek0 = input
class _ek:
    m = ''
    def run(m, s):
        _ek.m = m
        try:
            exec(s, _ek.g)
        except BaseException as e:
            if isinstance(e, SystemExit):
                print(m + 'D', end='')
                raise
            print(m + 'E', end='')
            _ek.sys.print_exception(e)
        print(m + 'D', end='')
    def out(v):
        if v is not None:
            _ek.g['_'] = v
            _ek.val(v)
    def val(v):
        print(_ek.m + 'R' + repr(v), end='')
    def inp(p=''):
        m = _ek.m
        print(m + 'I' + str(p) + m + 'W', end='')
        r = _ek.input()
        print(m + 'i', end='')
        if r == m[1:] + 'X':
            raise OSError('input() needs a front end that allows stdin')
        return r
    def done():
        print(_ek.m + 'D', end='')
_ek.g = globals()
_ek.input = _ek0
del _ek0
import sys
_ek.sys = sys
del sys
input = _ek.inp
"""

# Frames of the helper itself, hidden from users' tracebacks, and the file name
# exec() gives a cell, shown to users as "<cell>".
HELPER_FILE = "<stdin>"
EXEC_FILE = "<string>"

# The marker's alphabet avoids anything a REPL treats specially.
_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789"


def new_marker() -> bytes:
    return MARKER_LEAD + "".join(secrets.choice(_ALPHABET) for _ in range(MARKER_LEN - 1)).encode()


_LINES = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+$")


def show_trailing_expression(source: str) -> str:
    """Rewrite a cell so that its last statement, if an expression, reports its value.

    ``x = 1\\n2 + 3`` becomes ``x = 1\\n_ek.out(2 + 3)``. Text is inserted in place,
    so line numbers stay those of the cell. Code CPython cannot parse is left
    alone: the board reports its own SyntaxError.
    """
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return source
    if not tree.body or not isinstance(tree.body[-1], ast.Expr):
        return source
    node = tree.body[-1]
    assert node.end_lineno is not None and node.end_col_offset is not None
    # Python counts lines at \n, \r\n and \r only (str.splitlines also breaks at \f, \x1c, \u2028...).
    lines = _LINES.findall(source)
    # ast offsets are UTF-8 byte offsets within a line.
    first = lines[node.lineno - 1].encode()
    last = lines[node.end_lineno - 1].encode() if node.end_lineno != node.lineno else first
    if node.end_lineno == node.lineno:
        line = first[: node.col_offset] + b"_ek.out(" + first[node.col_offset: node.end_col_offset] + b")" + first[node.end_col_offset:]
        lines[node.lineno - 1] = line.decode()
    else:
        lines[node.lineno - 1] = (first[: node.col_offset] + b"_ek.out(" + first[node.col_offset:]).decode()
        lines[node.end_lineno - 1] = (last[: node.end_col_offset] + b")" + last[node.end_col_offset:]).decode()
    return "".join(lines)


def framed_call(marker: bytes, source: str) -> bytes:
    """The one-line program that runs `source` inside the helper."""
    return f"_ek.run({marker.decode()!r},{source!r})".encode()


def set_marker_call(marker: bytes) -> bytes:
    return f"_ek.m={marker.decode()!r}".encode()


STREAM_TRAILER = "\n_ek.done()\n"
