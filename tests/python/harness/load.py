"""Client load through a proxy, and reading it back (the rebalance tests).

- `MixedLoad`: one client thread looping set / get of the same key / get
  of another key at full speed, checking every get against the last
  acknowledged value.
- `versioned_value()`: the value it writes (names key and version).
- `read_back()`: every key read through the proxy, sorted into missing,
  stale and foreign.
"""

import array
import bisect
import random
import threading
import time

from pymemcache.client.base import Client as PymemcacheClient

from .wire import CLIENT_TIMEOUT_S


class MixedLoad:
    """One client thread looping through the memcached endpoint at `addr`
    at full speed, replies awaited: set a random key to a new value, get
    that key back, get another random key. `values` is every key's value
    now; the load keeps each key's last acknowledged value and checks every
    get against it. A set that failed may or may not have been applied, so
    its value is also accepted for the key until the next acknowledged set.

    Records when each operation completed (`done_at`, in order), every
    error (`errors`: (time, op, key, text)) and every get that answered
    anything but an acceptable value (`wrong`: (time, key, got, want))."""

    def __init__(self, addr, values, seed=1):
        self.addr = addr
        self.expected = dict(values)
        self.maybe = {}  # key -> values of failed sets since its last acknowledged one
        self.keys = sorted(values)
        self.done_at = array.array("d")
        self.errors = []
        self.wrong = []
        self.crashed = None
        self.seed = seed
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name="mixed-load")

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        """Stops the thread and waits for it (its last request may take up
        to the client timeout); `stopped()` says whether it did."""
        self.stopping.set()
        self.thread.join(CLIENT_TIMEOUT_S + 5)

    def stopped(self):
        """None if the thread ended cleanly, else what went wrong."""
        if self.thread.is_alive():
            return "the load thread did not stop"
        return None if self.crashed is None else f"the load thread crashed: {self.crashed}"

    def ops(self):
        return len(self.done_at)

    def ops_between(self, start, end):
        return bisect.bisect_right(self.done_at, end) - bisect.bisect_left(self.done_at, start)

    def acceptable(self, key):
        return {self.expected[key], *self.maybe.get(key, ())}

    def _run(self):
        try:
            self._loop()
        except BaseException as e:  # noqa: BLE001 — reported by stop()
            self.crashed = repr(e)

    def _loop(self):
        rng = random.Random(self.seed)
        c = PymemcacheClient(self.addr, default_noreply=False, connect_timeout=10, timeout=CLIENT_TIMEOUT_S)
        version = 0
        try:
            while not self.stopping.is_set():
                written = rng.choice(self.keys)
                version += 1
                value = versioned_value(written, version)
                try:
                    ok = c.set(written, value, noreply=False)
                    failure = None if ok is True else f"set answered {ok!r}"
                except Exception as e:  # noqa: BLE001 — every failure is a recorded outcome
                    failure = f"{type(e).__name__}: {e}"[:200]
                    c.close()  # a fresh connection for the next request
                now = time.monotonic()
                if failure is None:
                    self.expected[written] = value
                    self.maybe.pop(written, None)
                else:
                    self.errors.append((now, "set", written, failure))
                    self.maybe.setdefault(written, set()).add(value)
                self.done_at.append(now)
                for key in (written, rng.choice(self.keys)):
                    try:
                        got = c.get(key)
                    except Exception as e:  # noqa: BLE001
                        now = time.monotonic()
                        self.errors.append((now, "get", key, f"{type(e).__name__}: {e}"[:200]))
                        self.done_at.append(now)
                        c.close()
                        continue
                    now = time.monotonic()
                    if got not in self.acceptable(key):
                        self.wrong.append((now, key, got, self.expected[key]))
                    self.done_at.append(now)
        finally:
            c.close()


def versioned_value(key, version):
    """The value `MixedLoad` writes: names the key and the version, so a
    stale value can be told from a foreign one."""
    return f"{key}@{version}|".encode().ljust(64, b".")


def read_back(addr, expected, maybe=None, batch=500):
    """Reads every key of `expected` through the memcached endpoint at
    `addr` (get_many); returns (missing, stale, foreign): keys that are
    gone, that hold an older value of their own, or that hold anything
    else. `maybe` (key -> values) lists other acceptable values."""
    maybe = maybe or {}
    missing, stale, foreign = [], [], []
    c = PymemcacheClient(addr, default_noreply=False, connect_timeout=10, timeout=CLIENT_TIMEOUT_S)
    try:
        keys = sorted(expected)
        for start in range(0, len(keys), batch):
            part = keys[start : start + batch]
            got = c.get_many(part)
            for key in part:
                value = got.get(key)
                if value == expected[key] or value in maybe.get(key, ()):
                    continue
                if value is None:
                    missing.append(key)
                elif value.startswith(f"{key}@".encode()):
                    stale.append(key)
                else:
                    foreign.append(key)
    finally:
        c.close()
    return missing, stale, foreign
