"""MQTT: brokers for tests and demos, and (later) the host side of the board agent."""
