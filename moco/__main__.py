"""``python -m moco`` is the ``moco`` command."""

import sys

from moco.cli import main

sys.exit(main())
