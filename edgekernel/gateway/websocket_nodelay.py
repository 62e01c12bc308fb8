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

from typing import Any

from jupyter_server.gateway.connections import GatewayWebSocketConnection
from jupyter_server.services.kernels.connection.channels import ZMQChannelsWebsocketConnection

KERNEL_GATEWAY_OPTION = ("--KernelGatewayApp.kernel_websocket_connection_class="
                         "edgekernel.gateway.websocket_nodelay.NoDelayKernelWebsocketConnection")


def _nodelay(connection: Any) -> None:
    # open() runs after tornado's upgrade response, which is what switched Nagle back on.
    connection.websocket_handler.set_nodelay(True)


class NoDelayKernelWebsocketConnection(ZMQChannelsWebsocketConnection):
    """jupyter_server's WebSocket <-> kernel ZMQ bridge, sending each message at once."""

    def connect(self) -> Any:
        _nodelay(self)
        return super().connect()


class NoDelayGatewayWebsocketConnection(GatewayWebSocketConnection):
    """A Jupyter server's WebSocket to the browser relayed to a Kernel Gateway, sending at once."""

    async def connect(self) -> None:
        _nodelay(self)
        await super().connect()
