"""A private network with only a loopback interface, for worker processes whose servers listen on
every interface.

TensorFlow's gRPC server, which every ``MultiWorkerMirroredStrategy`` worker runs, binds
``"0.0.0.0:" + port`` (hard-coded in tensorflow/core/distributed_runtime/rpc/grpc_server_lib.cc;
there is no option), so on the machine's own network its port accepts connections from every
interface. Inside a Linux network namespace whose only interface is loopback, "every interface"
is loopback only, and nothing outside the namespace -- no other machine, and no process of this
one -- can reach the port.

`LoopbackNetwork(count)` makes such a namespace where it can (Linux, as root): it starts one small
holder process, ``unshare --net -- python -m helpers.tooling.private_network --hold COUNT`` (unshare
is util-linux's), which brings the namespace's ``lo`` up itself (the SIOCSIFFLAGS ioctl, so
iproute2's ``ip`` is not needed), picks `count` free ports there and waits. Each worker is then
started with ``nsenter --net=/proc/HOLDER/ns/net --`` in front of its command (`prefix`): nsenter
joins the namespace and execs the worker, so the worker keeps its process id and is waited for and
killed as before. The workers reach each other at ``127.0.0.1:PORT``, the namespace's own loopback.
Closing the network ends the holder; the namespace disappears with its last process.

Where no namespace can be made (not root, no unshare or nsenter, a container that forbids
namespaces), it falls back to free ports on this machine's 127.0.0.1 and an empty `prefix`, and
prints one warning: the workers' ports are then reachable from other interfaces while they run.
"""

from __future__ import annotations

import fcntl
import selectors
import shutil
import socket
import struct
import subprocess
import sys

# linux/sockios.h and linux/if.h; struct ifreq is a 16-byte name and a 24-byte union whose first
# member, for these two requests, is the short ifr_flags.
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
IFREQ = "16sh22x"
HOLDER_START_TIMEOUT = 30  # seconds for the holder to start Python and print its ports


def free_ports(count: int) -> list[int]:
    """`count` TCP ports free on 127.0.0.1 right now (the OS picks them; sockets held together so
    the ports differ)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def bring_loopback_up() -> None:
    """Set the IFF_UP flag of this network namespace's ``lo`` (a new namespace starts with it
    down, and then not even 127.0.0.1 works) -- what ``ip link set lo up`` does."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack(IFREQ, b"lo", 0)
        flags = struct.unpack(IFREQ, fcntl.ioctl(sock, SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack(IFREQ, b"lo", flags | IFF_UP))


class LoopbackNetwork:
    """`count` ports for workers that talk over 127.0.0.1, in a private network namespace if one
    can be made (see the module's docstring). `hosts` are the workers' "127.0.0.1:PORT"
    addresses; put `prefix` in front of each worker's command; `private` says whether the
    namespace was made. Use as a context manager, or call `close` (the holder is ended)."""

    def __init__(self, count: int, warn=lambda line: print(line, file=sys.stderr)):
        self.holder = None
        try:
            ports = self._start_holder(count)
        except (OSError, RuntimeError, subprocess.TimeoutExpired) as reason:
            self.close()
            warn(f"warning: could not make a private network namespace for the workers "
                 f"({reason}), so they run on this machine's network: TensorFlow's server binds "
                 "0.0.0.0, and their ports are reachable from other interfaces while they run")
            ports, self.prefix, self.private = free_ports(count), [], False
        else:
            self.prefix = ["nsenter", f"--net=/proc/{self.holder.pid}/ns/net", "--"]
            self.private = True
        self.hosts = [f"127.0.0.1:{port}" for port in ports]

    def _start_holder(self, count: int) -> list[int]:
        if not sys.platform.startswith("linux"):
            raise RuntimeError("network namespaces are Linux's")
        for tool in ("unshare", "nsenter"):
            if shutil.which(tool) is None:
                raise RuntimeError(f"no {tool} command (util-linux)")
        self.holder = subprocess.Popen(
            ["unshare", "--net", "--", sys.executable, "-m", "helpers.tooling.private_network",
             "--hold", str(count)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = _read_line(self.holder, HOLDER_START_TIMEOUT)
        if not line.startswith("ports "):
            self.holder.wait(HOLDER_START_TIMEOUT)
            error = self.holder.stderr.read().strip().splitlines() or ["no output"]
            raise RuntimeError(f"{error[-1]}; exit code {self.holder.returncode}")
        return [int(port) for port in line.split()[1:]]

    def close(self) -> None:
        """End the holder (closing its input ends it; killed if it does not end in 10 s)."""
        if self.holder is None:
            return
        for stream in (self.holder.stdin, self.holder.stdout, self.holder.stderr):
            stream.close()
        try:
            self.holder.wait(10)
        except subprocess.TimeoutExpired:
            self.holder.kill()
            self.holder.wait()
        self.holder = None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


def _read_line(process, timeout: float) -> str:
    """The first line `process` writes, or "" if it ends first; TimeoutExpired (after killing it)
    if it writes none within `timeout` seconds."""
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            process.kill()
            process.wait()
            raise subprocess.TimeoutExpired(process.args, timeout)
    return process.stdout.readline()


def _hold(count: int) -> None:
    """Inside the new namespace: loopback up, `count` free ports announced, then wait for the end
    of input (the namespace lives as long as this process or any worker in it)."""
    bring_loopback_up()
    print("ports", *free_ports(count), flush=True)
    sys.stdin.read()


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "--hold":
        sys.exit("usage: python -m helpers.tooling.private_network --hold COUNT (started by "
                 "LoopbackNetwork inside `unshare --net`)")
    _hold(int(sys.argv[2]))
