import sys

from bitinglip.cli import main

if __name__ == "__main__":  # vLLM's engine core is spawned: the entry point must be guarded
    sys.exit(main())
