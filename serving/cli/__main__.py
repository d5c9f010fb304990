"""``python -m serving.cli`` = the ``rmn`` console script."""

import sys

from serving.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
