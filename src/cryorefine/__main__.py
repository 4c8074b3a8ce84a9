"""``python -m cryorefine`` runs the command line."""

import sys

from cryorefine.cli.main import main

sys.exit(main())
