"""A cell's trailing expression becomes its value (Out[n]) as in IPython, on real MicroPython.

Table-driven: each cell runs on the unix-port MicroPython through BoardSession.exec(show_value=True)
and its value is compared with the repr CPython gives for the same cell (where MicroPython's repr is
the same), and a subset runs on the micro:bit's MicroPython 1.9.2 (QEMU), where its syntax exists.
"""
from __future__ import annotations

import ast
import re
import shutil
import sys
from pathlib import Path

import pytest

from edgekernel.device import BoardSession

sys.path.insert(0, str(Path(__file__).parent))
from kernel_fixtures import alive  # noqa: E402

HIDDEN = None   # no Out[n]

# (cell, the value MicroPython shows). A str value is also checked against CPython's repr; a
# compiled pattern is MicroPython's own repr (functions, generators) and is matched instead.
CASES: list[tuple[str, str | re.Pattern | None]] = [
    ("1 + 1", "2"),
    # bare tuples are one value, not several arguments
    ("1, 2", "(1, 2)"),
    ("1,", "(1,)"),
    ("(1, 2), 3", "((1, 2), 3)"),
    ("a = b = 2\na, b", "(2, 2)"),
    ("'x', [1, (2,)], {3: 4}", "('x', [1, (2,)], {3: 4})"),
    # parenthesised and multi-line
    ("(1,\n 2,\n 3)", "(1, 2, 3)"),
    ("(1 +\n 2)", "3"),
    ("1 + \\\n 2", "3"),
    ("[1,\n 2]  # a comment\n", "[1, 2]"),
    ("2  # a comment", "2"),
    ("x = 1\n\n\nx + 1\n\n# trailing comment\n", "2"),
    # every kind of expression
    ("x = 0\n3 if x else 4", "4"),
    ("lambda: 1", re.compile(r"<function <lambda> at 0x[0-9a-f]+>")),
    ("len('abc')", "3"),
    ("[i * i for i in range(4)]", "[0, 1, 4, 9]"),
    ("{i: -i for i in range(1, 2)}", "{1: -1}"),   # one key: dict order differs in MicroPython
    ("(i for i in range(2))", re.compile(r"<generator object '<genexpr>' at (0x)?[0-9a-f]+>")),
    ("(y := 5)", "5"),
    ("-1", "-1"),
    ("not True", "False"),
    ("1 < 2 < 3", "True"),
    ("'a' 'b'", "'ab'"),
    ("'text'", "'text'"),
    ("'é'", re.compile(re.escape("'\\xe9'") + "|'é'")),   # MicroPython's repr may escape non-ASCII
    ("b'\\x00by'", "b'\\x00by'"),
    ("f'{1 + 1}'", "'2'"),
    ("x = {'k': [1]}\nx['k']", "[1]"),
    ("def f():\n    return 7\nf()", "7"),
    ("class A:\n    pass\nA.__name__", "'A'"),
    # after a compound statement, at top level
    ("for i in range(3):\n    pass\ni", "2"),
    ("if True:\n    z = 9\nz", "9"),
    # an expression after ';' on the same line
    ("x = 1; x", "1"),
    ("print(1); 2", "2"),
    # no Out[n]
    ("None", HIDDEN),
    ("print('only output')", HIDDEN),
    ("x = 5", HIDDEN),
    ("if True:\n    5", HIDDEN),
    ("# only a comment", HIDDEN),
    ("", HIDDEN),
    # a trailing ';' hides the value, as in IPython (the last token, comments aside)
    ("1 + 1;", HIDDEN),
    ("x = 3; x;", HIDDEN),
    ("x = 3; x;  # hidden", HIDDEN),
    ("(1,\n 2);", HIDDEN),
    # ...but not a ';' inside a string or a comment
    ("'a;'", "'a;'"),
    ("'''doc;'''", "'doc;'"),
    ("1  # ;", "1"),
    ("x = 3; x  # x;", "3"),
]

# What MicroPython 1.9.2 (the micro:bit) can parse: no f-strings, no walrus.
MICROBIT_CASES = [
    ("1 + 1", "2"), ("1, 2", "(1, 2)"), ("1,", "(1,)"), ("(1,\n 2,\n 3)", "(1, 2, 3)"), ("1 + \\\n 2", "3"),
    ("2  # a comment", "2"), ("x = 0\n3 if x else 4", "4"), ("[i * i for i in range(4)]", "[0, 1, 4, 9]"),
    ("for i in range(3):\n    pass\ni", "2"), ("x = 1; x", "1"), ("print(1); 2", "2"), ("b'by'", "b'by'"),
    ("None", HIDDEN), ("1 + 1;", HIDDEN), ("x = 3; x;  # hidden", HIDDEN), ("'a;'", "'a;'"), ("1  # ;", "1"),
]


def cpython_value(source: str) -> str | None:
    """What CPython shows for the cell: the repr of its last statement if that is an expression."""
    tree = ast.parse(source)
    namespace: dict = {}
    if not tree.body or not isinstance(tree.body[-1], ast.Expr):
        exec(compile(tree, "<cell>", "exec"), namespace)
        return None
    last = tree.body.pop()
    exec(compile(tree, "<cell>", "exec"), namespace)
    value = eval(compile(ast.Expression(last.value), "<cell>", "eval"), namespace)
    return None if value is None else repr(value)


def check(board: BoardSession, source: str, expected: str | re.Pattern | None) -> None:
    result = board.exec(source, show_value=True, timeout=20)
    assert result.error is None, f"{source!r}: {result.error}"
    if isinstance(expected, re.Pattern):
        assert result.value is not None and expected.fullmatch(result.value), (source, result.value)
    else:
        assert result.value == expected, (source, result.value)


@pytest.mark.parametrize("source,expected", CASES)
def test_the_table_agrees_with_cpython(source, expected):
    if isinstance(expected, re.Pattern):
        return   # MicroPython's own repr
    hidden = expected is None and source.rstrip().endswith(";") or "# hidden" in source
    assert (None if hidden else cpython_value(source)) == expected


def test_trailing_expressions_on_the_unix_port(unix_session):
    for source, expected in CASES:
        check(unix_session, source, expected)


def test_underscore_holds_the_last_value(unix_session):
    s = unix_session
    check(s, "41 + 1", "42")
    check(s, "_", "42")
    check(s, "None", HIDDEN)              # None does not replace it
    check(s, "print('x')", HIDDEN)
    check(s, "_ * 2", "84")
    check(s, "7;", HIDDEN)                # a hidden value does not replace it either (IPython)
    check(s, "_", "84")


def test_starred_tuple_gets_the_boards_own_answer(unix_session):
    """`*a, 1` as a value: MicroPython itself does not take starred items in a tuple display, and
    the cell gets the same SyntaxError as the plain assignment, not one of edgekernel's making."""
    s = unix_session
    own = s.exec("a = [1]\nt = *a, 1", timeout=10)
    shown = s.exec("a = [1]\n*a, 1", show_value=True, timeout=10)
    if own.error is None:
        check(s, "a = [1]\n*a, 1", "(1, 1)")
    else:
        assert shown.error is not None and (shown.error.type, shown.error.message) == (own.error.type, own.error.message)


@pytest.mark.parametrize("source,line", [
    ("x = 1\n(1,\n 2 / 0)", 3),
    ("x = (1,\n2); 1 / 0, 2", 2),
    ("print(1); 1 / 0", 1),
    ("a = 1\n\n\n1 / 0 if a else 0", 4),
    ("def f():\n    return 1 / 0\nf(), 1", 3),
    ("1 / 0;", 1),
])
def test_tracebacks_keep_the_cells_line_numbers(unix_session, source, line):
    result = unix_session.exec(source, show_value=True, timeout=10)
    assert result.error is not None and result.error.type == "ZeroDivisionError", result
    assert result.error.frames[0].file == "<cell>" and result.error.frames[0].line == line, result.error


@pytest.mark.skipif(shutil.which("qemu-system-arm") is None,
                    reason="qemu-system-arm not installed (apt-get install qemu-system-arm)")
def test_trailing_expressions_on_the_microbit():
    from edgekernel.emulator import start_board
    proc = start_board("microbit", baud=115200, timeout=30)
    try:
        with BoardSession.open(proc.port, 115200, timeout=20) as board:
            for source, expected in MICROBIT_CASES:
                check(board, source, expected)
            check(board, "_", "1")
    finally:
        proc.stop()
    assert not alive(proc.pid), f"micro:bit emulator pid {proc.pid} still running"
