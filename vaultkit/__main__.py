"""``python -m vaultkit``: the command line."""

import sys

from vaultkit.cli.main import main

sys.exit(main())
