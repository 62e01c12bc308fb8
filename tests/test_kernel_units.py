"""Fast tests of the kernel's host-side pieces (no board, no Jupyter session)."""
from __future__ import annotations

import pytest

from edgekernel.kernel.introspect import SignatureIndex, name_at
from edgekernel.kernel.magics import MagicError, MagicHelp, MagicRegistry, split_leading_magics
from edgekernel.kernel.output import StreamCoalescer


def test_leading_magics_are_split_and_line_numbers_kept() -> None:
    magics, rest = split_leading_magics("%serialconnect --port /dev/x\n\nx = 1\n1/0")
    assert magics == ["%serialconnect --port /dev/x"]
    assert rest.split("\n")[3] == "1/0"  # the board sees 1/0 on the cell's line 4


def test_cell_magic_takes_the_rest_verbatim() -> None:
    magics, rest = split_leading_magics("%%local\nimport pandas\n%matplotlib inline")
    assert magics == ["%%local"]
    assert rest == "import pandas\n%matplotlib inline"


def test_plain_code_has_no_magics() -> None:
    assert split_leading_magics("print(1)\n%notamagic") == ([], "print(1)\n%notamagic")


def test_unknown_option_is_an_error_naming_it() -> None:
    registry = MagicRegistry()

    @registry.add("demo", "a demo", arguments=lambda p: p.add_argument("--port"))
    def demo(kernel, args, body):  # pragma: no cover - not called
        pass

    parser = registry.lookup("demo").parser
    with pytest.raises(MagicError, match="--bogus"):
        parser.parse_line("--bogus 1")
    with pytest.raises(MagicHelp, match="--port"):
        parser.parse_line("--help")
    assert parser.parse_line("--port /dev/ttyUSB0").port == "/dev/ttyUSB0"
    with pytest.raises(MagicError, match="closing quotation"):
        parser.parse_line("--port 'unterminated")


def test_help_does_not_need_the_required_arguments_it_explains() -> None:
    registry = MagicRegistry()

    @registry.add("need", "needs a name", arguments=lambda p: p.add_argument("name"))
    def need(kernel, args, body):  # pragma: no cover - not called
        pass

    parser = registry.lookup("need").parser
    with pytest.raises(MagicHelp, match="name"):
        parser.parse_line("--help")
    with pytest.raises(MagicHelp, match="name"):
        parser.parse_line("-h")
    with pytest.raises(MagicError, match="name"):
        parser.parse_line("")


def test_coalescer_batches_and_decodes() -> None:
    sent: list[str] = []
    out = StreamCoalescer(sent.append)
    for i in range(2000):
        out.feed(f"line {i}\r\n".encode())
    out.feed(b"\xe2\x82")  # half of a euro sign
    out.flush()
    out.feed(b"\xac\xff\r")
    out.flush(final=True)
    assert len(sent) == 2
    assert sent[0].count("line ") == 2000 and "\r" not in sent[0]
    assert sent[1] == "\u20ac\ufffd\r"


def test_signatures_from_cell_source() -> None:
    index = SignatureIndex()
    index.learn("def blink(pin, times=3, *, delay_ms=100):\n    pass\nclass Led:\n    def __init__(self, pin):\n        pass")
    assert index.get("blink") == "blink(pin, times=3, *, delay_ms=100)"
    assert index.get("Led") == "Led(pin)"


@pytest.mark.parametrize("code,pos,expected", [
    ("machine.Pin", 5, "machine.Pin"),
    ("x = blink(", 10, "blink"),
    ("print(foo)", 8, "foo"),
    ("   ", 1, None),
])
def test_name_at_cursor(code: str, pos: int, expected: str | None) -> None:
    assert name_at(code, pos) == expected
