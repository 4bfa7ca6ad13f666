"""`python -m docteur.guest ...`: the guest server (see server.py)."""

import sys

from .server import main

sys.exit(main(sys.argv[1:]))
