"""A rank of a distributed run that exits when a peer is lost instead of waiting forever.

MLX's ring backend (the one ``mlx.launch --backend ring`` sets up: TCP, or
Thunderbolt between Macs) raises for the collectives in flight when a peer
dies, but blocks forever on those queued after it. ``exit_on_lost_peer``,
installed by ``loader.sharded_load``, watches for the backend's message and
ends the process with ``LOST_PEER_EXIT``.
"""

from __future__ import annotations

import atexit
import os
import threading
import time
from typing import Optional

#: What MLX's ring backend prints when it gives up on a socket.
_RING_ABORT = b"[ring] Too many send/recv errors"
#: The exit status of a rank that lost a peer.
LOST_PEER_EXIT = 75
_watchdog: Optional[threading.Thread] = None


def exit_on_lost_peer(grace: float = 3.0) -> None:
    """Make this process exit (status ``LOST_PEER_EXIT``) when the ring backend
    loses a peer, instead of waiting forever.

    MLX's ring backend raises ``RuntimeError("[ring] connection to a peer was
    lost")`` for the collectives in flight when a peer dies, but abandons the
    ones queued after it: a generation loop, which queues the next step's
    all_sums while the current one runs, then blocks in C++ for good (no
    exception, no timeout). The only trace is the backend's message on stderr,
    so this watches it: fd 2 goes through a pipe that a daemon thread copies to
    the real stderr; on the message, the process gets ``grace`` seconds to
    raise and exit on its own, then ends with ``os._exit``. Installed once per
    process by ``loader.sharded_load`` when the world has more than one rank; fd 2 is
    restored (and the pipe drained) at exit.
    """
    global _watchdog
    if _watchdog is not None:
        return
    real = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def pump():
        tail = b""
        forward = True
        while True:
            try:
                data = os.read(read_end, 65536)
            except OSError:
                return
            if not data:
                return
            view = memoryview(data)
            while forward and view:
                try:
                    view = view[os.write(real, view):]
                except OSError:
                    forward = False  # the real stderr is gone: keep draining the pipe
            tail = (tail + data)[-len(_RING_ABORT) - 65536:]
            if _RING_ABORT in tail:
                tail = b""
                threading.Thread(target=_exit_later, args=(real, grace), daemon=True).start()

    def restore():
        # Closing the pipe's write end (fd 2) lets pump copy what is left and stop.
        os.dup2(real, 2)
        _watchdog.join(timeout=2.0)

    _watchdog = threading.Thread(target=pump, name="talkie-lost-peer", daemon=True)
    _watchdog.start()
    atexit.register(restore)


def _exit_later(fd: int, grace: float) -> None:
    time.sleep(grace)
    try:
        os.write(
            fd,
            b"talkie_kernels: a peer of the distributed group is gone (MLX's ring backend "
            b"aborted its connection); exiting instead of waiting for it forever\n",
        )
    finally:
        os._exit(LOST_PEER_EXIT)
