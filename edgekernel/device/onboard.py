"""Code that edgekernel installs on the board, and how cells are wrapped for it.

Why a helper on the board at all: the raw REPL separates a program's output
from its traceback only by two \\x04 bytes, so a program that prints \\x04
desynchronises any host that trusts them. Instead each cell runs inside
``_ekr(marker, source)`` (``_ek.run``), which reports the outcome after *marker*, a
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
# The marker is the lead byte and three letters that encode a 5-digit number.
# The number is what travels to the board (as an int: MicroPython interns string
# literals of up to 10 characters for good, so a fresh string marker per cell
# would leak heap on the board at every cell); the board spells it in base 62
# (characters @..}, never ">") so each marker costs 4 bytes on the wire, not 6.
# With %c, not chr(): chr() interns each character it makes.
MARKER_LEN = 4
MARKER_MIN, MARKER_MAX = 10000, 99999
_MARKER_BASE, _MARKER_ZERO = 62, 64
NO_STDIN_SUFFIX = "X"
# The helper's words for a cell that lost bytes on the way (checked by length before it runs).
DAMAGED_CELL = "the cell arrived damaged"

HELPER_SOURCE = """\
try:
    _ek0 = _ek.input
except NameError:
    _ek0 = input
class _ek:
    m = ''
    def k(n):
        return '\x1e%c%c%c' % (64 + n % 62, 64 + n // 62 % 62, 64 + n // 3844)
    def run(n, s, k=-1):
        m = _ek.m = _ek.k(n)
        try:
            if k >= 0 and len(s) != k:
                raise OSError('edgekernel: the cell arrived damaged (%d of %d characters): the link drops bytes' % (len(s), k))
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
    o = out
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
_ekr = _ek.run
"""

# Frames of the helper itself, hidden from users' tracebacks, and the file name
# exec() gives a cell, shown to users as "<cell>".
HELPER_FILE = "<stdin>"
EXEC_FILE = "<string>"

def marker_for(number: int) -> bytes:
    """The marker the board prints for `number` (the helper's _ek.k)."""
    return MARKER_LEAD + bytes((_MARKER_ZERO + number % _MARKER_BASE, _MARKER_ZERO + number // _MARKER_BASE % _MARKER_BASE,
                                _MARKER_ZERO + number // _MARKER_BASE ** 2))


def marker_number(marker: bytes) -> int:
    return sum((b - _MARKER_ZERO) * _MARKER_BASE ** i for i, b in enumerate(marker[1:]))


def new_marker() -> bytes:
    return marker_for(secrets.randbelow(MARKER_MAX - MARKER_MIN + 1) + MARKER_MIN)


def _short_literal_padding(source: str) -> str:
    # Source literals of <= 10 characters would be interned (a leak per new
    # short cell); trailing spaces keep them longer and change nothing.
    return source.ljust(11)


_LINES = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+$")


def show_trailing_expression(source: str, call: str = "_ek.out") -> str:
    """Rewrite a cell so that its last statement, if an expression, reports its value.

    ``x = 1\\n2 + 3`` becomes ``x = 1\\n_ek.out(2 + 3)``. Text is inserted in place,
    so line numbers stay those of the cell. Code CPython cannot parse is left
    alone: the board reports its own SyntaxError. `call` names the reporting
    function (the serial helper also answers to the shorter ``_ek.o``).
    """
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return source
    if not tree.body or not isinstance(tree.body[-1], ast.Expr):
        return source
    node = tree.body[-1]
    opening = call.encode() + b"("
    assert node.end_lineno is not None and node.end_col_offset is not None
    # Python counts lines at \n, \r\n and \r only (str.splitlines also breaks at \f, \x1c, \u2028...).
    lines = _LINES.findall(source)
    # ast offsets are UTF-8 byte offsets within a line.
    first = lines[node.lineno - 1].encode()
    last = lines[node.end_lineno - 1].encode() if node.end_lineno != node.lineno else first
    if node.end_lineno == node.lineno:
        line = first[: node.col_offset] + opening + first[node.col_offset: node.end_col_offset] + b")" + first[node.end_col_offset:]
        lines[node.lineno - 1] = line.decode()
    else:
        lines[node.lineno - 1] = (first[: node.col_offset] + opening + first[node.col_offset:]).decode()
        lines[node.end_lineno - 1] = (last[: node.end_col_offset] + b")" + last[node.end_col_offset:]).decode()
    return "".join(lines)


def framed_call(marker: bytes, source: str, check_length: bool = True) -> bytes:
    """The one-line program that runs `source` inside the helper. With
    check_length (links without flow control), a cell damaged in transit is
    refused instead of run; raw-paste's flow control makes it unnecessary."""
    source = _short_literal_padding(source)
    length = f",{len(source)}" if check_length else ""
    # _ekr is _ek.run under a shorter name (3 bytes fewer on every cell). Not _ek() with
    # the run in __init__: constructing an instance costs C stack the micro:bit lacks.
    return f"_ekr({marker_number(marker)},{source!r}{length})".encode()


def set_marker_call(marker: bytes) -> bytes:
    return f"_ek.m=_ek.k({marker_number(marker)})".encode()


# The serial helper's name for out(): every byte of a cell's call costs 87 us at 115200 baud.
SHOW_CALL = "_ek.o"

STREAM_TRAILER = "\n_ek.done()\n"
