# A small MQTT 3.1.1 client for MicroPython, with the same API as umqtt.simple.
#
# The agent imports umqtt.simple when the firmware has it frozen in (ESP8266 with >= 2 MiB flash,
# ESP32) and this module otherwise (the unix port; the PyPI copies of umqtt are broken).
# Two things matter for latency and are why this is not a line-for-line umqtt:
# - every packet is assembled first and goes out in ONE write (a header and a payload in two
#   writes meet Nagle's algorithm and the peer's delayed ACK: ~40 ms per message);
# - TCP_NODELAY is set on the socket where the firmware allows it.
import socket
import struct

try:
    from time import ticks_ms, ticks_diff
except ImportError:  # pragma: no cover - every current port has them
    from time import time as _t

    def ticks_ms():
        return int(_t() * 1000)

    def ticks_diff(a, b):
        return a - b


class MQTTException(Exception):
    pass


def _bytes(s):
    return s.encode() if isinstance(s, str) else bytes(s)


def _length(n):
    # The "remaining length" varint of the fixed header.
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | 0x80 if n else b)
        if not n:
            return out


def _field(data):
    data = _bytes(data)
    return struct.pack("!H", len(data)) + data


class MQTTClient:
    def __init__(self, client_id, server, port=0, user=None, password=None, keepalive=0,
                 ssl=None, ssl_params=None):
        self.client_id = client_id
        self.server = server
        self.port = port or (8883 if ssl else 1883)
        self.user = user
        self.pswd = password
        self.keepalive = keepalive
        self.ssl = ssl
        self.ssl_params = ssl_params or {}
        self.sock = None
        self.pid = 0
        self.cb = None
        self.lw_topic = None
        self.lw_msg = None
        self.lw_qos = 0
        self.lw_retain = False

    def _send(self, packet):
        view = memoryview(packet)
        while view:
            n = self.sock.write(view)
            if n is None:  # non-blocking socket, not writable yet
                continue
            view = view[n:]

    def _recv(self, n):
        data = self.sock.read(n)
        if not data:
            raise MQTTException("connection closed by the broker")
        while len(data) < n:
            more = self.sock.read(n - len(data))
            if not more:
                raise MQTTException("connection closed by the broker")
            data += more
        return data

    def _recv_length(self):
        n = shift = 0
        while True:
            b = self._recv(1)[0]
            n |= (b & 0x7F) << shift
            if not b & 0x80:
                return n
            shift += 7

    def _next_pid(self):
        self.pid = self.pid % 65535 + 1
        return self.pid

    def set_callback(self, f):
        self.cb = f

    def set_last_will(self, topic, msg, retain=False, qos=0):
        self.lw_topic = topic
        self.lw_msg = msg
        self.lw_qos = qos
        self.lw_retain = retain

    def connect(self, clean_session=True, timeout=None):
        addr = socket.getaddrinfo(self.server, self.port, 0, socket.SOCK_STREAM)[0][-1]
        self.sock = socket.socket()
        if timeout is not None and hasattr(self.sock, "settimeout"):
            self.sock.settimeout(timeout)
        self.sock.connect(addr)
        try:  # IPPROTO_TCP / TCP_NODELAY are 6 / 1 on Linux and lwIP; older firmware lacks the option
            self.sock.setsockopt(getattr(socket, "IPPROTO_TCP", 6), getattr(socket, "TCP_NODELAY", 1), 1)
        except (OSError, TypeError, ValueError):
            pass
        if self.ssl:
            import ssl as _ssl
            self.sock = _ssl.wrap_socket(self.sock, server_hostname=self.server, **self.ssl_params)
        flags = 0x02 if clean_session else 0
        body = bytearray(b"\x00\x04MQTT\x04")
        payload = _field(self.client_id)
        if self.lw_topic:
            flags |= 0x04 | (self.lw_qos & 3) << 3 | (0x20 if self.lw_retain else 0)
            payload += _field(self.lw_topic) + _field(self.lw_msg)
        if self.user is not None:
            flags |= 0x80
            payload += _field(self.user)
            if self.pswd is not None:
                flags |= 0x40
                payload += _field(self.pswd)
        body.append(flags)
        body += struct.pack("!H", self.keepalive)
        body += payload
        self._send(b"\x10" + _length(len(body)) + body)
        resp = self._recv(4)
        if resp[0] != 0x20 or resp[1] != 2:
            raise MQTTException("unexpected answer to CONNECT")
        if resp[3]:
            # 4: bad user name or password, 5: not authorised (MQTT 3.1.1 section 3.2.2.3)
            raise MQTTException("broker refused the connection (code %d)" % resp[3])
        return resp[2] & 1

    def disconnect(self):
        try:
            self._send(b"\xe0\x00")
        finally:
            self.sock.close()

    def ping(self):
        self._send(b"\xc0\x00")

    def publish(self, topic, msg, retain=False, qos=0):
        topic = _bytes(topic)
        msg = _bytes(msg)
        head = 0x30 | qos << 1 | (1 if retain else 0)
        body = _field(topic)
        pid = 0
        if qos:
            pid = self._next_pid()
            body += struct.pack("!H", pid)
        size = len(body) + len(msg)
        self._send(bytes([head]) + _length(size) + body + msg)
        if qos == 1:
            while True:
                op = self.wait_msg()
                if op == 0x40:
                    got = struct.unpack("!H", self._recv(3)[1:])[0]  # length byte (2), then the id
                    if got == pid:
                        return
        elif qos == 2:
            raise MQTTException("QoS 2 is not supported")

    def subscribe(self, topic, qos=0):
        pid = self._next_pid()
        body = struct.pack("!H", pid) + _field(topic) + bytes([qos])
        self._send(b"\x82" + _length(len(body)) + body)
        while True:
            op = self.wait_msg()
            if op == 0x90:
                resp = self._recv(4)
                if struct.unpack("!H", resp[1:3])[0] == pid:
                    if resp[3] == 0x80:
                        raise MQTTException("broker refused the subscription to %s" % topic)
                    return

    def wait_msg(self):
        # Returns None when a non-blocking socket had nothing, the opcode of a packet the caller
        # must finish reading (PUBACK, SUBACK), or None after handling a PUBLISH / PINGRESP.
        res = self.sock.read(1)
        self.sock.setblocking(True)
        if res is None:
            return None
        if res == b"":
            raise MQTTException("connection closed by the broker")
        op = res[0]
        if op == 0xD0:  # PINGRESP
            self._recv(1)
            return None
        if op & 0xF0 != 0x30:
            return op
        size = self._recv_length()
        topic_len = struct.unpack("!H", self._recv(2))[0]
        topic = self._recv(topic_len)
        size -= topic_len + 2
        pid = 0
        if op & 6:
            pid = struct.unpack("!H", self._recv(2))[0]
            size -= 2
        msg = self._recv(size) if size else b""
        if op & 6 == 2:
            self._send(b"\x40\x02" + struct.pack("!H", pid))
        if self.cb:
            self.cb(topic, msg)
        return None

    def check_msg(self):
        self.sock.setblocking(False)
        return self.wait_msg()
