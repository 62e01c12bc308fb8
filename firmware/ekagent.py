# edgekernel MQTT agent: runs notebook cells that arrive through an MQTT broker.
#
# Runs on ESP8266, ESP32 and the unix port. Start it with `import ekagent; ekagent.main()` (main.py
# does that after `edgekernel agent install`); settings come from ek_settings.json.
#
# Wire format (all topics under  edgekernel/<device-id>/ ; nothing but status is ever retained):
#   status  dev->host  retained, QoS 1: JSON {"state": "online", "impl", "version", "platform",
#           "mem_free", "agent", "client", "max_part", "interrupt"}; last will (retained):
#           {"state": "offline"}.
#   exec    host->dev  QoS 1: b"<rid> <i>/<n> <size>\n" + part i (0-based) of n of a cell of <size>
#           bytes. <rid> is unique per request (e.g. "<session>-<counter>"); parts are at most
#           max_part bytes and are copied into one preallocated buffer, compiled when the last one
#           is in. Redelivered parts and requests already run are ignored (QoS 1 is at least once).
#   ctl     host->dev  QoS 1: b"int <rid>" interrupts request <rid> (queued or running).
#   out     dev->host  QoS 0 (MQTT keeps order on one connection): b"<rid> <seq> <kind>\n<data>",
#           seq counting from 0 per request. Kinds: a = accepted (started running), o = output
#           bytes, v = repr() of the trailing expression, e = traceback text, b = refused (data says
#           why), d = done, data "ok <ms>", "err <ms>" or "int <ms>"; d is always the last.
#
# Output capture: os.dupterm where the port has it (ESP8266/ESP32), else a `print` in the cell's
# namespace that writes to an io.IOBase object (the unix port has no dupterm; sys.stdout.write and
# output printed by C code are not captured there).
#
# Interrupt (the agent must keep reading while a cell runs):
# - ports with os.dupterm: while a cell runs the MQTT socket has a data callback (the option WebREPL
#   uses, SOL_SOCKET 20); it reads the ctl message and makes the capture stream hand b"\x03" to
#   os.dupterm_notify, which raises KeyboardInterrupt in the running code as a UART Ctrl-C does.
# - the unix port: a _thread reads the socket all the time; on ctl "int" it signals SIGINT to this
#   process, which MicroPython turns into KeyboardInterrupt (only if its handler is installed).
# - neither (or TLS on a dupterm port): no interrupt; status says "interrupt": "none".
import gc
import io
import json
import socket
import sys
import time

try:
    import os
except ImportError:
    import uos as os

try:
    from umqtt.simple import MQTTClient
    CLIENT = "umqtt.simple"
except ImportError:
    from ekmqtt import MQTTClient
    CLIENT = "ekmqtt"

try:
    import _thread
except ImportError:
    _thread = None

AGENT_VERSION = "1"
SETTINGS_FILE = "ek_settings.json"
MAX_PART = 2048       # bytes of code per exec message (ESP8266: keep incoming messages small)
MAX_CELL = 16384      # a cell's largest size (ESP8266 has ~30 KB of fragmented heap)
CHUNK = 512           # output is published in chunks of at most this many bytes...
FLUSH_MS = 20         # ...and at least this often while a cell keeps printing
DONE_MEMORY = 8       # request ids remembered to drop redelivered requests


class _Capture(io.IOBase):
    # Output sink of a cell; on dupterm ports also the stream that injects Ctrl-C.
    def __init__(self, agent):
        self.agent = agent
        self.ctrl_c = False

    def write(self, data):
        self.agent.out(data)
        return len(data)

    def readinto(self, buf, n=-1):
        if self.ctrl_c:
            self.ctrl_c = False
            buf[0] = 3
            return 1
        return None

    def ioctl(self, op, arg):
        return 0


class _Helper:
    # `_ek` in the cell namespace: what the host's code rewriting and introspection call.
    def __init__(self, agent, g):
        self.agent = agent
        self.g = g

    def out(self, v):
        if v is not None:
            self.g["_"] = v
            self.val(v)

    def val(self, v):
        self.agent.flush()
        self.agent.send("v", repr(v))

    def publish(self, topic, msg, retain=False):
        # Telemetry from a cell, under this board's own topics: edgekernel/<id>/<topic>
        # (e.g. "telemetry/env"); anything but str/bytes is sent as JSON.
        self.publish_to(self.agent.base + topic, msg, retain)

    def publish_to(self, topic, msg, retain=False):
        # The same to a topic of your choice.
        if not isinstance(msg, (str, bytes, bytearray)):
            msg = json.dumps(msg)
        self.agent.publish(topic, msg, retain)

    def soft(self):
        # Clear the namespace: what a soft reset means to a notebook.
        self.agent.new_namespace()

    def inp(self, prompt=""):
        raise OSError("input() is not available over MQTT: set values in the cell instead")


def _pid():
    with open("/proc/self/stat") as f:
        return int(f.read().split()[0])


class Agent:
    def __init__(self, settings):
        self.s = settings
        self.base = "%s/%s/" % (settings.get("prefix", "edgekernel"), settings["device_id"])
        self.max_part = settings.get("max_part", MAX_PART)
        gc.collect()
        # Compiling needs several times the source's size in RAM: ~7 KB cells on an ESP8266.
        self.max_cell = settings.get("max_cell") or min(MAX_CELL, gc.mem_free() // 4)
        self.cap = _Capture(self)
        self.buf = bytearray()
        self.last_flush = time.ticks_ms()
        self.rid = None          # request running now
        self.seq = 0
        self.done = []           # recently finished request ids
        self.queue = []          # complete requests waiting to run: (rid, code buffer)
        self.asm = None          # request being assembled: [rid, next part, parts, buffer, filled]
        self.kill_at = None      # unix: when a SIGINT was asked for (not yet seen)
        self.client = None
        self.dupterm = hasattr(os, "dupterm") and hasattr(os, "dupterm_notify")
        # unix port: a reader thread; SIGINT via kill (with /proc), or a Ctrl-C written to stdin on
        # the emulated board, whose sandbox has neither /proc nor a shell.
        self.threaded = not self.dupterm and _thread is not None and sys.platform == "linux"
        self.pid = self._own_pid()
        self.lock = _thread.allocate_lock() if _thread else None
        self.ready = None
        self.reader_id = None
        self.owner = None
        self.publishing = False
        self.flushing = False
        self.timer = None
        self.alive = False
        self.new_namespace()

    def _own_pid(self):
        try:
            return _pid()
        except OSError:
            return None

    def new_namespace(self):
        g = {"__name__": "__main__"}
        g["_ek"] = _Helper(self, g)
        g["input"] = g["_ek"].inp
        if not self.dupterm:
            cap = self.cap
            _print = print

            def cell_print(*args, **kw):
                if "file" not in kw or kw["file"] is None:
                    kw["file"] = cap
                _print(*args, **kw)
            g["print"] = cell_print
        self.g = g
        gc.collect()

    # -- MQTT ----------------------------------------------------------------------------

    def interrupt_kind(self):
        if self.threaded:
            return "sigint"
        if self.dupterm and not self.s.get("ssl"):
            return "dupterm"
        return "none"

    def status(self):
        gc.collect()
        impl = sys.implementation
        return json.dumps({
            "state": "online", "impl": impl.name, "version": ".".join(str(v) for v in impl.version[:3]),
            "platform": sys.platform, "mem_free": gc.mem_free(), "agent": AGENT_VERSION,
            "client": CLIENT, "max_part": self.max_part, "max_cell": self.max_cell,
            "interrupt": self.interrupt_kind(), "device": self.s["device_id"]})

    def connect(self):
        s = self.s
        ssl = s.get("ssl") or False
        if ssl:
            try:
                import ssl as _ssl
                ctx = _ssl.SSLContext(_ssl.PROTOCOL_TLS_CLIENT)
                ctx.verify_mode = _ssl.CERT_NONE if not s.get("ca") else _ssl.CERT_REQUIRED
                if s.get("ca"):
                    ctx.load_verify_locations(cafile=s["ca"])
                ssl = ctx
            except (ImportError, AttributeError):
                ssl = True
        c = MQTTClient(s.get("client_id") or "ek-" + s["device_id"], s["broker"], s.get("port", 0),
                       s.get("user"), s.get("password"), s.get("keepalive", 30), ssl=ssl)
        c.set_callback(self.on_message)
        c.set_last_will(self.base + "status", b'{"state": "offline"}', retain=True, qos=1)
        c.connect()
        c.subscribe(self.base + "exec", 1)
        c.subscribe(self.base + "ctl", 1)
        c.publish(self.base + "status", self.status(), True, 1)
        self.client = c
        self.topic_out = self.base + "out"
        self.last_ping = time.ticks_ms()

    def send(self, kind, data=b""):
        # One output message of the running request. Never raises: a lost broker shows up in the loop.
        if self.rid is None:
            return
        head = "%s %d %s\n" % (self.rid, self.seq, kind)
        self.seq += 1
        self.publish(self.topic_out, head.encode() + (data.encode() if isinstance(data, str) else data))

    def publish(self, topic, payload, retain=False):
        self.locked(self._publish, topic, payload, retain)

    def _publish(self, topic, payload, retain=False):
        self.publishing = True
        try:
            if self.alive:
                self.client.publish(topic, payload, retain)
        except Exception:
            self.alive = False
        finally:
            self.publishing = False

    def out(self, data):
        # Output is buffered and published in chunks; what a cell printed last is published within
        # FLUSH_MS even if it then goes quiet (the reader thread or a timer calls tick()).
        self.locked(self._append, data.encode() if isinstance(data, str) else data)
        if len(self.buf) >= CHUNK or time.ticks_diff(time.ticks_ms(), self.last_flush) >= FLUSH_MS:
            self.flush()

    def _append(self, data):
        self.buf += data

    def flush(self):
        self.locked(self._flush)

    def _flush(self):
        self.flushing = True
        try:
            while self.buf:
                part = self.buf[:CHUNK]
                self.buf = self.buf[CHUNK:]
                self.send("o", part)
        finally:
            self.flushing = False
        self.last_flush = time.ticks_ms()

    def tick(self, _=None):
        # Called every FLUSH_MS while a cell runs: by the reader thread (holding the lock), or on
        # boards scheduled by a timer between bytecodes, so never in the middle of a publish.
        if (self.buf and not self.publishing and not self.flushing
                and time.ticks_diff(time.ticks_ms(), self.last_flush) >= FLUSH_MS):
            self._flush()

    # -- incoming messages (from the reader thread, a socket callback, or the main loop) -----

    def on_message(self, topic, msg):
        topic = topic.decode() if isinstance(topic, bytes) else topic
        if topic.endswith("/ctl"):
            words = msg.decode().split()
            if len(words) == 2 and words[0] == "int":
                self.interrupt(words[1])
            return
        nl = msg.find(b"\n")
        try:
            rid, part, size = msg[:nl].decode().split()
            i, n = part.split("/")
            i, n, size = int(i), int(n), int(size)
        except ValueError:
            return  # not ours: ignore rather than guess
        if rid in self.done or rid == self.rid or any(q[0] == rid for q in self.queue):
            return  # QoS 1 redelivery of something already run, running or queued
        a = self.asm
        if a is None or a[0] != rid:
            if i != 0:
                return  # a stray part of a request we dropped
            if size > self.max_cell:
                self.refuse(rid, "cell too large for this board: %d bytes (limit %d); upload it as a module "
                            "and import it" % (size, self.max_cell))
                return
            self.asm = None
            gc.collect()
            try:
                a = self.asm = [rid, 0, n, bytearray(size), 0]
            except MemoryError:
                self.refuse(rid, "not enough free RAM on the board for a %d-byte cell" % size)
                return
        if i != a[1]:
            return  # a duplicate of a part we have
        data = memoryview(msg)[nl + 1:]
        if a[4] + len(data) > len(a[3]):
            self.asm = None
            self.refuse(rid, "the cell's parts are larger than its announced size")
            return
        a[3][a[4]:a[4] + len(data)] = data
        a[4] += len(data)
        a[1] += 1
        if a[1] == a[2]:
            self.asm = None
            self.enqueue(rid, a[3] if a[4] == len(a[3]) else a[3][:a[4]])

    def refuse(self, rid, why):
        self.rid_send(rid, [("b", why), ("d", "err 0")])

    def rid_send(self, rid, messages):
        # Messages of a request that is not running (refused, interrupted before it started).
        for seq, (kind, data) in enumerate(messages):
            self.publish(self.base + "out", ("%s %d %s\n%s" % (rid, seq, kind, data)).encode())
        self.remember(rid)

    def remember(self, rid):
        self.done.append(rid)
        if len(self.done) > DONE_MEMORY:
            self.done.pop(0)

    def enqueue(self, rid, code):
        self.queue.append((rid, code))
        if self.ready is not None and self.ready.locked():
            self.ready.release()

    def interrupt(self, rid):
        for q in self.queue:
            if q[0] == rid:
                self.queue.remove(q)
                self.rid_send(rid, [("d", "int 0")])
                return
        if rid != self.rid:
            return
        if self.threaded:
            if self.kill_at is None:
                self.kill_at = time.ticks_ms()
                self.sigint()
        elif self.dupterm:
            self.cap.ctrl_c = True
            os.dupterm_notify(None)

    def sigint(self):
        if self.pid is None:
            # The emulated board (edgekernel.emulator.unix_board) takes a Ctrl-C written to its own
            # stdin as one from the serial line, and sends SIGINT only while the handler is installed.
            sys.stdin.buffer.write(b"\x03")
            return
        # SIGINT only while MicroPython's handler is installed (the default action would kill us).
        # system() ignores SIGINT in its caller while it runs, so the kill comes a moment later.
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("SigCgt:") and not int(line.split()[1], 16) & 2:
                    return
        os.system("(sleep 0.02; kill -INT %d) </dev/null >/dev/null 2>&1 &" % self.pid)

    # -- running cells ------------------------------------------------------------------

    def run(self, rid, code):
        self.rid = rid
        self.seq = 0
        self.buf = bytearray()
        self.last_flush = time.ticks_ms()
        start = time.ticks_ms()
        self.send("a")
        prev = None
        sock = None
        if self.dupterm:
            self.start_timer()
            prev = os.dupterm(self.cap, 0)
            if self.interrupt_kind() == "dupterm":
                sock = self.client.sock
                sock.setsockopt(socket.SOL_SOCKET, 20, self.on_socket_data)  # the callback WebREPL uses
        kind = "ok"
        try:
            try:
                exec(code, self.g)
            finally:
                if sock is not None:
                    sock.setsockopt(socket.SOL_SOCKET, 20, None)
                if self.dupterm:
                    os.dupterm(prev, 0)
                    self.stop_timer()
            if self.kill_at is not None:
                self.wait_for_sigint()  # asked to stop just as it ended: the signal lands here
        except BaseException as e:
            kind = "int" if isinstance(e, KeyboardInterrupt) else "err"
            if kind == "int":
                self.kill_at = None
            self.flush()
            tb = io.StringIO()
            sys.print_exception(e, tb)
            self.send("e", tb.getvalue())
        code = None
        self.flush()
        self.send("d", "%s %d" % (kind, time.ticks_diff(time.ticks_ms(), start)))
        self.locked(self.finish, rid)
        gc.collect()

    def finish(self, rid):
        self.remember(rid)
        self.rid = None

    def locked(self, fn, *args):
        # Shared state (queue, done list, output, the socket) is touched by the reader thread too;
        # there is no GIL on the unix port. Reentrant: the holder may call this again.
        if not self.threaded or self.owner == _thread.get_ident():
            return fn(*args)
        self.lock.acquire()
        self.owner = _thread.get_ident()
        try:
            return fn(*args)
        finally:
            self.owner = None
            self.lock.release()

    def next_request(self):
        return self.queue.pop(0) if self.queue else None

    def start_timer(self):
        # Boards: a virtual timer schedules tick() between the cell's bytecodes.
        try:
            import machine
            import micropython
        except ImportError:
            return
        for timer_id in (-1, 0):  # a virtual timer (ESP8266), else hardware timer 0 (ESP32)
            try:
                self.timer = machine.Timer(timer_id)
                self.timer.init(period=FLUSH_MS * 2, mode=machine.Timer.PERIODIC,
                                callback=lambda t: micropython.schedule(self.tick, None))
                return
            except Exception:
                self.timer = None

    def stop_timer(self):
        if self.timer is not None:
            self.timer.deinit()
            self.timer = None

    def on_socket_data(self, sock):
        # Dupterm ports, while a cell runs: a scheduled callback between the cell's bytecodes.
        try:
            self.client.check_msg()
        except Exception:
            self.alive = False

    # -- loops ------------------------------------------------------------------------------

    def reader(self):
        # unix port: this thread does all reading, so a ctl message is seen while a cell runs.
        import select
        self.reader_id = _thread.get_ident()
        client = self.client
        poller = select.poll()
        poller.register(client.sock, select.POLLIN)
        keepalive = self.s.get("keepalive", 30) * 1000
        while self.alive and self.client is client:  # a reconnect has a reader of its own
            events = poller.poll(FLUSH_MS if self.rid is not None else 1000)
            lock = self.lock
            lock.acquire()
            self.owner = self.reader_id
            try:
                if self.rid is not None:
                    self.tick()
                if events:
                    self.client.wait_msg()
                elif keepalive and time.ticks_diff(time.ticks_ms(), self.last_ping) > keepalive // 2:
                    self.client.ping()
                    self.last_ping = time.ticks_ms()
            except Exception as e:
                print("ekagent: reader stopped: %r" % (e,))
                self.alive = False
            finally:
                self.owner = None
                lock.release()
        if self.client is client and self.ready.locked():
            self.ready.release()

    def serve(self):
        self.alive = True
        if self.threaded:
            self.ready = _thread.allocate_lock()
            self.ready.acquire()
            _thread.start_new_thread(self.reader, ())
        while self.alive:
            try:
                request = self.locked(self.next_request)
                if request:
                    self.wait_for_sigint()
                    self.run(*request)
                elif self.threaded:
                    self.ready.acquire()
                else:
                    self.poll_once()
            except KeyboardInterrupt:
                if self.kill_at is None:
                    raise  # not ours: Ctrl-C on the board's console stops the agent
                self.kill_at = None

    def wait_for_sigint(self):
        # A SIGINT asked for during the last cell lands within ~0.1 s: take it here, not in the next cell.
        if self.kill_at is None:
            return
        try:
            while time.ticks_diff(time.ticks_ms(), self.kill_at) < 500:
                time.sleep_ms(5)
        except KeyboardInterrupt:
            pass
        self.kill_at = None

    def poll_once(self):
        try:
            self.client.sock.settimeout(1) if hasattr(self.client.sock, "settimeout") else None
            self.client.wait_msg()
        except OSError as e:
            if e.args and e.args[0] in (110, 116, 11):  # ETIMEDOUT / timed out / EAGAIN: idle
                keepalive = self.s.get("keepalive", 30) * 1000
                if keepalive and time.ticks_diff(time.ticks_ms(), self.last_ping) > keepalive // 2:
                    self.client.ping()
                    self.last_ping = time.ticks_ms()
                return
            self.alive = False
        except Exception:
            self.alive = False

    def stop(self):
        # A clean stop: say offline ourselves (a DISCONNECT suppresses the last will).
        self.alive = False
        try:  # QoS 0: a QoS 1 publish would wait for a PUBACK that the reader thread may take
            self.client.publish(self.base + "status", b'{"state": "offline"}', True, 0)
            self.client.disconnect()
        except Exception:
            pass
        self.alive = False


def load_settings(path=SETTINGS_FILE):
    with open(path) as f:
        return json.load(f)


def wifi(settings):
    # Boards: join the WLAN in the settings (the unix port has no network module and needs none).
    if not settings.get("wifi_ssid"):
        return
    try:
        import network
    except ImportError:
        return
    sta = network.WLAN(network.STA_IF)
    sta.active(True)
    if not sta.isconnected():
        sta.connect(settings["wifi_ssid"], settings.get("wifi_password", ""))
        for _ in range(300):
            if sta.isconnected():
                break
            time.sleep_ms(100)
    print("ekagent: wifi", "connected" if sta.isconnected() else "not connected", sta.ifconfig()[0])


def main(settings=None):
    """Run the agent for good: reconnect (with a growing pause) when the broker goes away."""
    s = settings or load_settings()
    wifi(s)
    agent = Agent(s)
    pause = 1
    while True:
        try:
            agent.connect()
            print("ekagent: online as %s on %s" % (s["device_id"], s["broker"]))
            pause = 1
            agent.serve()
        except KeyboardInterrupt:
            agent.stop()
            raise
        except Exception as e:
            print("ekagent: %r; reconnecting in %d s" % (e, pause))
        agent.alive = False
        try:
            agent.client.sock.close()
        except Exception:
            pass
        time.sleep(pause)
        pause = min(pause * 2, 8)   # back within seconds of the broker; 30 boards at 8 s are no load
