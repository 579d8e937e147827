"""A raw data-stream client: check that a node is reachable, or send it hand-made frames.

:class:`DataProbe` opens a node's data stream as a given node id (with its TLS files),
says hello and then writes frames exactly as given, valid or not. Operators use it to
check a deployment's ports, certificates and token; tests use it to send every kind of
malformed message to a live node.

Examples
--------
>>> probe = DataProbe("10.0.0.7", 7001, sender=2, run_id="5fd9e464d82fbd8f",
...                   token="...", tls=load_tls("certs", 2), server=3)  # doctest: +SKIP
>>> probe.hello()  # doctest: +SKIP
'welcome'
"""

from __future__ import annotations

import contextlib
import socket
import ssl
from typing import Any

from relayfl.certs import TlsFiles
from relayfl.transport.base import node_name
from relayfl.transport.wire import PREFIX, encode, parse_header

__all__ = ["DataProbe"]


class DataProbe:
    """Connect to a node's data port and speak the framing by hand.

    Parameters
    ----------
    host, port : str, int
        The node's data address.
    sender : int
        The node id to present in the hello.
    run_id : str
    token : str, optional
    tls : TlsFiles, optional
        Certificate and key to present, and the CA to check the node against.
    server : int, optional
        The node id expected in the server's certificate (default: not checked).
    timeout : float, default 10
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        sender: int,
        run_id: str,
        token: str | None = None,
        tls: TlsFiles | None = None,
        server: int | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.sender, self.run_id, self.token = sender, run_id, token
        sock = socket.create_connection((host, port), timeout=timeout)
        if tls is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.load_verify_locations(cafile=str(tls.ca_path))
            ctx.load_cert_chain(tls.cert_path, tls.key_path)
            if server is None:
                ctx.check_hostname = False
            sock = ctx.wrap_socket(
                sock, server_hostname=node_name(server) if server is not None else None
            )
        self.sock = sock

    def hello(self, **overrides: Any) -> str:
        """Send the hello (fields overridable) and return ``welcome`` or the refusal."""
        header = {
            "kind": "hello",
            "run": self.run_id,
            "sender": self.sender,
            "token": self.token,
            **overrides,
        }
        self.sock.sendall(encode(header))
        prefix = self._recv(PREFIX.size)
        _, header_len, _ = PREFIX.unpack(prefix)
        reply = parse_header(self._recv(header_len))
        if reply.get("kind") == "welcome":
            return "welcome"
        return str(reply.get("reason", reply))

    def send_raw(self, data: bytes) -> None:
        """Write bytes as they are (a frame, part of one, or garbage)."""
        self.sock.sendall(data)

    def send_frame(
        self, header: dict[str, Any], payload: bytes = b"", payload_len: int | None = None
    ) -> None:
        """Write one frame; ``payload_len`` may lie about the payload's size."""
        size = len(payload) if payload_len is None else payload_len
        self.sock.sendall(encode(header, size) + payload)

    def closed_by_peer(self, timeout: float = 5.0) -> bool:
        """True when the node closed the connection (waits up to ``timeout``)."""
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(1) == b""
        except TimeoutError:
            return False
        except OSError:
            return True

    def _recv(self, size: int) -> bytes:
        buf = b""
        while len(buf) < size:
            chunk = self.sock.recv(size - len(buf))
            if not chunk:
                raise ConnectionError(f"the node closed the connection after {len(buf)} bytes")
            buf += chunk
        return buf

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def __enter__(self) -> DataProbe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
