"""A classroom on JupyterHub: a real hub (DummyAuthenticator, local-process spawner,
configurable-http-proxy), three simulated Pis (network namespaces, each with its own sshd and an
emulated board), and four students who start board kernels and "any free board" kernels through
the hub's REST API, run cells over the kernel WebSocket, meet a busy board, meet a full room, get
culled by jupyter_server's idle culling, lose a Pi mid-cell (and get it back), and leave nothing on
any Pi when the hub stops.
Needs root (skips with the reason otherwise), JupyterHub and configurable-http-proxy (.ci/run)."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import pytest

from hub_lab import Hub, culling_args, hub_unavailable_reason, kernel_processes, leftovers_on_pis, pi_state
from pi_lab import REPO, PiLab, lab_unavailable_reason

pytestmark = pytest.mark.timeout(600)

CULL_IDLE = 15   # seconds a kernel with no WebSocket may stay idle before its server culls it
ANY_BOARD = "edgekernel-any-free-board"


def gateway_status(hub: Hub) -> dict[str, dict]:
    """`edgekernel gateway status --json` as the teacher runs it on the hub host."""
    r = subprocess.run([sys.executable, "-m", "edgekernel", "gateway", "status", "--json", "--prefix", str(hub.prefix)],
                       capture_output=True, text=True, timeout=120, env={"PYTHONPATH": REPO, "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    return {pi["name"]: pi for pi in json.loads(r.stdout)}


def holders(status: dict[str, dict]) -> dict[str, dict]:
    """{kernel id: holder record} over every board of every Pi."""
    return {b["holder"]["kernel_id"]: {**b["holder"], "pi": name, "device": b["device"]}
            for name, pi in status.items() for b in pi["boards"] if b["holder"]}


@pytest.fixture
def classroom(tmp_path):
    reason = lab_unavailable_reason() or hub_unavailable_reason()
    if reason:
        pytest.skip(reason)
    lab = PiLab(tmp_path / "lab", pis_count=3, boards=1)
    (tmp_path / "lab").mkdir()
    tmp_path.chmod(0o755)
    lab.up()
    hub = Hub(tmp_path / "hub", lab, server_args=culling_args(CULL_IDLE, 2))
    try:
        hub.register_pis()
        hub.start()
        yield hub
    finally:
        left_hub = hub.stop()
        left_pis = leftovers_on_pis(lab) if lab.ssh_config else {}
        namespaces = [pi.netns for pi in lab.pis.values()]
        lab.down()   # raises if any process was left in a Pi's namespace
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert not left_hub, f"hub processes left after it stopped: {left_hub}"
        assert not any(left_pis.values()), f"left on the Pis after the hub stopped: {left_pis}"
        assert not [n for n in namespaces if n in listed], listed


def test_a_classroom_on_jupyterhub(classroom: Hub):
    hub, lab = classroom, classroom.lab
    hub.add_users(["alice", "bob", "carol", "dave"])

    # alice picks pi1's board by name and runs a cell on it, through the hub's proxy.
    status, alice = hub.start_kernel("alice", hub.board_kernel("pi1"))
    assert status == 201, (status, alice, hub.log_tail())
    alice_ws = hub.connect("alice", alice["id"])
    cell = alice_ws.execute("import sys\nprint(sys.implementation.name, 6 * 7)")
    assert cell.status == "ok" and "micropython 42" in cell.stdout, cell
    assert f"{lab.pis['pi1'].address}/24" in alice_ws.execute(
        "%%local\nimport subprocess\nprint(subprocess.run(['ip', '-4', '-o', 'addr'], capture_output=True, "
        "text=True).stdout)").stdout

    # bob wants the same board: refused, told by whom (hub user and kernel); takes any free board.
    status, refused = hub.start_kernel("bob", hub.board_kernel("pi1"))
    message = refused.get("message", "") if isinstance(refused, dict) else str(refused)
    assert status == 500 and f"in use by kernel {alice['id']} (hub user alice" in message, (status, refused)
    assert "'edgekernel gateway status' shows them" in message, message
    assert "\n" not in message.strip() and hub.kernels("bob") == []

    # bob and carol start "any free board" at the same moment: the board locks decide.
    answers: dict[str, tuple] = {}
    threads = [threading.Thread(target=lambda u=u: answers.__setitem__(u, hub.start_kernel(u, ANY_BOARD)))
               for u in ("bob", "carol")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert all(answers[u][0] == 201 for u in ("bob", "carol")), (answers, hub.log_tail())
    bob, carol = answers["bob"][1], answers["carol"][1]
    # (bob's browser speaks the binary v1 kernel protocol, as JupyterLab does; the others JSON)
    sockets = {"alice": alice_ws, "bob": hub.connect("bob", bob["id"], v1=True),
               "carol": hub.connect("carol", carol["id"])}
    held = holders(gateway_status(hub))
    assert {held[k]["user"] for k in (alice["id"], bob["id"], carol["id"])} == {"alice", "bob", "carol"}
    assert held[alice["id"]]["pi"] == "pi1" and {held[bob["id"]]["pi"], held[carol["id"]]["pi"]} == {"pi2", "pi3"}

    # dave finds the room full: one line saying so and how to see who holds the boards.
    status, full = hub.start_kernel("dave", ANY_BOARD)
    assert status == 500 and full["message"] == (
        "no free board: all 3 boards on 3 Pis are in use; see who holds them with 'edgekernel gateway status', "
        "or try again when one is shut down"), full

    # Everyone with a kernel runs cells at once; each runs on its own board.
    results: dict[str, list] = {}

    def work(user: str) -> None:
        results[user] = [sockets[user].execute(f"x = {i}\nprint('{user}', x * x)") for i in range(5)]
    threads = [threading.Thread(target=work, args=(u,)) for u in sockets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    for user, cells in results.items():
        # (a kernel's first board cell also says which board it connected to)
        assert [c.stdout.strip().splitlines()[-1] for c in cells] == [f"{user} {i * i}" for i in range(5)], cells
    assert set(results) == set(sockets)

    # carol closes her tab and walks away: her server culls the idle kernel, and her board is free.
    carol_board = held[carol["id"]]

    def carol_on_the_pi() -> dict:
        return next(k for k in pi_state(lab)[carol_board["pi"]]["kernels"] if k["kernel_id"] == carol["id"])
    deadline = time.monotonic() + 60
    while carol_on_the_pi()["last_activity"] is None:   # the server's last activity, relayed with heartbeats
        assert time.monotonic() < deadline, "the kernel's last activity never reached the Pi"
        time.sleep(1)
    assert carol_on_the_pi()["user"] == "carol"
    sockets.pop("carol").close()
    deadline = time.monotonic() + 6 * CULL_IDLE
    while hub.kernels("carol"):
        assert time.monotonic() < deadline, f"carol's idle kernel was not culled: {hub.log_tail()}"
        time.sleep(1)
    assert carol["id"] not in holders(gateway_status(hub))
    assert not [p for p in kernel_processes(lab)[carol_board["pi"]] if str(carol["id"]) in _cmdline(p)]
    # ...so dave gets that board now.
    status, dave = hub.start_kernel("dave", ANY_BOARD)
    assert status == 201, dave
    assert holders(gateway_status(hub))[dave["id"]]["device"] == carol_board["device"]
    sockets["dave"] = hub.connect("dave", dave["id"])
    assert sockets["dave"].execute("1+1").result == "2"
    # Kernels with an open WebSocket were not culled, however idle.
    assert [k["id"] for k in hub.kernels("alice")] == [alice["id"]]
    assert sockets["bob"].execute("2+2").result == "4"

    # bob's Pi goes off the network while bob's cell runs.
    bob_pi = held[bob["id"]]["pi"]
    dave_pi = holders(gateway_status(hub))[dave["id"]]["pi"]
    assert {bob_pi, dave_pi} == {"pi2", "pi3"}
    running = sockets["bob"].send_execute("import time\nfor i in range(120):\n    time.sleep(1)")
    sockets["bob"].messages_until(lambda m: m["header"]["msg_type"] == "execute_input", 30)
    lab.set_link(bob_pi, up=False)
    try:
        # Everyone else carries on meanwhile (their Pis and connections are their own).
        for user in ("alice", "dave"):
            assert sockets[user].execute("3*3").result == "9", user
        # bob is told, in the cell that was running: the connection went, the kernel ended, what to do.
        told = sockets["bob"].messages_until(
            lambda m: m["header"]["msg_type"] == "status" and m["content"]["execution_state"] == "dead", 120)
        said = [m["content"]["text"] for m in told if m["header"]["msg_type"] == "stream"
                and m["parent_header"].get("msg_id") == running]
        assert said and said[-1].startswith(f"edgekernel: this kernel ended: lost the connection to {bob_pi}, "
                                            f"and cannot reach {bob_pi} over SSH"), said
        assert "'MicroPython on any free board'" in said[-1] and said[-1].count("\n") == 1, said
        assert hub.kernels("bob") == []   # dead and gone from bob's server, not listed as idle
        # A start meanwhile skips the Pi that is down, and says so.
        status, full = hub.start_kernel("bob", ANY_BOARD)
        assert status == 500 and full["message"].startswith(
            "no free board: every board on the Pis that answered is in use, and 1 of the 3 Pis did not answer "
            f"(cannot reach {bob_pi} over SSH"), full
        status, refused = hub.start_kernel("bob", hub.board_kernel(bob_pi))
        assert status == 500 and f"cannot reach {bob_pi} over SSH" in refused["message"], refused
        down = gateway_status(hub)[bob_pi]
        assert not down["reachable"] and bob_pi in down["error"], down
        assert sockets["alice"].execute("4*4").result == "16" and sockets["dave"].execute("5*5").result == "25"
    finally:
        lab.set_link(bob_pi, up=True)
    # bob's Pi is back: the kernel it lost ended there too (no SSH session, no heartbeats), so its
    # board is free and used again.
    deadline = time.monotonic() + 60
    while pi_state(lab)[bob_pi]["kernels"] or kernel_processes(lab)[bob_pi]:
        assert time.monotonic() < deadline, f"bob's lost kernel still runs on {bob_pi}: {pi_state(lab)[bob_pi]}"
        time.sleep(1)
    status, bob2 = hub.start_kernel("bob", ANY_BOARD)
    assert status == 201, bob2
    assert holders(gateway_status(hub))[bob2["id"]]["pi"] == bob_pi
    sockets["bob"].close()
    sockets["bob"] = hub.connect("bob", bob2["id"])
    assert sockets["bob"].execute("6*7").result == "42"
    for ws in sockets.values():
        ws.close()
    # The fixture stops the hub (without deleting the kernels first) and checks every Pi is empty.


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""
