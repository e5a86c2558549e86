"""``python -m medgen``: the same as the ``medgen`` command (see :mod:`medgen.cli`)."""
import sys

from medgen.cli import main

sys.exit(main())
