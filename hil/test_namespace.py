"""Nothing edgekernel runs on the board for itself touches the user's names, on every target.

The user's globals are snapshotted (every name, the identity of its value and the repr of the
value) before and after each of edgekernel's own operations: file operations and transfers (stream,
literal and, on WebREPL, the file protocol), capability probes, hashes, the mpy version probe,
completion, inspection, eval, run_internal and the helper's reinstallation. The user's names
deliberately collide with the names those programs use inside (os, sys, gc, s, r, e, H, _ekf...).
"""
from __future__ import annotations

import pytest

from edgekernel.device import BoardSession, onboard
from edgekernel.device.files import BoardFiles, FileTransferError
from edgekernel.toolchain import FirmwareError, board_mpy_info
from edgekernel.kernel.introspect import SignatureIndex, complete, inspect

# Names the helper owns: it may rebind them when it is reinstalled.
RESERVED = ("_ek", "_ekr")

USER_CELL = """\
import sys
a = 1
b = [1]
os = 'not the os module'
gc = 'not gc'
s = r = e = f = i = k = m = n = p = t = 'user'
H = ('user', 'H')
builtins = binascii = 'user'
_ekf = _eka = _ekh = _ekp = _ekc = _ekg = _ekv = _ekrm = _eks = _ekn = _ekb = _ek0 = 'user'
"""
# The micro:bit's 16 KB hold fewer names (the snapshot's repr must fit its heap).
SMALL_USER_CELL = """\
import sys
a = 1
b = [1]
os = gc = s = r = e = f = H = binascii = 'user'
_ekf = _eka = _ekh = _ekg = _ekv = _ekrm = _ek0 = 'user'
"""
USER_INPUT = """\
def input(prompt=''):
    return 'the user input'
_ = 'user underscore'
"""

# An expression statement among the user's names: it binds none (the comprehension has its own
# scope), and prints a line per name rather than one repr (the micro:bit's heap is small).
SNAPSHOT = "[print(k, id(v), repr(v)[:40]) for k, v in _ek.g.items()]"


def snapshot(board: BoardSession) -> dict[str, tuple[int, str]]:
    """The user's globals: name -> (identity of the value, repr of the value)."""
    result = board.exec(SNAPSHOT, timeout=30)
    assert result.ok, result
    names = {}
    for line in result.text.splitlines():
        name, ident, text = line.split(" ", 2)
        if name not in RESERVED:
            names[name] = (int(ident), text)
    assert "sys" in names, result.text
    return names


@pytest.fixture
def user_board(board: BoardSession) -> BoardSession:
    small = board.target.ram_small  # type: ignore[attr-defined]
    result = board.exec((SMALL_USER_CELL if small else USER_CELL) + USER_INPUT, timeout=30)
    assert result.ok, result
    return board


def _unchanged(board: BoardSession, before: dict, what: str) -> None:
    after = snapshot(board)
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    rebound = sorted(k for k in set(before) & set(after) if before[k] != after[k])
    assert not (added or removed or rebound), f"{what} changed the user's globals: added {added}, " \
                                              f"removed {removed}, rebound {rebound}"


def _each(board: BoardSession, operations) -> dict[str, str]:
    """Run each operation between two snapshots; return those that raised (allowed when the board
    lacks the feature: the namespace must stay the same all the same)."""
    refused = {}
    for what, operation in operations:
        before = snapshot(board)
        try:
            operation()
        except (FileTransferError, FirmwareError) as exc:
            refused[what] = str(exc)
        _unchanged(board, before, what)
    return refused


def test_files_and_transfers_leave_the_namespace_alone(user_board: BoardSession):
    board = user_board
    target = board.target  # type: ignore[attr-defined]
    small = target.ram_small
    data = bytes(range(256)) * (2 if small else 40)
    files = BoardFiles(board)
    literal = BoardFiles(board, mode="literal")
    ops = [
        ("probing capabilities", lambda: files.caps),
        ("put (%sendtofile)", lambda: files.put(data, "ns.bin")),
        ("put --append", lambda: files.put(b"tail", "ns.bin", append=True)),
        ("get (%fetchfile)", lambda: files.get("ns.bin")),
        ("cat", lambda: files.cat("ns.bin")),
        ("ls", lambda: files.ls()),
        ("ls -l", lambda: files.ls(long=True)),
        ("hash", lambda: files.hash("ns.bin")),
        ("hash of a missing file", lambda: files.hash("no-such.bin")),
        ("literal put", lambda: literal.put(data[:700], "ns2.bin")),
        ("literal put --append", lambda: literal.put(b"more", "ns2.bin", append=True)),
        ("literal get", lambda: literal.get("ns2.bin")),
        ("mkdir", lambda: files.mkdir("nsdir")),
        ("rm -r", lambda: files.rm("nsdir", recursive=True)),
        ("df", lambda: files.df()),
        ("meminfo", lambda: files.meminfo()),
        ("rm", lambda: files.rm("ns.bin")),
        ("rm (literal board)", lambda: literal.rm("ns2.bin")),
        ("a failed get", lambda: files.get("no-such.bin")),
    ]
    if target.name == "webrepl":
        wr = BoardFiles(board, mode="webrepl")
        ops += [("put by the WebREPL file protocol", lambda: wr.put(data, "ns3.bin")),
                ("get by the WebREPL file protocol", lambda: wr.get("ns3.bin")),
                ("rm", lambda: wr.rm("ns3.bin"))]
    refused = _each(board, ops)
    # What a board may refuse: a missing file; on the micro:bit (flat filesystem, no os.stat or
    # os.statvfs) directories, appending and df.
    allowed = {"a failed get"} | ({"mkdir", "rm -r", "df", "put --append", "literal put --append"}
                                  if target.name == "microbit" else set())
    assert set(refused) <= allowed, refused
    assert "a failed get" in refused


def test_introspection_and_probes_leave_the_namespace_alone(user_board: BoardSession):
    board = user_board
    signatures = SignatureIndex()
    ops = [
        ("completing a global", lambda: complete(board, "sy", 2)),
        ("completing an attribute", lambda: complete(board, "sys.pa", 6)),
        ("inspecting", lambda: inspect(board, "b", 1, signatures)),
        ("inspecting a module", lambda: inspect(board, "sys", 3, signatures)),
        ("eval", lambda: board.eval("a + 1")),
        ("run_internal", lambda: board.run_internal("x = 5\nimport gc\nprint(x)")),
        ("the mpy version probe", lambda: board_mpy_info(board, guess=True)),
        ("connecting again (the helper is kept)", lambda: board.connect(20)),
        ("reinstalling over an older helper", lambda: _as_if_older_helper(board) or board.connect(20)),
    ]
    _each(board, ops)
    # The operations answered from the user's namespace, not from a copy of it.
    assert "sys" in complete(board, "sy", 2)["matches"]
    assert board.eval("a + 1") == 2
    assert board.run_internal("x = 5\nprint(x)").strip() == "5"
    # A user's own input() survives the helper's reinstallation; `_` is the user's.
    assert board.exec("input('q')", show_value=True, timeout=10).value == "'the user input'"


def _as_if_older_helper(board: BoardSession) -> None:
    """Make the board's helper look like another version's, so that connecting installs ours over it."""
    assert board.exec("_ek.v = 1", timeout=10).ok


def test_the_helper_install_keeps_the_users_sys_and_input(board: BoardSession):
    """Installed over a namespace that has sys and input already, the helper binds only its own names;
    and its input() answers through the front end when the user has none of their own."""
    board.exec("import sys\nsys_id = id(sys)", timeout=10)
    before = snapshot(board)
    _as_if_older_helper(board)
    board.connect(20)
    assert board.eval("_ek.v") == onboard.HELPER_VERSION
    _unchanged(board, before, "reinstalling the helper")
    result = board.exec("input('name? ')", show_value=True, on_input=lambda prompt: "ada", timeout=15)
    assert result.value == "'ada'", result
