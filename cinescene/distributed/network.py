"""The network interface a rank talks to the others through (Linux, IPv4).

Left alone, gloo binds to whatever the host name resolves to, which on many
machines is a loopback address the other nodes cannot reach; a rank started
on several nodes binds to the interface that routes to the master instead.
"""

from __future__ import annotations

import fcntl
import os
import socket
import struct

_SIOCGIFADDR = 0x8915


def _interface_address(sock: socket.socket, name: str) -> str | None:
    try:
        packed = fcntl.ioctl(sock.fileno(), _SIOCGIFADDR, struct.pack("256s", name[:15].encode()))
    except OSError:
        return None
    return socket.inet_ntoa(packed[20:24])


def interface_towards(address: str) -> str | None:
    """The network interface this host reaches ``address`` through (Linux, IPv4); None if unknown."""
    try:
        target = socket.gethostbyname(address)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.connect((target, 9))  # UDP: picks the route, sends nothing
            local = sock.getsockname()[0]
            for _, name in socket.if_nameindex():
                if _interface_address(sock, name) == local:
                    return name
    except OSError:
        return None
    return None


def bind_gloo_towards_master(master_addr: str, environ: dict[str, str] | None = None) -> str | None:
    """Make gloo use the interface that routes to the master, unless the user chose one.

    Left alone, gloo binds to whatever the host name resolves to, which on many
    machines is a loopback address the other nodes cannot reach.
    """
    env = os.environ if environ is None else environ
    if env.get("GLOO_SOCKET_IFNAME"):
        return env["GLOO_SOCKET_IFNAME"]
    name = interface_towards(master_addr)
    if name:
        env["GLOO_SOCKET_IFNAME"] = name
    return name
