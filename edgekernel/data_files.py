"""Where edgekernel's data files are: the kernelspecs and the board firmware (the MQTT agent...).

A built wheel carries them inside the package, in ``edgekernel/data/`` (setup.py copies the
checkout's top-level ``kernelspecs/`` and ``firmware/`` there), so they sit next to the code
under every install scheme (venv, ``pip install --user``, ``--prefix``, ``--target``). A checkout
or an editable install has no ``edgekernel/data/``: the top-level directories are used.
"""
from __future__ import annotations

import errno
from importlib import resources
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent  # when that holds pyproject.toml


def data_dir(name: str) -> Path:
    """The directory of data `name` ("kernelspecs" or "firmware"); FileNotFoundError if missing."""
    packaged = resources.files("edgekernel") / "data" / name
    # A wheel is always unpacked onto the file system, so the packaged data is a real directory.
    if Path(str(packaged)).is_dir():
        return Path(str(packaged))
    if (CHECKOUT / "pyproject.toml").is_file() and (CHECKOUT / name).is_dir():
        return CHECKOUT / name
    raise FileNotFoundError(errno.ENOENT, f"edgekernel's {name} are missing from this installation: "
                            "reinstall it (pip install --force-reinstall edgekernel)", str(packaged))


def kernelspecs_dir() -> Path:
    return data_dir("kernelspecs")


def firmware_dir() -> Path:
    return data_dir("firmware")
