"""`python -m bitinglip.cli`, the same as the `bitinglip` command."""

import os
import sys

from bitinglip.cli import main

if __name__ == "__main__":  # vLLM's engine core is spawned: the entry point must be guarded
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
