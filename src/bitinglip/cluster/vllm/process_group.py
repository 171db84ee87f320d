"""vLLM's engine processes start in a process group of their own, so a stop signal reaches them only through us.

A Ctrl-C in a terminal (SIGINT) or `kill -- -PGID` (SIGTERM) goes to every process of the server's process
group. vLLM's engine core and its workers would then stop by themselves, in no order, while the server
still uses them: vLLM leaves a shared-memory segment behind (its resource tracker warns at exit) and the
server sees its engine die mid-stop. In a process group of their own they hear only the server, which drains
requests and then stops them in order, as it does for a SIGTERM sent to its pid alone. (A group, not a
session: Linux schedules each session as one "autogroup", so an engine in a session of its own is given
its own share of the CPU apart from the HTTP server's, which costs the server tokens/s on a small machine:
docs/performance.md.)

vLLM starts its processes with multiprocessing's `spawn`, which runs "the Python executable" on a command
line; `multiprocessing.set_executable()` (documented) names a small Python script that calls
`os.setpgid(0, 0)` and then becomes the real interpreter with the same arguments. The engine's processes
are still our children (the server reaps any that outlive it), only their process group differs. On the CPU
build the engine cores are forked from a fork server (`fork_server.py`), itself started through this script: they
are in its group, and its children.

Out of our process group, they would also miss the signals that used to take them down with a server that
could not stop them itself (a SIGKILL to the group, or a terminal's SIGHUP). So on Linux the script also asks
the kernel for SIGKILL when their parent dies (`PR_SET_PDEATHSIG`, kept across exec): an engine never
outlives its server, which it could before when only the server's pid was killed. SIGKILL, not SIGTERM: an
engine core whose server is gone has nobody to answer, and once, in a full test run, an engine core told with
SIGTERM was still up with its worker long after; its workers follow it through vLLM's own death pipe, and
the shared memory is freed by multiprocessing's resource tracker. The parent is, strictly, the thread that
spawned the engine core: the event loop's default executor thread, alive until the loop closes, after the
engine has been stopped. A fork clears the request, so a process forked from the fork server asks for it again
(`die_with_parent`), against the fork server, which is started from the server's main thread.
"""

from __future__ import annotations

import ctypes
import hashlib
import multiprocessing
import os
import signal
import sys
import tempfile
from pathlib import Path

from bitinglip.core import get_logger

log = get_logger(__name__)

_SCRIPT = """#!{python}
# Written by BitingLip: start vLLM's engine processes in a process group of their own, and have them stopped
# when the server is gone (see bitinglip/cluster/vllm/process_group.py).
import ctypes
import os
import signal
import sys

os.setpgid(0, 0)
if sys.platform == "linux":
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
os.execv({python!r}, [{python!r}, *sys.argv[1:]])
"""


def die_with_parent() -> None:
    """Ask the kernel for SIGKILL when this process's parent dies, as the script above does for a spawned process:
    for a process forked from the fork server (`fork_server.py`), since a fork clears the request."""
    if sys.platform == "linux":
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)


def spawn_in_own_group() -> None:
    """Make multiprocessing's spawned processes (vLLM's engine core, and through it its workers) start a
    process group of their own first."""
    python = sys.executable
    if not python or not hasattr(os, "setpgid"):
        return
    text = _SCRIPT.format(python=python)
    folder = Path(tempfile.gettempdir()) / f"bitinglip-{os.getuid()}"
    script = folder / f"python-own-group-{hashlib.sha1(python.encode()).hexdigest()[:12]}"
    try:
        if not script.is_file() or script.read_text() != text:
            folder.mkdir(mode=0o700, exist_ok=True)
            partial = script.with_name(f"{script.name}.{os.getpid()}")
            partial.write_text(text)
            partial.chmod(0o755)
            os.replace(partial, script)
    except OSError as exc:  # a read-only /tmp: the engine still works, it only hears group signals too
        log.warning("engine.own_group_unavailable", error=str(exc))
        return
    multiprocessing.set_executable(str(script))
