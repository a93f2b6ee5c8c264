"""``python -m nonnormal.cli``: the ``nonnormal`` command."""

import sys

from . import main

sys.exit(main())
