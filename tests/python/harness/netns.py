"""Hosts in Linux network namespaces, for the multi-host tests: one
namespace per host, each joined by a veth pair to a bridge in the root
namespace, private addresses inside (`10.<N>.77.<x>/24`, N random per
run), `lo` up everywhere. The bridge has `10.<N>.77.1`, so the test
process (in the root namespace) reaches every host directly.

- `Network`: creates and removes all of it (`create()`, `close()`), with
  per-run names (a random suffix) so two runs never collide; a failure
  to create it fails the test (never a skip). `close()` also ends any
  process still inside one of its namespaces (all started by the test).
- Faults: `cut`/`heal` (the root-side end of a host's veth down/up: the
  host is cut off from everyone), `netem` (delay and loss on the traffic
  into some hosts), `blackhole`/`unblackhole` (one host stops reaching
  one address: a route inside its namespace).
- `netem` is `tc qdisc … netem` on the root-side end of each host's veth
  where the kernel has sch_netem. Where it has not (this project's
  machines: CONFIG_NET_SCH_NETEM is not set, and there are no modules),
  the same is done in user space: a `clsact` egress filter on that veth
  end redirects every frame (`mirred`) to a TAP device whose other end a
  shaper process (`python3 -m harness.netns shape`, below) reads; it
  drops the given share of the frames at random and sends the others on
  to the host after the delay, through a packet socket on the veth that
  bypasses the qdisc (so they are not redirected again).
- `NetnsNode`, `NetnsProxy`: `shoal node` and `shoal proxy` run inside a
  host's namespace with `ip netns exec` (which execs the command, so the
  child's pid is Shoal's own: the harness's stop and kill reach it), on
  the fixed ports a host of their own allows.

Needs root and `ip`/`tc` (iproute2); `scripts/setup` installs iproute2.
"""

import fcntl
import heapq
import os
import random
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .credentials import child_env
from .deploy import image_command, image_env, unit_command
from .poll import poll
from .process import START_DEADLINE_S, Child, ShoalNode, ShoalProxy
from .wire import addr_of

# A command of `ip` or `tc`: only a hang takes longer.
COMMAND_TIMEOUT_S = 20.0

# A host has its own addresses: every process on it uses the usual ports.
NODE_DATA_PORT = 11210
NODE_ADMIN_PORT = 8091
PROXY_DATA_PORT = 11211
PROXY_ADMIN_PORT = 11212


def run(*cmd, check=True):
    """Runs `ip`/`tc` (or anything); a failure naming the command and
    its output unless it succeeds (with `check`). Returns the result."""
    cmd = [str(c) for c in cmd]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as e:
        if check:
            pytest.fail(f"`{' '.join(cmd)}` failed: {e!r}", pytrace=False)
        return None
    if check and done.returncode != 0:
        said = (done.stderr or done.stdout).strip()
        pytest.fail(f"`{' '.join(cmd)}` exited {done.returncode}: {said}", pytrace=False)
    return done


def link_exists(name):
    return os.path.exists(f"/sys/class/net/{name}")


class Network:
    """Hosts (`{name: last octet of its address}`, octets 2-254) in their
    own namespaces on one bridge. Nothing exists until `create()`."""

    def __init__(self, hosts):
        assert all(2 <= octet <= 254 for octet in hosts.values()), hosts
        self.hosts = dict(hosts)
        self.suffix = "%06x" % random.getrandbits(24)
        self.bridge = f"shbr{self.suffix}"
        self.subnet = None  # "10.N.77", chosen at create()
        self.created = False
        # What exists now, for close(): namespaces, root-side links, the
        # user-space shaper.
        self._namespaces = []
        self._links = []
        self.shaper = None

    # --- names and addresses ---

    def netns(self, host):
        return f"shoal-{self.suffix}-{host}"

    def veth(self, host):
        """The root-side end of the host's veth pair (the other end is
        `eth0` inside its namespace)."""
        return f"sh{self.suffix}v{self.hosts[host]}"

    def address(self, host):
        return f"{self.subnet}.{self.hosts[host]}"

    @property
    def gateway(self):
        """The bridge's address: where the test process's traffic comes
        from."""
        return f"{self.subnet}.1"

    # --- life ---

    def create(self):
        """Creates the bridge and every host; a failure (after removing
        whatever was made) if any step fails."""
        for tool in ("ip", "tc"):
            if shutil.which(tool) is None:
                pytest.fail(f"`{tool}` (iproute2) is not installed: run scripts/setup", pytrace=False)
        if os.geteuid() != 0:
            pytest.fail("network namespaces need root (the tests run as root here and in CI)", pytrace=False)
        self.subnet = self._free_subnet()
        try:
            run("ip", "link", "add", self.bridge, "type", "bridge")
            self._links.append(self.bridge)
            run("ip", "addr", "add", f"{self.gateway}/24", "dev", self.bridge)
            run("ip", "link", "set", self.bridge, "up")
            for host in self.hosts:
                ns = self.netns(host)
                run("ip", "netns", "add", ns)
                self._namespaces.append(ns)
                run("ip", "link", "add", self.veth(host), "type", "veth", "peer", "name", "eth0", "netns", ns)
                self._links.append(self.veth(host))
                run("ip", "link", "set", self.veth(host), "master", self.bridge, "up")
                run("ip", "-n", ns, "link", "set", "lo", "up")
                run("ip", "-n", ns, "addr", "add", f"{self.address(host)}/24", "dev", "eth0")
                run("ip", "-n", ns, "link", "set", "eth0", "up")
        except BaseException:
            self.close()
            raise
        self.created = True
        return self

    def _free_subnet(self):
        """A 10.N.77.0/24 no address or route of the root namespace is in
        yet."""
        taken = run("ip", "-4", "-o", "addr").stdout + run("ip", "-4", "route").stdout
        for _ in range(100):
            subnet = f"10.{random.randrange(16, 250)}.77"
            if f"{subnet}." not in taken:
                return subnet
        pytest.fail(f"no free 10.N.77.0/24 subnet; addresses and routes:\n{taken}", pytrace=False)

    def pids(self):
        """Pids of the processes inside this network's namespaces."""
        pids = []
        for ns in self._namespaces:
            done = run("ip", "netns", "pids", ns, check=False)
            if done is not None and done.returncode == 0:
                pids.extend(int(p) for p in done.stdout.split())
        return pids

    def close(self):
        """Removes everything this network made (idempotent): kills any
        process still in its namespaces (ones the test started), deletes
        the namespaces (their veth ends go with them), the root-side links
        and the bridge; a failure if anything of it is left."""
        if self.shaper is not None:
            self.shaper.stop()
            self.shaper.cleanup()
            self.shaper = None
        for pid in self.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for ns in self._namespaces:
            run("ip", "netns", "del", ns, check=False)
        for link in reversed(self._links):
            if link_exists(link):
                run("ip", "link", "del", link, check=False)
        left = [ns for ns in self._namespaces if os.path.exists(f"/run/netns/{ns}")]
        left += [link for link in self._links if link_exists(link)]
        self._namespaces, self._links = [], []
        self.created = False
        if left:
            pytest.fail(f"could not remove {left}", pytrace=False)

    # --- faults ---

    def cut(self, host):
        """Cuts `host` off from every other host (its veth's root-side end
        down: packets both ways are dropped, connections stall)."""
        run("ip", "link", "set", self.veth(host), "down")

    def heal(self, host):
        run("ip", "link", "set", self.veth(host), "up")

    def netem(self, hosts, delay_ms, loss_percent):
        """Delays every frame into each of `hosts` by `delay_ms` and drops
        `loss_percent` % of them at random, until `close()`: with `tc
        qdisc add dev <veth> root netem delay <d>ms loss <l>%` on the
        root-side end of its veth if the kernel has netem, else with the
        user-space shaper (see the module's docstring). Returns which."""
        hosts = list(hosts)
        spec = ("delay", f"{delay_ms}ms", "loss", f"{loss_percent}%")
        tried = run("tc", "qdisc", "add", "dev", self.veth(hosts[0]), "root", "netem", *spec, check=False)
        if tried.returncode == 0:
            for host in hosts[1:]:
                run("tc", "qdisc", "add", "dev", self.veth(host), "root", "netem", *spec)
            return "tc netem"
        if "unknown" not in tried.stderr.lower():
            pytest.fail(f"tc netem on {self.veth(hosts[0])}: {tried.stderr.strip()}", pytrace=False)
        self._shape(hosts, delay_ms, loss_percent)
        return f"a user-space shaper (this kernel has no netem: {tried.stderr.strip()!r})"

    def _shape(self, hosts, delay_ms, loss_percent):
        assert self.shaper is None, "the links are shaped already"
        links = [(self.veth(host), self.tap(host)) for host in hosts]
        self.shaper = Child(f"shaper-{self.suffix}")
        self.shaper.spawn(
            [sys.executable, "-m", "harness.netns", "shape", str(delay_ms / 1000), str(loss_percent / 100),
             *[f"{veth}:{tap}" for veth, tap in links]],
            cwd=Path(__file__).resolve().parents[1],
        )  # fmt: skip
        self.shaper.wait_line("ready", START_DEADLINE_S)
        for veth, tap in links:
            self._links.append(tap)
            run("ip", "link", "set", tap, "up")
            run("tc", "qdisc", "add", "dev", veth, "clsact")
            run("tc", "filter", "add", "dev", veth, "egress", "protocol", "all", "u32", "match", "u32", "0", "0",
                "action", "mirred", "egress", "redirect", "dev", tap)  # fmt: skip

    def shaped(self):
        """(frames passed, frames dropped) by the user-space shaper so
        far, or None without one."""
        if self.shaper is None:
            return None
        seen = len(self.shaper.lines)
        self.shaper.proc.send_signal(signal.SIGUSR1)
        poll(lambda: len(self.shaper.lines) > seen, START_DEADLINE_S, "the shaper to say what it did")
        line = self.shaper.lines[-1]
        assert line and line.startswith("counts "), f"the shaper did not say what it did: {self.shaper.lines[-5:]}"
        passed, dropped = line.split()[1:]
        return int(passed), int(dropped)

    def tap(self, host):
        """The shaper's TAP device for `host`."""
        return f"sh{self.suffix}t{self.hosts[host]}"

    def blackhole(self, host, to):
        """`host` stops reaching host `to` (a blackhole route to its
        address inside `host`'s namespace; no one else is affected)."""
        run("ip", "-n", self.netns(host), "route", "add", "blackhole", f"{self.address(to)}/32")

    def unblackhole(self, host, to):
        run("ip", "-n", self.netns(host), "route", "del", "blackhole", f"{self.address(to)}/32")


# === Shoal on a host ===


def in_netns(netns, cmd):
    return ["ip", "netns", "exec", netns, *[str(c) for c in cmd]]


class NetnsNode(ShoalNode):
    """`shoal node` on a host of `network`, on the host's address and the
    usual ports (11210, 8091), started with the command line of
    `deploy/shoal-node.service` (or, with `image`, of the container
    image). With `bind_any` it binds 0.0.0.0; either way it advertises the
    host's address (`--advertise`). `args` go on every start, as for
    `ShoalNode`."""

    def __init__(self, network, host, *args, bind_any=False, image=False):
        super().__init__(host, *args)
        # With `image`: started with the container image's default command
        # (`deploy/Containerfile`), which binds 0.0.0.0.
        self.image = image
        bind_any = bind_any or image
        self.netns = network.netns(host)
        address = network.address(host)
        self.bind = "0.0.0.0" if bind_any else address
        # Known before it starts: where the others and the test reach it.
        self.addr = (address, NODE_DATA_PORT)
        self.admin = (address, NODE_ADMIN_PORT)

    def launch(self, *flags):
        """Starts it with the systemd unit's command line
        (`deploy/shoal-node.service`), its variables set as a node.env
        would set them."""
        self._drop_connection()
        self._flags = [str(f) for f in flags]
        env = {
            "SHOAL_DATA_DIR": self.data_dir,
            "SHOAL_HOST": self.bind,
            "SHOAL_ADVERTISE": self.addr[0],
            "SHOAL_NODE_ARGS": " ".join([*self.args, *self._flags]),
        }
        if self.image:
            process_env = {**child_env(self.credentials), **image_env(), **env}
            self.spawn(in_netns(self.netns, image_command()), env=process_env)
            return self
        argv = unit_command("shoal-node.service", env)
        self.spawn(in_netns(self.netns, argv), env=child_env(self.credentials))
        return self

    def wait_listening(self):
        """Waits until it announces its two addresses: the bound ones,
        on the usual ports."""
        data, admin = addr_of(self.wait_line("data ")), addr_of(self.wait_line("admin "))
        want = ((self.bind, self.port), (self.bind, self.admin_port))
        assert (data, admin) == want, f"{self.name} announced data {data}, admin {admin}; want {want}"
        return self


class NetnsProxy(ShoalProxy):
    """`shoal proxy *args` on a host of `network`, on the host's address
    and ports 11211 (data) and 11212 (admin)."""

    def __init__(self, network, host, *args):
        super().__init__(*args, name=host)
        self.netns = network.netns(host)
        self.host = network.address(host)

    def start(self):
        """Starts it with the systemd unit's command line
        (`deploy/shoal-proxy.service`): `--cluster` and `--bucket` of
        `args` fill its variables, the rest goes in SHOAL_PROXY_ARGS."""
        args = list(self.args)
        env = {"SHOAL_HOST": self.host, "SHOAL_BUCKET": "default"}
        for flag, var in (("--cluster", "SHOAL_CLUSTER"), ("--bucket", "SHOAL_BUCKET")):
            if flag in args:
                i = args.index(flag)
                env[var] = args[i + 1]
                del args[i : i + 2]
        env["SHOAL_PROXY_ARGS"] = " ".join(args)
        self.spawn(in_netns(self.netns, unit_command("shoal-proxy.service", env)), env=child_env())
        self.addr = addr_of(self.wait_line("data "))
        self.admin = addr_of(self.wait_line("admin "))
        want = ((self.host, PROXY_DATA_PORT), (self.host, PROXY_ADMIN_PORT))
        assert (self.addr, self.admin) == want, f"{self.name} announced {self.addr}, {self.admin}; want {want}"
        return self


# === the user-space shaper ===

# <linux/if_tun.h>, <linux/if_packet.h>
TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
SOL_PACKET = 263
PACKET_QDISC_BYPASS = 20


def shape(delay_s, loss, links):
    """The shaper's process: for each (veth, tap) of `links`, creates the
    TAP device, reads the frames redirected to it, drops a share `loss`
    of them at random and sends the others out of the veth `delay_s`
    later (in order), bypassing the veth's qdisc and filters. Prints
    "ready" once the devices exist; runs until killed."""
    out = {}
    for veth, tap in links:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", tap.encode(), IFF_TAP | IFF_NO_PI))
        # Protocol 0: a socket that only sends.
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        sock.setsockopt(SOL_PACKET, PACKET_QDISC_BYPASS, 1)
        sock.bind((veth, 0))
        out[fd] = sock
    counts = {"passed": 0, "dropped": 0}
    # SIGUSR1: what it did so far, on stdout.
    signal.signal(signal.SIGUSR1, lambda *_: print(f"counts {counts['passed']} {counts['dropped']}", flush=True))
    print("ready", flush=True)
    due, sequence = [], 0
    while True:
        timeout = max(0.0, due[0][0] - time.monotonic()) if due else None
        readable, _, _ = select.select(list(out), [], [], timeout)
        now = time.monotonic()
        for fd in readable:
            while True:
                try:
                    frame = os.read(fd, 65536)
                except BlockingIOError:
                    break
                if random.random() < loss:
                    counts["dropped"] += 1
                    continue
                sequence += 1
                heapq.heappush(due, (now + delay_s, sequence, fd, frame))
        now = time.monotonic()
        while due and due[0][0] <= now:
            _, _, fd, frame = heapq.heappop(due)
            try:
                out[fd].send(frame)
                counts["passed"] += 1
            except OSError as e:  # a link cut off: the frame is lost, as on a wire
                print(f"shaper: {len(frame)}-byte frame not sent: {e}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    assert sys.argv[1] == "shape", sys.argv
    shape(float(sys.argv[2]), float(sys.argv[3]), [tuple(link.split(":")) for link in sys.argv[4:]])
