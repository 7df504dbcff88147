"""``python -m talkie_kernels.server``: the same as ``talkie-kernels server``."""

import sys

from . import main

sys.exit(main())
