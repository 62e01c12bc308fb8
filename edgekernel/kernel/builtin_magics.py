"""The modules whose import registers the kernel's magics in magics.REGISTRY.

A new magic module is one more line here (kept apart from kernel.py so adding one touches no other code).
"""
from . import connect_magics  # noqa: F401
from . import file_magics  # noqa: F401
from . import mip_magics  # noqa: F401
from . import mount_magics  # noqa: F401
from . import session_magics  # noqa: F401
from . import toolchain_magics  # noqa: F401
from . import plot_magics  # noqa: F401
