"""``python -m mimkit``: the ``mimkit`` command line."""

import sys

from mimkit.cli import main

sys.exit(main())
