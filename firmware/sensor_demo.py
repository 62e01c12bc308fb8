# A sensor-like publisher for MicroPython boards: JSON readings over MQTT.
#
#   import sensor_demo
#   sensor_demo.run("192.168.1.10", device_id="bench1", rate=5)
#
# publishes {"temperature": ..., "humidity": ..., "count": n} to
# edgekernel/<device_id>/telemetry/env `rate` times a second (until `count` readings, or forever),
# and the retained presence status the %mqtt devices magic shows. The readings are simulated (a
# slow wave plus noise) so the demo runs on any board; swap read() for a real sensor.
import json
import math
import time

try:
    from umqtt.simple import MQTTClient  # frozen into ESP8266 (>= 2 MiB) and ESP32 firmware
except ImportError:
    from ekmqtt import MQTTClient  # the project's own client (unix port, small ESP8266 builds)

try:
    import random

    def noise():
        return random.getrandbits(8) / 255 - 0.5
except ImportError:  # pragma: no cover - every current port has random
    def noise():
        return 0.0


def read(n):
    t = n / 20
    return {"temperature": round(21.5 + 2.0 * math.sin(t) + noise() * 0.2, 2),
            "humidity": round(45.0 + 5.0 * math.cos(t / 2) + noise(), 1),
            "count": n}


def _status(state):
    try:
        import gc
        mem = gc.mem_free()
    except Exception:
        mem = None
    import sys
    return json.dumps({"state": state, "impl": sys.implementation.name,
                       "version": ".".join(str(v) for v in sys.implementation.version[:3]),
                       "mem_free": mem, "agent": "sensor_demo"})


def run(server, port=1883, device_id="demo", rate=5.0, count=0, user=None, password=None):
    prefix = "edgekernel/%s/" % device_id
    client = MQTTClient("ek-sensor-" + device_id, server, port, user, password, keepalive=30)
    client.set_last_will(prefix + "status", '{"state": "offline"}', retain=True, qos=1)
    client.connect()
    client.publish(prefix + "status", _status("online"), retain=True, qos=1)
    topic = prefix + "telemetry/env"
    period_ms = int(1000 / rate) if rate else 0
    n = 0
    next_at = pinged = time.ticks_ms()
    try:
        while not count or n < count:
            client.publish(topic, json.dumps(read(n)))
            n += 1
            if time.ticks_diff(time.ticks_ms(), pinged) > 10000:
                client.check_msg()  # reads the previous PINGRESP (or nothing) without blocking
                client.ping()  # keeps the connection alive within keepalive=30
                pinged = time.ticks_ms()
            if period_ms:
                next_at = time.ticks_add(next_at, period_ms)
                wait = time.ticks_diff(next_at, time.ticks_ms())
                if wait > 0:
                    time.sleep_ms(wait)
        client.publish(prefix + "status", _status("finished"), retain=True, qos=1)
    finally:
        client.disconnect()
    return n
