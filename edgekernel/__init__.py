"""edgekernel: MicroPython boards from Jupyter."""
__version__ = "0.1.0"
