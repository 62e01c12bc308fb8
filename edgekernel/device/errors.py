"""Errors of the device layer. Each message is one line that says what to do."""
from __future__ import annotations

from ..links.base import LinkClosed, LinkError

__all__ = ["LinkError", "LinkClosed", "DeviceError", "BoardNotResponding", "CodeTooLarge", "BoardBusy"]


class DeviceError(Exception):
    """The board did not behave as the protocol says."""


class BoardNotResponding(DeviceError):
    """No usable answer within the deadline."""


class CodeTooLarge(DeviceError):
    """The board cannot take this much code in one go."""


class BoardBusy(DeviceError):
    """Another operation holds the board (a background job, another thread)."""
