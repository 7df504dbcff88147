"""``python -m talkie_kernels.bench``: the same as ``talkie-kernels bench``."""

import sys

from .cli import main

sys.exit(main())
