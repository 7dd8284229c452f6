"""Real memcached client libraries against `shoal node --standalone`:
pymemcache (ASCII), python-binary-memcached (binary) and pylibmc over
libmemcached (binary and ASCII). Each test uses its own keys, so the tests
share one node.

Every test also runs against memcached itself: what a test expects is what
the library gets from the real thing, not a guess.
"""

import pylibmc
import pytest
from bmemcached import Client as BinaryClient
from pymemcache import serde
from pymemcache.client.base import Client as PyClient

# Empty, small, and large (but under the 1 MiB item limit) values.
SIZES = [0, 100, 500 * 1024]

# python-binary-memcached 0.31.2 calls a deprecated urllib helper.
pytestmark = pytest.mark.filterwarnings("ignore:urllib.parse.splitport:DeprecationWarning")


@pytest.fixture(params=["shoal_node", "memcached_server"], ids=["shoal", "memcached"])
def server(request):
    return request.getfixturevalue(request.param)


def value_of(size, seed=b"v"):
    return (seed * (size // len(seed) + 1))[:size]


def addr_str(node):
    return "%s:%d" % node.addr


# === pymemcache (ASCII) ===


@pytest.fixture
def py(server):
    client = PyClient(server.addr, serde=serde.pickle_serde, default_noreply=False, connect_timeout=5, timeout=10)
    yield client
    client.close()


@pytest.mark.parametrize("size", SIZES)
def test_pymemcache_set_get_sizes(py, size):
    value = value_of(size, b"0123456789abcdef")
    assert py.set(f"pm:size:{size}", value) is True
    assert py.get(f"pm:size:{size}") == value


def test_pymemcache_serde_flags(py):
    # The serde picks the flags from the type; the node must keep them.
    values = {"pm:t:bytes": b"raw", "pm:t:str": "text \u00e9", "pm:t:int": 42, "pm:t:obj": {"a": [1, 2]}}
    for key, value in values.items():
        assert py.set(key, value)
    got = py.get_many(list(values))
    assert got == values
    assert {k: type(v) for k, v in got.items()} == {k: type(v) for k, v in values.items()}


def test_pymemcache_get_many_100_keys(py):
    keys = [f"pm:many:{i}" for i in range(100)]
    assert py.set_many({k: f"value-{k}".encode() for k in keys}) == []
    got = py.get_many(keys + ["pm:many:missing"])
    assert got == {k: f"value-{k}".encode() for k in keys}


def test_pymemcache_get_many_long_keys(py, server, request):
    # One `get` line of ~12 KiB: fine for memcached, which reads get lines of
    # any length.
    keys = [f"pm:long:{i:03d}:".ljust(120, "k") for i in range(100)]
    assert py.set_many({k: b"v" for k in keys}) == []
    assert py.get_many(keys) == {k: b"v" for k in keys}


def test_pymemcache_gets_cas(py):
    assert py.set("pm:cas", b"a")
    value, cas = py.gets("pm:cas")
    assert value == b"a" and cas
    assert py.cas("pm:cas", b"b", cas) is True
    assert py.cas("pm:cas", b"c", cas) is False, "stale CAS must be refused"
    assert py.get("pm:cas") == b"b"
    assert py.cas("pm:cas-missing", b"x", cas) is None
    value2, cas2 = py.gets("pm:cas")
    assert value2 == b"b" and cas2 != cas


def test_pymemcache_incr_decr(py):
    assert py.incr("pm:n", 1) is None
    assert py.set("pm:n", b"10")
    assert py.incr("pm:n", 5) == 15
    assert py.decr("pm:n", 20) == 0
    assert py.incr("pm:n", 2**64 - 1) == 2**64 - 1
    assert py.incr("pm:n", 1) == 0
    assert py.set("pm:nn", b"abc")
    with pytest.raises(Exception, match="non-numeric"):
        py.incr("pm:nn", 1)


def test_pymemcache_append_prepend(py):
    assert py.append("pm:ap-missing", b"x") is False
    assert py.set("pm:ap", b"mid")
    assert py.append("pm:ap", b">")
    assert py.prepend("pm:ap", b"<")
    assert py.get("pm:ap") == b"<mid>"


def test_pymemcache_add_replace_delete(py):
    assert py.replace("pm:ard", b"r") is False
    assert py.add("pm:ard", b"a") is True
    assert py.add("pm:ard", b"b") is False
    assert py.replace("pm:ard", b"c") is True
    assert py.get("pm:ard") == b"c"
    assert py.delete("pm:ard") is True
    assert py.delete("pm:ard") is False
    assert py.get("pm:ard") is None


def test_pymemcache_touch(py):
    assert py.touch("pm:touch-missing", 10) is False
    assert py.set("pm:touch", b"x")
    assert py.touch("pm:touch", 100) is True
    # Expired by a negative TTL.
    assert py.touch("pm:touch", -1) is True
    assert py.get("pm:touch") is None


def test_pymemcache_noreply(py):
    # With noreply the client sends and does not wait; the get afterwards
    # on the same connection sees every write (replies are in order).
    assert py.set("pm:nr", b"1", noreply=True)
    assert py.add("pm:nr-add", b"a", noreply=True)
    assert py.replace("pm:nr-add", b"b", noreply=True)
    assert py.append("pm:nr", b"0", noreply=True)
    assert py.prepend("pm:nr", b"1", noreply=True)
    assert py.incr("pm:nr", 5, noreply=True) is None
    assert py.decr("pm:nr", 1, noreply=True) is None
    assert py.touch("pm:nr", 100, noreply=True)
    assert py.set("pm:nr-del", b"x", noreply=True)
    assert py.delete("pm:nr-del", noreply=True)
    assert py.get_many(["pm:nr", "pm:nr-add", "pm:nr-del"]) == {"pm:nr": b"114", "pm:nr-add": b"b"}


# === python-binary-memcached (binary) ===


@pytest.fixture
def bm(server):
    client = BinaryClient([addr_str(server)], socket_timeout=10)
    yield client
    client.disconnect_all()


@pytest.mark.parametrize("size", SIZES)
def test_bmemcached_set_get_sizes(bm, size):
    value = value_of(size, b"binary\x00\xff")
    assert bm.set(f"bm:size:{size}", value)
    assert bm.get(f"bm:size:{size}") == value


def test_bmemcached_types_and_get_multi(bm):
    values = {"bm:t:str": "text \u00e9", "bm:t:int": 7, "bm:t:bytes": b"raw", "bm:t:obj": [1, {"a": 2}]}
    for key, value in values.items():
        assert bm.set(key, value)
    got = bm.get_multi(list(values) + ["bm:t:missing"])
    assert got == values


def test_bmemcached_get_multi_100_keys(bm):
    keys = [f"bm:many:{i}" for i in range(100)]
    assert bm.set_multi({k: k.upper() for k in keys}) == []
    assert bm.get_multi(keys) == {k: k.upper() for k in keys}


def test_bmemcached_cas(bm):
    assert bm.set("bm:cas", "a")
    value, cas = bm.gets("bm:cas")
    assert value == "a" and cas
    assert bm.cas("bm:cas", "b", cas) is True
    assert bm.cas("bm:cas", "c", cas) is False
    assert bm.get("bm:cas") == "b"


def test_bmemcached_incr_decr(bm):
    # A missing counter is created with the default (binary initial value).
    assert bm.incr("bm:n", 5, default=10) == 10
    assert bm.incr("bm:n", 5) == 15
    assert bm.decr("bm:n", 100) == 0
    assert bm.decr("bm:n-missing", 1, default=3) == 3


def test_bmemcached_add_replace_delete(bm):
    assert bm.replace("bm:ard", "r") is False
    assert bm.add("bm:ard", "a") is True
    assert bm.add("bm:ard", "b") is False
    assert bm.replace("bm:ard", "c") is True
    assert bm.get("bm:ard") == "c"
    assert bm.delete("bm:ard") is True
    # The library reports a delete of a missing key as success too.
    assert bm.delete("bm:ard") is True
    assert bm.get("bm:ard") is None


# === pylibmc (libmemcached), binary and ASCII ===


@pytest.fixture(params=[True, False], ids=["binary", "ascii"])
def lm(request, server):
    client = pylibmc.Client([addr_str(server)], binary=request.param, behaviors={"cas": True})
    client.prefix = "lm:%s:" % ("bin" if request.param else "txt")
    client.is_binary = request.param
    yield client
    client.disconnect_all()


@pytest.mark.parametrize("size", SIZES)
def test_pylibmc_set_get_sizes(lm, size):
    key = f"{lm.prefix}size:{size}"
    value = value_of(size, b"libmemcached")
    assert lm.set(key, value)
    assert lm.get(key) == value


def test_pylibmc_native_types(lm):
    p = lm.prefix
    values = {p + "t:int": 12, p + "t:bool": True, p + "t:str": "s\u00e9", p + "t:bytes": b"b", p + "t:list": [1, "x"]}
    for key, value in values.items():
        assert lm.set(key, value)
    got = lm.get_multi(list(values))
    # pylibmc 1.6 stores a bool as an int (flag 2) and reads back 1.
    assert got == values
    assert {k: type(v) for k, v in got.items() if k != p + "t:bool"} == {
        k: type(v) for k, v in values.items() if k != p + "t:bool"
    }


def test_pylibmc_get_multi_100_keys(lm):
    keys = [f"{lm.prefix}many:{i}" for i in range(100)]
    assert lm.set_multi({k: k.encode() for k in keys}) == []
    got = lm.get_multi(keys + [lm.prefix + "many:missing"])
    assert got == {k: k.encode() for k in keys}


def test_pylibmc_gets_cas(lm):
    key = lm.prefix + "cas"
    assert lm.set(key, b"a")
    value, cas = lm.gets(key)
    assert value == b"a" and cas
    assert lm.cas(key, b"b", cas) is True
    assert lm.cas(key, b"c", cas) is False
    assert lm.get(key) == b"b"


def test_pylibmc_incr_decr_delete(lm):
    key = lm.prefix + "n"
    with pytest.raises(pylibmc.NotFound):
        lm.incr(key)
    assert lm.set(key, 10)
    assert lm.incr(key, 5) == 15
    assert lm.decr(key, 20) == 0
    assert lm.get(key) == 0
    assert lm.delete(key) is True
    assert lm.delete(key) is False
    assert lm.get(key) is None


def test_pylibmc_add_replace_append(lm):
    key = lm.prefix + "ara"
    if lm.is_binary:
        # Binary REPLACE of a missing key answers "not found", which
        # libmemcached raises.
        with pytest.raises(pylibmc.NotFound):
            lm.replace(key, b"r")
    else:
        assert lm.replace(key, b"r") is False
    assert lm.add(key, b"a") is True
    assert lm.add(key, b"b") is False
    assert lm.append(key, b">") is True
    assert lm.prepend(key, b"<") is True
    assert lm.get(key) == b"<a>"


def test_pylibmc_touch(lm):
    key = lm.prefix + "touch"
    assert lm.touch(key, 10) is False
    if lm.is_binary:
        # libmemcached's binary touch of a present key stalls for its 5 s
        # poll timeout before returning True, against memcached as well:
        # only the miss is quick enough for this suite.
        return
    assert lm.set(key, b"x")
    assert lm.touch(key, 100) is True
    assert lm.get(key) == b"x"
