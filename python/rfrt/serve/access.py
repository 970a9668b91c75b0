"""Who may talk to `rfrt serve`: the Host names it answers to, the page origins that may open its WebSocket, and
when a token is required.

Why each rule:
  Host     a page on attacker.example can make its own name resolve to 127.0.0.1 (DNS rebinding); the browser
           then treats the server as attacker.example's and lets the page read every answer. The browser still
           sends `Host: attacker.example`, so answering only names that mean this machine closes that door.
           An IP literal cannot be rebound (the page's origin *is* that address), so listening on every
           interface accepts any IP literal, besides loopback names, the machine's own name and --allow-host.
  Origin   a browser lets any page open a WebSocket to any address (there is no same-origin rule for them)
           and sends the page's Origin with the handshake: only the server's own pages (Origin equal to
           scheme://Host) and --allow-origin are accepted. Clients that send no Origin (scripts, curl) are
           not browsers driven by a foreign page, and are accepted.
  token    beyond loopback, the network itself can reach the server; a wildcard Host or Origin lets any
           page in. Both need a token, and the server refuses to start without one rather than warn.
"""
from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

__all__ = ["AccessPolicy", "is_loopback", "check_exposure", "LOOPBACK_NAMES"]

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
_WILDCARDS = frozenset({"", "0.0.0.0", "::"})


def _ip(name: str):
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


def is_loopback(host: str) -> bool:
    """True for the names and addresses of this machine's loopback interface (127.0.0.0/8, ::1, localhost)."""
    ip = _ip(host)
    return host.lower() == "localhost" if ip is None else ip.is_loopback


def check_exposure(host: str, token: str | None, allowed_hosts=(), allowed_origins=()) -> None:
    """Raise ValueError when the configuration would let strangers drive the generator without a token."""
    if token is not None:
        return
    if not is_loopback(host):
        shown = host or "every interface"
        raise ValueError(f"refusing to listen on {shown} without a token: anyone who can reach it could drive the "
                         f"generator and watch the stream; give --token TOKEN (the page is then opened as "
                         f"/?token=TOKEN), or listen on 127.0.0.1")
    for option, values in (("--allow-host", allowed_hosts), ("--allow-origin", allowed_origins)):
        if "*" in values:
            raise ValueError(f"{option} '*' lets every web page in: it needs a token too (--token TOKEN)")


def _normal_name(name: str) -> str:
    name = name.strip().lower()
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    return name[:-1] if name.endswith(".") else name


def host_name(authority: str) -> str | None:
    """`name`, `name:port`, `[v6]`, `[v6]:port` -> the name, lower case, without brackets (None if malformed)."""
    a = authority.strip().lower()
    if a.startswith("["):
        end = a.find("]")
        rest = a[end + 1:] if end > 0 else None
        if rest is None or (rest and not (rest.startswith(":") and rest[1:].isdigit())):
            return None
        return a[1:end]
    name, sep, port = a.partition(":")
    if sep and not port.isdigit():
        return None
    name = name[:-1] if name.endswith(".") else name
    return name or None


class AccessPolicy:
    """The Host and Origin rules for one bind address (see the module docstring)."""

    def __init__(self, host: str, allowed_hosts=(), allowed_origins=()) -> None:
        self.host = host
        self.any_host = "*" in allowed_hosts
        self.any_origin = "*" in allowed_origins
        self.wildcard = host in _WILDCARDS
        names = set(LOOPBACK_NAMES) | {_normal_name(h) for h in allowed_hosts if h != "*"}
        if host and not self.wildcard:
            names.add(_normal_name(host))
        if self.wildcard:
            names.add(socket.gethostname().lower())
        self.names = frozenset(names)
        self.origins = frozenset(o.strip().lower().rstrip("/") for o in allowed_origins if o != "*")

    def host_ok(self, authority: str | None) -> bool:
        """May a request with this Host header be answered? (None: no header, not sent by browsers.)"""
        if authority is None or self.any_host:
            return True
        name = host_name(authority)
        if name is None:
            return False
        return name in self.names or (self.wildcard and _ip(name) is not None)

    def origin_ok(self, origin: str | None, authority: str | None) -> bool:
        """May a WebSocket handshake with this Origin, sent to this Host, be accepted?"""
        if origin is None or self.any_origin:
            return True
        origin = origin.strip().lower().rstrip("/")
        if origin in self.origins:
            return True
        parts = urlsplit(origin)
        same = (parts.scheme in ("http", "https") and authority is not None
                and parts.netloc == authority.strip().lower() and parts.path == "")
        return same and self.host_ok(authority)

    def describe(self) -> str:
        """The accepted Host names, for refusal messages."""
        names = sorted(self.names) + (["any IP address"] if self.wildcard else [])
        return ", ".join(f"[{n}]" if ":" in n else n for n in names)
