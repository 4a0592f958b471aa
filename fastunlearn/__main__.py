"""``python -m fastunlearn`` — the same as the ``fastunlearn`` command (so ``torchrun -m fastunlearn`` works)."""
import sys

from fastunlearn.cli import main

sys.exit(main())
