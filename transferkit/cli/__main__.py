"""``python -m transferkit.cli``: the ``transferkit`` command without the console script."""

import sys

from . import main

sys.exit(main())
