"""A failure on one rank reaches every rank within seconds, with its message.

A rank that raises leaves the others in their next collective: gloo peers see "connection closed by
peer" (not why), NCCL peers on other nodes wait for NCCL's watchdog or ``DIST_TIMEOUT_MIN``. So every
rank of a group watches the rendezvous store (served by the launcher, torchrun's agent or rank 0) from
a thread: a rank that fails writes its message there (:func:`report`) and keeps its process, and so
the store, up until the others have read it; each other rank prints that message and exits at once
with the failing rank's exit code, whatever collective it was waiting in.

Nodes of HigherHRNet's ``tcp://`` launch agree on their start-up checks the same way before any
process starts (:func:`agree_across_nodes`): one node's config error ends every node.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import torch.distributed as dist

POLL_S = 1.0  # how often a rank looks for a failure
WAIT_FOR_PEERS_S = 30.0  # how long a failing rank keeps the store up for the others to read it


def _key(name: str) -> str:
    # torchrun's agent keeps its store across restarts of the workers: each attempt has its own keys.
    return f"higherpose/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/{name}"


@dataclass
class _Watch:
    store: Any
    rank: int
    world_size: int
    what: str
    stop: threading.Event = field(default_factory=threading.Event)
    handling: bool = False  # this rank reports its own failure: the watcher stands down


_watch: _Watch | None = None


def store_address(init_method: str) -> tuple[str, int] | None:
    """``(host, port)`` of the rendezvous store behind ``init_method`` (``store://``, ``tcp://``;
    ``env://``: ``MASTER_ADDR`` / ``MASTER_PORT``), or None where there is none to reach."""
    if init_method.startswith(("store://", "tcp://")):
        host, _, port = init_method.split("://", 1)[1].rpartition(":")
        return (host, int(port)) if host and port.isdigit() else None
    if init_method.startswith("env://"):
        host, port = os.environ.get("MASTER_ADDR", ""), os.environ.get("MASTER_PORT", "")
        return (host, int(port)) if host and port.isdigit() else None
    return None


def connect(host: str, port: int, timeout_s: float) -> Any:
    """A client of the TCPStore at ``host:port`` (its own connection, so a thread may use it)."""
    import datetime

    return dist.TCPStore(host, port, None, False, timeout=datetime.timedelta(seconds=timeout_s))


def watch(init_method: str, rank: int, world_size: int, what: str, timeout_s: float = 60.0) -> bool:
    """Start this rank's watcher (after it has joined the group); ``what`` prefixes the message it prints,
    e.g. ``'dist_train.py'``. Returns False (nothing watched) where the store cannot be reached."""
    global _watch
    address = store_address(init_method)
    if address is None or world_size <= 1:
        return False
    try:
        store = connect(*address, timeout_s)
    except Exception:  # noqa: BLE001 - no watcher: failures then surface as the collectives see them
        return False
    _watch = _Watch(store, rank, world_size, what)
    threading.Thread(target=_poll, args=(_watch,), name="higherpose-failure-watch", daemon=True).start()
    return True


def _poll(w: _Watch) -> None:
    key = _key("failure")
    while not w.stop.wait(POLL_S):
        try:
            if not w.store.check([key]):
                continue
            value = w.store.get(key).decode()
        except Exception:  # noqa: BLE001 - the store has gone: the run is over, or the collectives will say
            return
        if w.handling or w.stop.is_set():
            return
        code, _, message = value.partition(" ")
        print(f"{w.what}: [rank {w.rank}] stopping: {message}", file=sys.stderr, flush=True)
        try:
            w.store.set(_key(f"stopped/{w.rank}"), "1")
        except Exception:  # noqa: BLE001, S110 - exiting anyway
            pass
        os._exit(int(code) if code.isdigit() else 1)


def report(message: str, code: int) -> str:
    """This rank failed with ``message`` (exit code ``code``): tell every rank, wait (at most
    :data:`WAIT_FOR_PEERS_S`) until they have stopped, and return the failure the others were told of —
    ``rank R: message`` of the first rank that reported (``message`` of this one when it was first, or
    when no watcher runs)."""
    own = f"rank {_watch.rank if _watch else 0}: {message}"
    w = _watch
    if w is None:
        return own
    w.handling = True
    try:
        w.store.compare_set(_key("failure"), "", f"{code} {own}")
        first = w.store.get(_key("failure")).decode().partition(" ")[2]
        w.store.set(_key(f"stopped/{w.rank}"), "1")
        _wait_stopped(w.store, range(w.world_size), WAIT_FOR_PEERS_S)
    except Exception:  # noqa: BLE001 - the store has gone: nothing more to tell
        return own
    return first


def _wait_stopped(store: Any, ranks: Any, timeout_s: float) -> None:
    keys = [_key(f"stopped/{r}") for r in ranks]
    deadline = time.monotonic() + timeout_s
    while keys and not store.check(keys) and time.monotonic() < deadline:
        time.sleep(0.2)


def stop_watching() -> None:
    """End this rank's watcher (the run ends normally; called before leaving the group)."""
    global _watch
    if _watch is not None:
        _watch.stop.set()
        _watch = None


def wait_for_ranks(store: Any, ranks: Any, timeout_s: float = WAIT_FOR_PEERS_S) -> None:
    """In the process that serves the store, after its own ranks ended with a failure: keep the store up
    until ``ranks`` (those of the other nodes) have stopped, having read it; at most ``timeout_s``."""
    try:
        if store.check([_key("failure")]):
            _wait_stopped(store, ranks, timeout_s)
    except Exception:  # noqa: BLE001, S110 - the store has gone
        pass


def agree_across_nodes(store: Any, node: int, nodes: int, error: str | None, timeout_s: float) -> list[str]:
    """Every node's start-up error (``node N: message``), the same list on every node: each node posts
    ``error`` (None: none) and waits for the others'. The node serving the store (node 0) keeps it up
    until every node has read them."""
    import datetime

    store.set(_key(f"preflight/{node}"), "" if error is None else error)
    keys = [_key(f"preflight/{n}") for n in range(nodes)]
    store.wait(keys, datetime.timedelta(seconds=timeout_s))
    errors = [f"node {n}: {store.get(k).decode()}" for n, k in enumerate(keys) if store.get(k)]
    read = store.add(_key("preflight/read"), 1)
    if errors and node == 0:
        deadline = time.monotonic() + timeout_s
        while read < nodes and time.monotonic() < deadline:
            time.sleep(0.2)
            read = store.add(_key("preflight/read"), 0)
    return errors
