"""The Jupyter kernel (host side). Imports ipykernel; the device layer does not."""
