"""Kernel WebSocket connections with Nagle's algorithm off, for Jupyter servers serving kernels.

Why: tornado (6.x) turns TCP_NODELAY back *off* on a connection once it has written the HTTP 101
that upgrades it to a WebSocket, and jupyter_server (2.x) never turns it on again. A kernel answers
a cell with several small messages (status busy, execute_input, execute_result, execute_reply,
status idle), each its own WebSocket frame; with Nagle on, a frame waits for the client's ACK of
the previous one, and the client delays that ACK by ~40 ms. That is the ~40 ms per round trip of
Kernel Gateway (issue 7). Select these classes by configuration (no patched packages):

    jupyter kernelgateway --KernelGatewayApp.kernel_websocket_connection_class=\
edgekernel.gateway.websocket_nodelay.NoDelayKernelWebsocketConnection
    jupyter lab --gateway-url=... --ServerApp.kernel_websocket_connection_class=\
edgekernel.gateway.websocket_nodelay.NoDelayGatewayWebsocketConnection
"""
from __future__ import annotations

import json
from typing import Any

from jupyter_client.jsonutil import json_default
from jupyter_server.gateway.connections import GatewayWebSocketConnection
from jupyter_server.services.kernels.connection.base import deserialize_msg_from_ws_v1, serialize_msg_to_ws_v1
from jupyter_server.services.kernels.connection.channels import ZMQChannelsWebsocketConnection
from tornado.websocket import WebSocketClosedError

KERNEL_GATEWAY_OPTION = ("--KernelGatewayApp.kernel_websocket_connection_class="
                         "edgekernel.gateway.websocket_nodelay.NoDelayKernelWebsocketConnection")


def _nodelay(connection: Any) -> None:
    # open() runs after tornado's upgrade response, which is what switched Nagle back on.
    connection.websocket_handler.set_nodelay(True)


class NoDelayKernelWebsocketConnection(ZMQChannelsWebsocketConnection):
    """jupyter_server's WebSocket <-> kernel ZMQ bridge, sending each message at once; and, for a
    kernel on a Pi, telling the user why it ended when its Pi went away (the front end would
    otherwise only see the kernel "restarting", then "dead"). The words go to the cell that ran
    last, as stderr, so a cell that was running when the Pi went down shows them."""

    _last_request: dict | None = None

    def connect(self) -> Any:
        _nodelay(self)
        return super().connect()

    def handle_incoming_message(self, incoming_msg: Any) -> None:
        try:
            if self.subprotocol == "v1.kernel.websocket.jupyter.org":
                channel, parts = deserialize_msg_from_ws_v1(incoming_msg)
                header = self.session.unpack(parts[0]) if channel == "shell" and parts else None
            elif isinstance(incoming_msg, str):
                msg = json.loads(incoming_msg)
                header = msg.get("header") if msg.get("channel", "shell") == "shell" else None
            else:
                header = None
            if header and header.get("msg_type") == "execute_request":
                self._last_request = header
        except (ValueError, KeyError, IndexError, TypeError):
            pass   # the server itself reports malformed messages
        super().handle_incoming_message(incoming_msg)

    def on_kernel_restarted(self) -> None:
        why = self._why_ended()
        if why:
            self._tell_user(f"{why}; starting it again")
        super().on_kernel_restarted()

    def on_restart_failed(self) -> None:
        why = self._why_ended()
        if why:
            self._tell_user(why)
        super().on_restart_failed()

    def _why_ended(self) -> str:
        why = getattr(getattr(self.kernel_manager, "provisioner", None), "why_ended", None)
        return why() if callable(why) else ""

    def _tell_user(self, text: str) -> None:
        msg = self.session.msg("stream", {"name": "stderr", "text": f"edgekernel: {text}\n"},
                               parent=self._last_request or {})
        try:
            if self.subprotocol == "v1.kernel.websocket.jupyter.org":
                self.write_message(serialize_msg_to_ws_v1(msg, "iopub", self.session.pack), binary=True)
            else:
                msg["channel"] = "iopub"
                self.write_message(json.dumps(msg, default=json_default))
        except WebSocketClosedError:
            pass   # nobody is listening: the server's log has it


class NoDelayGatewayWebsocketConnection(GatewayWebSocketConnection):
    """A Jupyter server's WebSocket to the browser relayed to a Kernel Gateway, sending at once."""

    async def connect(self) -> None:
        _nodelay(self)
        await super().connect()
