"""A do-nothing kernel: the Jupyter protocol's floor on this machine (bench only)."""
from ipykernel.kernelapp import IPKernelApp
from ipykernel.kernelbase import Kernel


class NothingKernel(Kernel):
    implementation = "nothing"
    implementation_version = "0"
    language_info = {"name": "text", "mimetype": "text/plain", "file_extension": ".txt"}
    banner = "does nothing"

    async def do_execute(self, code, silent, store_history=True, user_expressions=None, allow_stdin=False, **kw):
        return {"status": "ok", "execution_count": self.execution_count, "payload": [], "user_expressions": {}}


if __name__ == "__main__":
    IPKernelApp.launch_instance(kernel_class=NothingKernel)
