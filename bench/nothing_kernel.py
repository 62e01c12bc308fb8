"""Do-nothing kernels: the Jupyter protocol's floor on this machine (bench only).

    python nothing_kernel.py [--out] [--ipython] -f CONNECTION_FILE

--out: answer "1+1" with an Out[n] (an execute_result message), the messaging
any kernel that shows a value must do. --ipython: built on IPythonKernel (as
edgekernel is, for %%local, widgets and comms) instead of the bare Kernel base.
"""
import sys

from ipykernel.ipkernel import IPythonKernel
from ipykernel.kernelapp import IPKernelApp
from ipykernel.kernelbase import Kernel

SHOW_OUT = "--out" in sys.argv
BASE = IPythonKernel if "--ipython" in sys.argv else Kernel
sys.argv = [a for a in sys.argv if a not in ("--out", "--ipython")]


class NothingKernel(BASE):  # type: ignore[misc, valid-type]
    implementation = "nothing"
    implementation_version = "0"
    language_info = {"name": "text", "mimetype": "text/plain", "file_extension": ".txt"}
    banner = "does nothing"

    async def do_execute(self, code, silent, store_history=True, user_expressions=None, allow_stdin=False, **kw):
        count = self.execution_count
        if SHOW_OUT and code == "1+1" and not silent:
            self.send_response(self.iopub_socket, "execute_result",
                               {"execution_count": count, "data": {"text/plain": "2"}, "metadata": {}})
        return {"status": "ok", "execution_count": count, "payload": [], "user_expressions": {}}


if __name__ == "__main__":
    IPKernelApp.launch_instance(kernel_class=NothingKernel)
