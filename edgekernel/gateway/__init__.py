"""Raspberry Pi gateways: kernels launched on a Pi over OpenSSH (see provisioner.py)."""
