"""``python -m edgekernel.emulator --emulator unix ...`` (same options as ``edgekernel board``)."""
import sys

from .board_command import main

sys.exit(main())
