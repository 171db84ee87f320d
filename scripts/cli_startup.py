"""How long `bitinglip` commands take from start to exit: the median of N runs (after one warm-up) of each, for
one or more source trees, one after the other on the same machine (the figures in docs/cli.md).

A tree is a checkout's root; its `src` goes first on PYTHONPATH, so the same virtualenv runs each tree's code.
`ps` and `run` need a server: start one (`make run`, or `bitinglip serve tiny`) where the settings say, or give
BITINGLIP_URL.

    .venv/bin/python scripts/cli_startup.py . [/tmp/older-checkout ...] [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

COMMANDS = {
    "--help": ["--help"],
    "ps": ["ps"],
    "ps (no server)": ["ps", "--url", "http://127.0.0.1:9"],
    "models list": ["models", "list"],
    "run --help": ["run", "--help"],
    "run tiny hi": ["run", "tiny", "-p", "max_tokens=4", "hi"],
}


def timed(tree: Path, argv: list[str], runs: int) -> tuple[list[float], int]:
    env = os.environ | {"PYTHONPATH": str(tree.resolve() / "src")}
    command = [str(Path(sys.executable).parent / "bitinglip"), *argv]
    times, code = [], 0
    for i in range(runs + 1):
        began = time.perf_counter()
        code = subprocess.run(command, env=env, capture_output=True, check=False).returncode
        if i:  # the first run warms the file cache
            times.append(time.perf_counter() - began)
    return times, code


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trees", nargs="+", type=Path, help="checkouts to compare")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    print(f"load average at the start: {os.getloadavg()[0]:.2f}")
    for tree in args.trees:
        print(f"== {tree}")
        for name, argv in COMMANDS.items():
            times, code = timed(tree, argv, args.runs)
            print(
                f"{name:<16} exit {code:<3} median {statistics.median(times):.3f} s "
                f"(min {min(times):.3f}, max {max(times):.3f})"
            )
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
