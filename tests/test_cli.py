"""The `edgekernel` command and the serial link's error messages."""
from __future__ import annotations

import errno
import grp
import json
import os
import subprocess
import sys
import textwrap
import threading

import pytest
from serial.tools.list_ports_common import ListPortInfo

from edgekernel import cli
from edgekernel.device import BoardSession
from edgekernel.links import LinkClosed, LinkError, SerialLink
from edgekernel.links import serial_link
from fakepeer import FakeBoard, Reply
from hang_guard import returns

# -- devices ---------------------------------------------------------------------------------


def _port(device, vid=None, pid=None, serial_number=None, description="n/a"):
    p = ListPortInfo(device, skip_link_detection=True)
    p.vid, p.pid, p.serial_number, p.description = vid, pid, serial_number, description
    return p


@pytest.fixture
def fake_ports(monkeypatch):
    ports = [
        _port("/dev/ttyUSB1", 0x1A86, 0x7523, None, "USB2.0-Serial"),
        _port("/dev/ttyS0"),
        _port("/dev/ttyACM0", 0x0D28, 0x0204, "9900000", "BBC micro:bit CMSIS-DAP"),
        _port("/dev/ttyUSB0", 0x10C4, 0xEA60, "0001", "CP2102 USB to UART Bridge Controller"),
        _port("/dev/ttyUSB9", 0x1234, 0x5678, None, "Mystery gadget"),
    ]
    monkeypatch.setattr("edgekernel.ports.list_ports.comports", lambda *a, **k: ports)
    return ports


KEYS = {"device", "vid", "pid", "serial_number", "description", "bridge", "board_guess", "usb_id"}


def test_devices_json_shape(fake_ports, capsys):
    assert cli.main(["devices", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert isinstance(data, list) and all(set(d) == KEYS for d in data)
    assert [d["device"] for d in data] == ["/dev/ttyACM0", "/dev/ttyUSB0", "/dev/ttyUSB1", "/dev/ttyUSB9"]
    by = {d["device"]: d for d in data}
    assert by["/dev/ttyUSB0"] == {
        "device": "/dev/ttyUSB0", "vid": 0x10C4, "pid": 0xEA60, "serial_number": "0001",
        "description": "CP2102 USB to UART Bridge Controller", "bridge": "CP210x",
        "board_guess": "ESP8266/ESP32 board (NodeMCU, DevKit)", "usb_id": "10c4:ea60"}
    assert by["/dev/ttyACM0"]["board_guess"] == "BBC micro:bit"
    assert by["/dev/ttyUSB9"]["bridge"] is None and by["/dev/ttyUSB9"]["usb_id"] == "1234:5678"


def test_devices_json_all_includes_plain_ports(fake_ports, capsys):
    assert cli.main(["devices", "--json", "--all"]) == 0
    data = json.loads(capsys.readouterr().out)
    plain = [d for d in data if d["device"] == "/dev/ttyS0"]
    assert plain == [{"device": "/dev/ttyS0", "vid": None, "pid": None, "serial_number": None,
                      "description": "n/a", "bridge": None, "board_guess": None, "usb_id": "-"}]
    assert data[-1]["device"] in ("/dev/ttyS0", "/dev/ttyUSB9")   # unknown bridges sort last


def test_devices_json_empty(monkeypatch, capsys):
    monkeypatch.setattr("edgekernel.ports.list_ports.comports", lambda *a, **k: [])
    assert cli.main(["devices", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_devices_table(fake_ports, capsys):
    assert cli.main(["devices"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and lines[1].startswith("/dev/ttyUSB0") and "10c4:ea60" in lines[1]


# -- serial link errors ------------------------------------------------------------------------


@pytest.fixture
def pty_port():
    master, slave = os.openpty()
    path = os.ttyname(slave)
    yield master, path
    for fd in (master, slave):
        try:
            os.close(fd)
        except OSError:
            pass


def test_missing_port_says_no_such_port(tmp_path):
    path = str(tmp_path / "ttyUSB7")
    with pytest.raises(LinkError, match=r"^no such port .*ttyUSB7: .*edgekernel devices"):
        SerialLink(path)


def test_cli_missing_port_exit_code_and_message(tmp_path, capsys):
    code = cli.main(["exec", "--port", str(tmp_path / "nope"), "print(1)"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("edgekernel: no such port")
    assert "Traceback" not in err


def test_port_locked_by_another_process(pty_port):
    master, path = pty_port
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys
            from edgekernel.links import SerialLink
            link = SerialLink({path!r})
            print("ready", flush=True)
            sys.stdin.read()
        """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(LinkError) as info:
            SerialLink(path)
        msg = str(info.value)
        assert msg.startswith(f"port {path} is in use by ")
        assert f"(pid {holder.pid})" in msg and "close the other program" in msg
    finally:
        holder.stdin.close()
        holder.wait(10)


def test_port_locked_in_this_process(pty_port):
    master, path = pty_port
    first = SerialLink(path)
    try:
        with pytest.raises(LinkError, match=f"port {path} is in use"):
            SerialLink(path)
    finally:
        first.close()
    SerialLink(path).close()        # free again once closed


@pytest.mark.skipif(os.geteuid() == 0, reason="root bypasses file permissions: a chmod 000 port opens anyway")
def test_port_without_permission(pty_port):
    master, path = pty_port
    os.chmod(path, 0)
    with pytest.raises(LinkError, match=f"permission denied on {path}: join the '.*' group"):
        SerialLink(path)


def test_permission_message_names_the_ports_group(tmp_path):
    node = tmp_path / "ttyFAKE"
    node.write_bytes(b"")
    group = grp.getgrgid(os.stat(node).st_gid).gr_name
    err = serial_link._open_error(str(node), PermissionError(errno.EACCES, "Permission denied"))
    assert str(err) == (f"permission denied on {node}: join the '{group}' group "
                        f"(sudo usermod -aG {group} $USER, then log in again)")
    # pyserial's own wording, with the errno only in the text
    err = serial_link._open_error("/dev/ttyGONE", Exception("[Errno 13] could not open port: Permission denied"))
    assert "join the 'dialout' group" in str(err)


def test_other_open_errors_keep_the_cause():
    err = serial_link._open_error("/dev/ttyX", OSError(errno.EIO, "Input/output error"))
    assert str(err).startswith("cannot open /dev/ttyX: ") and "Input/output error" in str(err)
    err = serial_link._open_error("/dev/ttyX", OSError(errno.EBUSY, "Device or resource busy"))
    assert str(err).startswith("port /dev/ttyX is in use")


def test_pty_link_reads_writes_and_times_out(pty_port):
    master, path = pty_port
    link = SerialLink(path)
    try:
        assert link.can_hard_reset is False        # a pty has no DTR/RTS wiring to a chip
        os.write(master, b"hello")
        assert link.read(100, 1.0) == b"hello"
        assert returns(lambda: link.read(100, 0.2), what="a read with nothing to read") == b""
        # A read waits for bytes that come later (it does not give up at once).
        late = threading.Timer(0.2, os.write, (master, b"late"))
        late.start()
        assert returns(lambda: link.read(100, 30.0), what="a read of late bytes") == b"late"
        late.join()
        link.write(b"to board")
        assert os.read(master, 100) == b"to board"
    finally:
        link.close()


def test_pty_link_reports_peer_gone(pty_port):
    master, path = pty_port
    link = SerialLink(path)
    try:
        os.close(master)
        # The read's own timeout is far beyond the hang guard: only noticing the hang-up ends it.
        with pytest.raises(LinkClosed, match="disconnected"):
            returns(lambda: link.read(100, 3600.0), what="a read from a vanished peer")
    finally:
        link.close()


def test_url_link_loop():
    link = SerialLink("loop://")
    try:
        link.write(b"ping")
        assert link.read(100, 1.0) == b"ping"
        assert link.read(100, 0.1) == b""
    finally:
        link.close()


def test_hard_reset_refused_without_reset_lines():
    link = SerialLink("loop://")
    try:
        with pytest.raises(LinkError, match="press its reset button"):
            link.hard_reset()
    finally:
        link.close()


# -- exec / run through the command, on a fake board -------------------------------------------


@pytest.fixture
def cli_board(monkeypatch):
    """Make the CLI open a FakeBoard whatever --port says; return the board."""
    holder: dict[str, FakeBoard] = {"board": FakeBoard()}

    def fake_open(url, baud=115200, **kw):
        holder["url"] = url
        s = BoardSession(holder["board"])
        s.connect(3)
        if "after_connect" in holder:
            holder["after_connect"](holder["board"])
        return s
    monkeypatch.setattr(cli, "open_board", fake_open)
    return holder


def test_cli_exec_prints_output_and_value(cli_board, capsysbinary):
    assert cli.main(["exec", "--port", "fake", "print('hi')\n2 + 3"]) == 0
    out = capsysbinary.readouterr().out
    assert out == b"hi\r\n5\n"
    assert cli_board["url"] == "fake"


def test_cli_exec_error_goes_to_stderr_with_exit_1(cli_board, capsys):
    assert cli.main(["exec", "--port", "fake", "x = 1\n1/0"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == ["Traceback (most recent call last):",
                                         '  File "<cell>", line 2, in <module>',
                                         "ZeroDivisionError: division by zero"]


def test_cli_exec_reads_code_from_stdin(cli_board, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", __import__("io").StringIO("print('from stdin')\n"))
    assert cli.main(["exec", "--port", "fake", "-"]) == 0
    assert capsys.readouterr().out == "from stdin\r\n"


def test_cli_run_names_the_script_in_tracebacks(cli_board, capsys, tmp_path):
    script = tmp_path / "blink.py"
    script.write_text("print('start')\n\nraise ValueError('led')\n")
    assert cli.main(["run", "--port", "fake", str(script)]) == 1
    captured = capsys.readouterr()
    assert captured.out == "start\r\n"
    assert '  File "blink.py", line 3, in <module>' in captured.err
    assert captured.err.rstrip().endswith("ValueError: led")


def test_cli_run_missing_script(cli_board, capsys, tmp_path):
    assert cli.main(["run", "--port", "fake", str(tmp_path / "nope.py")]) == 2
    assert "No such file" in capsys.readouterr().err


def test_cli_reports_reset(cli_board, capsys):
    cli_board["board"].cell = lambda src: Reply(out=[b"x\r\n"], end="soft-reset")
    assert cli.main(["exec", "--port", "fake", "import machine; machine.soft_reset()"]) == 1
    assert "rebooted (soft reset)" in capsys.readouterr().err


def test_cli_timeout_interrupts_with_130(cli_board, capsys):
    cli_board["board"].cell = lambda src: Reply(end="busy")
    assert cli.main(["exec", "--port", "fake", "--timeout", "0.3", "while True: pass"]) == 130
    # The first Ctrl-C of the ladder stopped it ("ctrl-c," not "ctrl-c x2" or a reset).
    assert "interrupted (ctrl-c, " in capsys.readouterr().err
    assert cli_board["board"].soft_resets == 0


def test_cli_soft_reset(cli_board, capsys):
    assert cli.main(["reset", "--port", "fake"]) == 0
    assert capsys.readouterr().out.strip() == "soft reset done"
    assert cli_board["board"].soft_resets == 1


def test_cli_board_stops_answering_exit_2(cli_board, capsys):
    cli_board["after_connect"] = lambda board: setattr(board, "mode", "dead")
    assert returns(lambda: cli.main(["exec", "--port", "fake", "--timeout", "0.5", "print(1)"]),
                   what="edgekernel exec on a silent board") == 2
    err = capsys.readouterr().err
    assert err.startswith("edgekernel: fake-port: no acknowledgement of the code from the board")
    assert len(err.strip().splitlines()) == 1
