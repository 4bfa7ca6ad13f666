"""`python -m docteur.guest ...`: the guest server (see server.py)."""

import hashlib  # noqa: F401 - on the host, OpenSSL's SHA-1 for every object (objects.sha1)
import sys

from .server import main

sys.exit(main(sys.argv[1:]))
