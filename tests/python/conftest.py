"""Fixtures of the Python end-to-end tests (the harness they use is the
`harness` package beside this file).

- `memcached_server`, `shoal_node` (module-scoped; tests in a module share
  one server and use their own keys): Debian's memcached 1.6.18, the
  reference the differential tests compare against, and `shoal node
  --standalone`; both refuse values above 1 MiB. A crash at shutdown fails
  the module's last test.
- `harness`, `module_harness`: a `Harness` that stops everything the test
  (or module) started.
- The report hook: a failing test's report gets the logs of every process
  its fixtures started.
"""

import signal

import pytest

# Assertions in the harness get pytest's rewriting too (registered before
# anything imports it).
pytest.register_assert_rewrite("harness")

from harness import Harness, report_sections  # noqa: E402

# Both servers refuse values above 1 MiB, so "too large" means the same on
# each side of the differential test.
MAX_VALUE_BYTES = 1024 * 1024


def serve(start):
    """The one server `start(harness)` starts, for a module; a graceful stop
    on SIGTERM is part of the contract (DESIGN.md: graceful drain)."""
    with Harness() as h:
        server = start(h)
        yield server
        code = server.stop()
        # -9: it did not exit in time and was killed.
        assert code in (0, -signal.SIGTERM), f"{server.name} exited with {code} on SIGTERM; stderr:\n{server.stderr_text()}"


@pytest.fixture(scope="module")
def memcached_server():
    """A running memcached: `.addr` is its (host, port)."""
    yield from serve(lambda h: h.memcached("memcached", "-I", f"{MAX_VALUE_BYTES // 1024}k"))


@pytest.fixture(scope="module")
def shoal_node():
    """A running, warmed-up standalone node: `.addr` is its data (host, port)."""
    yield from serve(
        lambda h: h.node("shoal-node", "--standalone", "--max-value-bytes", MAX_VALUE_BYTES).start().wait_warm()
    )


@pytest.fixture
def harness():
    with Harness() as h:
        yield h


@pytest.fixture(scope="module")
def module_harness():
    with Harness() as h:
        yield h


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        report.sections.extend(report_sections(getattr(item, "funcargs", {}).values()))
