import sys

from docteur.cli.main import main

sys.exit(main())
