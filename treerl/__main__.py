"""`python -m treerl ...`, the form torchrun starts:
torchrun --nproc_per_node N -m treerl train ..."""

import sys

from treerl.cli import main

sys.exit(main())
