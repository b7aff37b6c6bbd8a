"""``python -m serving`` runs the ``ckptserve`` command."""

import sys

from serving.cli import main

sys.exit(main())
