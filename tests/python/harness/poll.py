"""Waiting for a condition: `poll` and `Watch`.

Deadlines bound a hang; they are not waits: `poll` returns as soon as its
condition holds (STYLE.md rule 25).
"""

import time

import pytest

# After the first check `poll` waits the shortest interval, doubling up to
# the longest: quick to see a quick change, light on the servers (REST
# round trips to every node) through a long wait.
SHORTEST_INTERVAL_S = 0.01
LONGEST_INTERVAL_S = 0.05


def poll(condition, deadline_s, what):
    """Calls `condition` until it returns a true value (returned) or the
    deadline passes; the failure names `what` and, if `condition` has a
    `last` attribute (a `Watch`), what it saw last."""
    deadline = time.monotonic() + deadline_s
    interval = SHORTEST_INTERVAL_S
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            last = getattr(condition, "last", None)
            seen = f"; last seen: {last}" if last is not None else ""
            pytest.fail(f"timed out after {deadline_s}s waiting for {what}{seen}", pytrace=False)
        time.sleep(interval)
        interval = min(2 * interval, LONGEST_INTERVAL_S)


class Watch:
    """A poll condition that keeps what it saw last, for the failure
    message: `Watch(fn)` where `fn(watch)` sets `watch.last` and returns
    truthy when done."""

    def __init__(self, fn):
        self.fn = fn
        self.last = None

    def __call__(self):
        return self.fn(self)
