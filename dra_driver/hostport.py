"""HOST:PORT addresses as operators write them (the metrics endpoint's flag)."""

from __future__ import annotations


def parse_host_port(text: str) -> tuple[str, int]:
    """Split HOST:PORT, [IPv6]:PORT or :PORT (every interface); ValueError says what is wrong."""
    host, sep, port_text = text.strip().rpartition(":")
    if not sep:
        raise ValueError(f"expected HOST:PORT (or :PORT for every interface), got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if not host:
            raise ValueError(f"empty IPv6 address in {text!r}")
    elif ":" in host:
        raise ValueError(f"write an IPv6 address in brackets, e.g. [::1]:8080; got {text!r}")
    if not (port_text.isascii() and port_text.isdigit()) or int(port_text) > 65535:
        raise ValueError(f"port must be a number from 0 to 65535, got {port_text!r}")
    return host, int(port_text)
