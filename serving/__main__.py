"""``python -m serving`` runs the ``ckptserve`` command."""

import sys

from serving.app.cli import main

sys.exit(main())
