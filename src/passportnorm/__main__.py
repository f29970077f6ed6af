"""``python -m passportnorm`` and ``torchrun --nproc_per_node N -m passportnorm protect ...``."""

import sys

from .cli import main

sys.exit(main())
