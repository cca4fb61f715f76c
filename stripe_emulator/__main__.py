"""``python -m stripe_emulator`` entry point (see server.parse_args for options)."""

import sys

from .server import main

if __name__ == "__main__":
    sys.exit(main())
