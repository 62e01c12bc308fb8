"""``python -m edgekernel.emulator --emulator unix ...`` (same options as ``edgekernel board``)."""
import sys

from .cli import main

sys.exit(main())
