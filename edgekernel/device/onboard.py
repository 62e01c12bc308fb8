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

Names: a cell runs in the board's globals, which are the user's. Everything
edgekernel runs there for itself (file transfers, probes, completion) is a
*scratch* run, ``_ekr(marker, source, length, 1)``: the helper execs it in a
fresh dict that holds only ``_ek``, so no user name is added, removed or
rebound; what must outlive one such run is kept on ``_ek``. The helper itself
owns ``_ek`` and ``_ekr`` (and ``input`` where builtins cannot be overridden).
"""
from __future__ import annotations

import ast
import io
import re
import secrets
import tokenize
import zlib

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

# Everything the helper binds lives in the class body (its own namespace), so installing it
# adds `_ek` and `_ekr` to the user's globals and nothing else: no temporary names, and a user's
# own `sys` or `input` is never rebound or deleted. Its input() goes into builtins where the
# firmware lets builtins be overridden (a user's own global `input` then still wins); elsewhere
# into globals, unless the user has an `input` of their own there.
# inp() reads again after an EOFError: the host never types Ctrl-D, but the spare end byte it sends a
# board that went silent while taking a paced program (END_BYTE_NUDGE) may be waiting in stdin.
# A board that has this very helper already (a new session on a running board) keeps it: nothing
# is rebuilt, which on a 16 KB heap would leave it more fragmented at each connect. Reinstalled
# over an older helper, it keeps the original input() that one saved.
# u() ends every cell the way the friendly REPL's prompt does: a heap the cell left locked
# (micropython.heap_lock() with no heap_unlock()) is unlocked before the helper prints its own
# markers, which allocate (the raw REPL never unlocks, and then nothing could compile either). It
# must not allocate itself while locked: heap_lock() + heap_unlock() gives the depth where the
# firmware says (1.13+); before that it returns None, and while an allocation fails with memory free
# it is locked. Never unlock blindly: below zero the depth wraps and the heap stays locked for good.
_HELPER = """\
if getattr(globals().get('_ek'), 'v', 0) != VERSION:
    class _ek:
        v = VERSION
        try:
            input = _ek.input
        except (NameError, AttributeError):
            input = input
        m = ''
        def k(n):
            return '\x1e%c%c%c' % (64 + n % 62, 64 + n // 62 % 62, 64 + n // 3844)
        def run(n, s, k=-1, i=0):
            m = _ek.m = _ek.k(n)
            try:
                if k >= 0 and len(s) != k:
                    raise OSError('edgekernel: the cell arrived damaged (%d of %d characters): the link drops bytes' % (len(s), k))
                exec(s, {'_ek': _ek} if i else _ek.g)
            except BaseException as e:
                _ek.u()
                if isinstance(e, SystemExit):
                    print(m + 'D', end='')
                    raise
                print(m + 'E', end='')
                _ek.sys.print_exception(e)
            else:
                _ek.u()
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
            try:
                r = _ek.input()
            except EOFError:
                r = _ek.input()
            print(m + 'i', end='')
            if r == m[1:] + 'X':
                raise OSError('input() needs a front end that allows stdin')
            return r
        def done():
            _ek.u()
            print(_ek.m + 'D', end='')
        def u():
            try:
                h = _ek.h
                h.heap_lock()
                d = h.heap_unlock()
                while d is None:
                    try:
                        d = [0] and 0
                    except MemoryError:
                        if _ek.gc.mem_free() < 99:
                            break
                        h.heap_unlock()
                while d:
                    d = h.heap_unlock()
            except Exception:
                pass
        g = globals()
        import sys, gc, micropython as h
        try:
            __import__('builtins').input = inp
        except Exception:
            try:
                p = _ek.inp
            except (NameError, AttributeError):
                p = None
            if g.get('input', p) is p:
                g['input'] = inp
            del p
_ekr = _ek.run
"""
#: Which helper a board has (its _ek.v): a number from the helper's own text.
HELPER_VERSION = zlib.crc32(_HELPER.encode()) % 90000 + 10000
# Sent with one space per indentation level: the raw REPL holds the whole program in one buffer, and
# on a fragmented 16 KB heap every byte of it must be contiguous.
HELPER_SOURCE = re.sub(r"(?m)^(?:    )+", lambda m: " " * (len(m.group()) // 4),
                       _HELPER.replace("VERSION", str(HELPER_VERSION)))

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
    so line numbers stay those of the cell. As in IPython, a cell whose last token
    (comments aside) is ``;`` shows nothing. Code CPython cannot parse is left
    alone: the board reports its own SyntaxError. `call` names the reporting
    function (the serial helper also answers to the shorter ``_ek.o``).
    """
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return source
    if not tree.body or not isinstance(tree.body[-1], ast.Expr) or ends_with_semicolon(source):
        return source
    node = tree.body[-1]
    # A bare tuple (``1, 2`` or ``*a, 1``) would be several arguments: it gets parentheses of its
    # own. Anything else goes in as it is, so a plain cell costs no extra byte on the wire.
    wrap = isinstance(node.value, ast.Tuple)
    opening = call.encode() + (b"((" if wrap else b"(")
    closing = b"))" if wrap else b")"
    assert node.end_lineno is not None and node.end_col_offset is not None
    # Python counts lines at \n, \r\n and \r only (str.splitlines also breaks at \f, \x1c, \u2028...).
    lines = _LINES.findall(source)
    # ast offsets are UTF-8 byte offsets within a line.
    first = lines[node.lineno - 1].encode()
    last = lines[node.end_lineno - 1].encode() if node.end_lineno != node.lineno else first
    if node.end_lineno == node.lineno:
        line = first[: node.col_offset] + opening + first[node.col_offset: node.end_col_offset] + closing + first[node.end_col_offset:]
        lines[node.lineno - 1] = line.decode()
    else:
        lines[node.lineno - 1] = (first[: node.col_offset] + opening + first[node.col_offset:]).decode()
        lines[node.end_lineno - 1] = (last[: node.end_col_offset] + closing + last[node.end_col_offset:]).decode()
    return "".join(lines)


_NOT_CODE = (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER)


def ends_with_semicolon(source: str) -> bool:
    """IPython's rule for hiding a cell's value: its last token, comments aside, is ``;``
    (one inside a string or a comment does not count)."""
    if ";" not in source:
        return False   # most cells: no tokenizing (about a third of the host's work on a short cell)
    last = None
    try:
        for token in tokenize.generate_tokens(io.StringIO(source).readline):
            if token.type not in _NOT_CODE:
                last = token
    except (tokenize.TokenError, SyntaxError):
        return False
    return last is not None and last.type == tokenize.OP and last.string == ";"


def framed_call(marker: bytes, source: str, check_length: bool = True, scratch: bool = False) -> bytes:
    """The one-line program that runs `source` inside the helper. With
    check_length (links without flow control), a cell damaged in transit is
    refused instead of run; raw-paste's flow control makes it unnecessary.
    With scratch, `source` runs in a namespace of its own (only `_ek` in it), so
    nothing it binds reaches the user's globals: edgekernel's own programs."""
    source = _short_literal_padding(source)
    # A scratch run names its length always (the flag comes after it; checking costs the board nothing).
    length = f",{len(source)}" if check_length or scratch else ""
    length += ",1" if scratch else ""
    # _ekr is _ek.run under a shorter name (3 bytes fewer on every cell). Not _ek() with
    # the run in __init__: constructing an instance costs C stack the micro:bit lacks.
    return f"_ekr({marker_number(marker)},{source!r}{length})".encode()


def set_marker_call(marker: bytes) -> bytes:
    return f"_ek.m=_ek.k({marker_number(marker)})".encode()


# The serial helper's name for out(): every byte of a cell's call costs 87 us at 115200 baud.
SHOW_CALL = "_ek.o"

STREAM_TRAILER = "\n_ek.done()\n"
