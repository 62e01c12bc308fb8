"""The MicroPython kernel with one fault injected, for tests/test_kernel_requests.py.

    EDGEKERNEL_TEST_FAULT="package.module:Name.attr[!exc_module:ExcName]" python faulty_kernel.py -f CONNECTION_FILE

replaces that attribute with a function that raises (RuntimeError, or the
named exception class) before the kernel starts, so a test can make any step
of any request fail the way a bug or a missing tool would.
"""
from __future__ import annotations

import importlib
import os
import sys


def inject(spec: str) -> None:
    target, _, raises = spec.partition("!")
    module_name, _, path = target.partition(":")
    owner = importlib.import_module(module_name)
    *outer, name = path.split(".")
    for part in outer:
        owner = getattr(owner, part)
    exc_type: type[BaseException] = RuntimeError
    if raises:
        exc_module, _, exc_name = raises.partition(":")
        exc_type = getattr(importlib.import_module(exc_module), exc_name)

    def injected(*args: object, **kwargs: object) -> None:
        raise exc_type(f"injected fault in {target}")

    setattr(owner, name, injected)


if __name__ == "__main__":
    from ipykernel.kernelapp import IPKernelApp

    from edgekernel.kernel.kernel import MicroPythonKernel

    inject(os.environ["EDGEKERNEL_TEST_FAULT"])
    IPKernelApp.launch_instance(kernel_class=MicroPythonKernel)
