"""Child process for the kill-and-resume test: pull one repo from a hub stand-in, until it is killed.

Usage: python hub_kill_child.py ENDPOINT REPO_ID REVISION DEST
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a plain script: make `bitinglip` importable from the source tree.
sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "src"))

from bitinglip.models.hub import HubClient


def main() -> None:
    endpoint, repo_id, revision, dest = sys.argv[1:5]
    client = HubClient(endpoint=endpoint, timeout=30.0)
    snapshot = client.resolve(repo_id, revision)
    client.download(snapshot, list(snapshot.files), Path(dest))


if __name__ == "__main__":
    main()
