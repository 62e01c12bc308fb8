"""Entry point used by the kernelspecs: python -m edgekernel.kernel -f {connection_file}."""
from ipykernel.kernelapp import IPKernelApp

from .kernel import MicroPythonKernel

if __name__ == "__main__":
    IPKernelApp.launch_instance(kernel_class=MicroPythonKernel)
