"""The board-side helper and its framing (onboard.py), and how board text is
read back (result.py). The helper itself runs on the real unix-port
MicroPython, as a script: no serial link involved."""
from __future__ import annotations

import ast
import subprocess

import pytest

from edgekernel.device import onboard
from edgekernel.device.result import BoardException, OutputDecoder, board_text, parse_traceback
from fakepeer import micropython_executable

# -- show_trailing_expression ---------------------------------------------------------------

ste = onboard.show_trailing_expression


@pytest.mark.parametrize("source,expected", [
    ("1 + 1", "_ek.out(1 + 1)"),
    ("x = 1\nx", "x = 1\n_ek.out(x)"),
    ("x = 1\nx\n", "x = 1\n_ek.out(x)\n"),
    # multi-line expression: both ends rewritten, line numbers kept
    ("a = 2\n(a,\n 3,\n 4)", "a = 2\n_ek.out(((a,\n 3,\n 4)))"),
    # a bare tuple is one value, not several arguments
    ("1, 2", "_ek.out((1, 2))"),
    ("x = [1]; *x, 2  # c", "x = [1]; _ek.out((*x, 2))  # c"),
    ("1,", "_ek.out((1,))"),
    ("f(1,\n  2)  # done\n", "_ek.out(f(1,\n  2))  # done\n"),
    # several statements on one line
    ("a = 1; a + 1", "a = 1; _ek.out(a + 1)"),
    # IPython's rule: a last token (comments aside) of ";" hides the value
    ("a = 1; a + 1;", "a = 1; a + 1;"),
    ("1 + 1;  # hidden", "1 + 1;  # hidden"),
    ("'a;'", "_ek.out('a;')"),
    ("1  # ;", "_ek.out(1)  # ;"),
    # comments before, after and on the line
    ("# head\nx = 3\nx  # the value\n# tail\n", "# head\nx = 3\n_ek.out(x)  # the value\n# tail\n"),
    # unicode earlier on the line: ast offsets are UTF-8 bytes, not characters
    ("s = 'héllo wörld'; len(s)", "s = 'héllo wörld'; _ek.out(len(s))"),
    ("é = 'ü'; é", "é = 'ü'; _ek.out(é)"),
    ("t = ('ä',\n 'ö'); 'ß' + t[0]", "t = ('ä',\n 'ö'); _ek.out('ß' + t[0])"),
    # CRLF line ends
    ("x = 1\r\nx\r\n", "x = 1\r\n_ek.out(x)\r\n"),
    # indented block last: not an expression statement
    ("if True:\n    5", "if True:\n    5"),
    # non-expression last statements
    ("x = 5", "x = 5"),
    ("import os", "import os"),
    ("def f():\n    return 1", "def f():\n    return 1"),
    ("del x", "del x"),
    ("", ""),
    ("# only a comment", "# only a comment"),
    # code CPython cannot parse is left for the board to report
    ("x = (1,", "x = (1,"),
    ("print 'py2'", "print 'py2'"),
    ("x = 1\n  y", "x = 1\n  y"),
])
def test_show_trailing_expression(source, expected):
    assert ste(source) == expected


def test_show_trailing_expression_keeps_line_count_and_parses():
    for src in ["a = 1\n(a +\n 2)\n", "x = [\n 1,\n 2,\n]\n", "'''doc\nstring'''"]:
        out = ste(src)
        assert out.count("\n") == src.count("\n")
        ast.parse(out)


def test_show_trailing_expression_micropython_only_syntax():
    # Decorators CPython can parse are fine; the expression still gets wrapped.
    assert ste("@micropython.native\ndef f(): pass\nf()") == "@micropython.native\ndef f(): pass\n_ek.out(f())"


@pytest.mark.parametrize("source,expected", [
    # str.splitlines() also splits at U+2028, form feed, \x1c-\x1e... while the
    # parser counts only \n: the rewrite then lands on the wrong "line".
    ('x = "a\u2028b"\nx', 'x = "a\u2028b"\n_ek.out(x)'),
    ("\x0cx = 1\nx", "\x0cx = 1\n_ek.out(x)"),
    ("s = 'a\x1cb'\ns", "s = 'a\x1cb'\n_ek.out(s)"),
])
def test_show_trailing_expression_with_unusual_line_breaks(source, expected):
    assert ste(source) == expected


def test_show_trailing_expression_with_the_short_call():
    assert ste("x = 1\nf(x,\n  2)", onboard.SHOW_CALL) == "x = 1\n_ek.o(f(x,\n  2))"


# -- markers and the framed call ----------------------------------------------------------------


def test_marker_shape():
    seen = set()
    for _ in range(200):
        m = onboard.new_marker()
        assert len(m) == onboard.MARKER_LEN and m[:1] == onboard.MARKER_LEAD
        assert all(0x30 <= b < 0x7F and b != ord(">") for b in m[1:])
        seen.add(m)
    # Random per execution (a few birthday collisions are possible with short markers).
    assert len(seen) >= 190


@pytest.mark.parametrize("source", [
    "print('hi')", 'print("it\'s")', "s = '\\x04\\n'\nprint(s)", "x = 'ünïcødé ✓ 😀'", "a\\\nb", "\t\tx\r\n",
    "'''triple''' + \"\"\"quotes\"\"\"", "\x00\x04\x1e raw control bytes",
])
def test_framed_call_round_trips_any_source(source):
    m = onboard.new_marker()
    call = onboard.framed_call(m, source)
    node = ast.parse(call.decode(), mode="eval").body
    assert isinstance(node, ast.Call) and ast.unparse(node.func) == "_ekr"
    number, sent, length = (ast.literal_eval(a) for a in node.args)  # the length is checked by default
    assert onboard.marker_for(number) == m and onboard.marker_number(m) == number
    assert sent.rstrip(" ") == source.rstrip(" ") and len(sent) == length  # short cells are padded
    # Only printable ASCII and UTF-8 on the wire: no byte the raw REPL would act on.
    assert not any(b < 0x20 for b in call)


@pytest.mark.parametrize("check_length", [True, False])
def test_a_scratch_call_names_its_length_and_the_flag(check_length):
    m = onboard.new_marker()
    node = ast.parse(onboard.framed_call(m, "import os\nprint(1)", check_length, scratch=True).decode(),
                     mode="eval").body
    number, sent, length, scratch = (ast.literal_eval(a) for a in node.args)
    assert len(sent) == length and scratch == 1
    # A user's cell carries no flag: its wire cost is unchanged.
    plain = ast.parse(onboard.framed_call(m, "1+1", check_length).decode(), mode="eval").body
    assert len(plain.args) == (3 if check_length else 2)


# -- the helper on real MicroPython --------------------------------------------------------------

needs_micropython = pytest.mark.skipif(micropython_executable() is None, reason="micropython is not installed")


def run_helper(*cells: str, stdin: bytes = b"", show_value: bool = True, install_twice: bool = False) -> tuple[bytes, bytes]:
    """Run the helper and framed cells as one MicroPython script; return (marker, stdout)."""
    m = onboard.new_marker()
    lines = [onboard.HELPER_SOURCE] * (2 if install_twice else 1)
    for cell in cells:
        lines.append(onboard.framed_call(m, ste(cell, onboard.SHOW_CALL) if show_value else cell).decode())
    script = "\n".join(lines) + "\n"
    proc = subprocess.run([micropython_executable(), "-c", script], input=stdin, capture_output=True, timeout=10)
    return m, proc.stdout


def fields(m: bytes, out: bytes) -> list[tuple[str, bytes]]:
    """Split helper output into (kind, text) fields; kind "" is plain output."""
    parts = out.split(m)
    result = [("", parts[0])]
    for p in parts[1:]:
        result.append((chr(p[0]), p[1:]))
    return result


@needs_micropython
def test_helper_output_value_done():
    m, out = run_helper("print('hi')\n6 * 7")
    assert fields(m, out) == [("", b"hi\n"), ("R", b"42"), ("D", b"")]


@needs_micropython
def test_helper_none_value_is_not_reported():
    m, out = run_helper("print('x')", "None", "x = 3")
    assert [k for k, _ in fields(m, out)] == ["", "D", "D", "D"]


@needs_micropython
def test_helper_sets_underscore():
    m, out = run_helper("[1, 2]", "print(_)")
    assert fields(m, out)[-2:] == [("D", b"[1, 2]\n"), ("D", b"")]


@needs_micropython
def test_helper_error_has_cell_line_numbers():
    m, out = run_helper("x = 1\n\ndef f(a):\n    return a / 0\n\nf(x)")
    kinds = fields(m, out)
    assert [k for k, _ in kinds] == ["", "E", "D"]
    err = parse_traceback(kinds[1][1].decode(), hide_files=(onboard.HELPER_FILE,),
                          rename={onboard.EXEC_FILE: "<cell>"})
    assert err.type == "ZeroDivisionError"
    cell_frames = [(f.file, f.line, f.function) for f in err.frames if f.file == "<cell>"]
    assert cell_frames == [("<cell>", 6, "<module>"), ("<cell>", 4, "f")]


@needs_micropython
def test_helper_syntax_error_in_cell():
    m, out = run_helper("x = (1,\n")
    kinds = fields(m, out)
    assert [k for k, _ in kinds] == ["", "E", "D"]
    assert parse_traceback(kinds[1][1].decode()).type == "SyntaxError"


@needs_micropython
def test_helper_system_exit_reports_done_then_exits():
    m, out = run_helper("print('bye')\nimport sys\nsys.exit()", "print('not reached')")
    assert fields(m, out) == [("", b"bye\n"), ("D", b"")]


@needs_micropython
def test_helper_input_is_framed():
    m, out = run_helper("n = input('name? ')\nprint('hello', n)", stdin=b"Ada\n")
    kinds = fields(m, out)
    assert [k for k, _ in kinds] == ["", "I", "W", "i", "D"]
    assert kinds[1][1] == b"name? "
    assert kinds[3][1] == b"hello Ada\n"


@needs_micropython
def test_helper_input_refused_by_the_host():
    # The host answers with the marker's letters + "X" when it cannot ask anyone.
    m3 = onboard.new_marker()
    script = onboard.HELPER_SOURCE + "\n" + onboard.framed_call(m3, "input('q')").decode() + "\n"
    proc = subprocess.run([micropython_executable(), "-c", script],
                          input=m3[1:] + onboard.NO_STDIN_SUFFIX.encode() + b"\n", capture_output=True, timeout=10)
    kinds = fields(m3, proc.stdout)
    assert [k for k, _ in kinds] == ["", "I", "W", "i", "E", "D"]
    err = parse_traceback(kinds[4][1].decode())
    assert err.type == "OSError" and "stdin" in err.message


@needs_micropython
def test_helper_installed_twice_keeps_input_working():
    m, out = run_helper("print(input('a'))", stdin=b"once\n", install_twice=True)
    kinds = fields(m, out)
    assert kinds[-2] == ("i", b"once\n") and kinds[-1][0] == "D"


@needs_micropython
def test_helper_value_whose_repr_raises():
    m, out = run_helper("class A:\n    def __repr__(self):\n        raise ValueError('no repr')\nA()")
    kinds = fields(m, out)
    assert [k for k, _ in kinds] == ["", "E", "D"]
    assert parse_traceback(kinds[1][1].decode()).message == "no repr"


@needs_micropython
def test_helper_output_with_control_bytes_is_untouched():
    m, out = run_helper("import sys\nsys.stdout.write('a\\x04b\\x1e>OK')")
    assert fields(m, out)[0] == ("", b"a\x04b\x1e>OK")


def _heap_lost(calls: list[str]) -> int:
    """Heap lost on the unix port while running the framed calls one by one."""
    script = "\n".join([
        onboard.HELPER_SOURCE,
        f"calls = {calls!r}",
        "import gc",
        "exec(calls[0])",               # warm up: first-use allocations
        "gc.collect()",
        "before = gc.mem_free()",
        "for c in calls[1:]:\n    exec(c)",
        "gc.collect()",
        "print('LOST', before - gc.mem_free())",
    ]) + "\n"
    proc = subprocess.run([micropython_executable(), "-c", script], capture_output=True, timeout=20)
    return int(proc.stdout.rsplit(b"LOST", 1)[1])


@needs_micropython
def test_framed_calls_leave_no_heap_behind():
    # Each exec brings a fresh marker. MicroPython interns string literals of up
    # to 10 characters (MICROPY_ALLOC_PARSE_INTERN_STRING_LEN) as qstrs, which are
    # never freed: a marker that short costs heap on every cell, for good, until
    # the board resets (the micro:bit runs out after ~230 cells).
    n = 300
    fresh = [onboard.framed_call(onboard.new_marker(), ste("1+1", onboard.SHOW_CALL)).decode() for _ in range(n)]
    same = [fresh[0]] * n        # the harness's own cost: same cells, one marker
    extra = _heap_lost(fresh) - _heap_lost(same)
    assert extra <= 64, f"{extra} bytes of heap lost over {n - 1} cells ({extra / (n - 1):.1f} per cell)"


# -- parse_traceback ------------------------------------------------------------------------------

MP_TB = ('Traceback (most recent call last):\r\n'
         '  File "<stdin>", line 12, in run\r\n'
         '  File "<string>", line 3, in <module>\r\n'
         '  File "<string>", line 2, in f\r\n'
         'ZeroDivisionError: divide by zero\r\n')


def test_parse_traceback_frames_type_message():
    e = parse_traceback(MP_TB)
    assert (e.type, e.message) == ("ZeroDivisionError", "divide by zero")
    assert [(f.file, f.line, f.function) for f in e.frames] == [
        ("<stdin>", 12, "run"), ("<string>", 3, "<module>"), ("<string>", 2, "f")]


def test_parse_traceback_hide_and_rename():
    e = parse_traceback(MP_TB, hide_files=("<stdin>",), rename={"<string>": "<cell>"})
    assert [(f.file, f.line) for f in e.frames] == [("<cell>", 3), ("<cell>", 2)]
    assert str(e).splitlines() == ["Traceback (most recent call last):",
                                   '  File "<cell>", line 3, in <module>',
                                   '  File "<cell>", line 2, in f',
                                   "ZeroDivisionError: divide by zero"]


@pytest.mark.parametrize("text,type_,message", [
    ("Traceback (most recent call last):\r\nKeyboardInterrupt: \r\n", "KeyboardInterrupt", ""),
    ("KeyboardInterrupt\r\n", "KeyboardInterrupt", ""),
    ('Traceback (most recent call last):\r\n  File "<stdin>", line 1\r\nSyntaxError: invalid syntax\r\n',
     "SyntaxError", "invalid syntax"),
    ("ValueError: first line\nsecond line\n", "ValueError", "first line\nsecond line"),
    ("OSError: [Errno 2] ENOENT\r\n", "OSError", "[Errno 2] ENOENT"),
    ("mod.CustomError: x: y\r\n", "mod.CustomError", "x: y"),
    ("", "Exception", ""),
    ("!!! not a traceback", "Exception", "!!! not a traceback"),
])
def test_parse_traceback_shapes(text, type_, message):
    e = parse_traceback(text)
    assert (e.type, e.message) == (type_, message)


def test_parse_traceback_message_mentioning_a_file_line():
    text = 'Traceback (most recent call last):\n  File "<string>", line 1, in <module>\nValueError: bad\n  File "x", line 9\n'
    e = parse_traceback(text)
    assert len(e.frames) == 1 and e.message == 'bad\n  File "x", line 9'


def test_board_exception_str_without_frames():
    assert str(BoardException("KeyboardInterrupt", "")) == "KeyboardInterrupt"


# -- OutputDecoder ----------------------------------------------------------------------------------


def decode_in_pieces(pieces: list[bytes]) -> str:
    d = OutputDecoder()
    return "".join(d.decode(p) for p in pieces) + d.decode(b"", final=True)


@pytest.mark.parametrize("text", ["é", "✓", "😀", "aé✓😀z"])
def test_decoder_utf8_split_at_every_byte(text):
    data = text.encode()
    for cut in range(len(data) + 1):
        assert decode_in_pieces([data[:cut], data[cut:]]) == text
    assert decode_in_pieces([bytes([b]) for b in data]) == text


def test_decoder_keeps_text_flowing():
    d = OutputDecoder()
    assert d.decode(b"ab\xc3") == "ab"          # only the incomplete sequence waits
    assert d.decode(b"\xa9c") == "éc"


def test_decoder_crlf_split_across_chunks():
    assert decode_in_pieces([b"one\r", b"\ntwo\r\n"]) == "one\ntwo\n"
    d = OutputDecoder()
    assert d.decode(b"x\r") == "x"               # the CR waits for the next piece
    assert d.decode(b"\n") == "\n"


def test_decoder_lone_cr_is_kept():
    # Progress bars redraw the line with a bare CR.
    assert decode_in_pieces([b"10%\r", b"20%\r", b"done\r\n"]) == "10%\r20%\rdone\n"
    assert board_text(b"end\r") == "end\r"


def test_decoder_invalid_utf8_becomes_replacement():
    assert board_text(b"a\xffb\xc3(") == "a\ufffdb\ufffd("
    assert decode_in_pieces([b"a\xc3", b"(b"]) == "a\ufffd(b"


def test_decoder_control_pictures():
    assert board_text(b"a\x04b\x00c\x1ed\x7f") == "a\u2404b\u2400c\u241ed\u2421"
    # tab, newline, backspace and ANSI colour escapes pass through
    assert board_text(b"\tx\x08\x1b[31mred\x1b[0m\n") == "\tx\x08\x1b[31mred\x1b[0m\n"
