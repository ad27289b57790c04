"""A raw HTTP/1.1 client that streams a request body while watching for the answer.

httpx (like most clients) sends the whole body before reading the response, so it cannot
show that a server answered after a few megabytes of a 1.5 GB upload. This one sends the
body lazily, chunk by chunk, stops as soon as the server answers or closes, and reports
how many body bytes went out.
"""

from __future__ import annotations

import select
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass
class Answer:
    status: int | None  # None: the server never answered
    headers: dict[str, str]
    body: bytes
    sent: int  # body bytes handed to the socket before the answer (or the cap)


def _readable(sock: socket.socket) -> bool:
    return bool(select.select([sock], [], [], 0)[0])


def stream_request(
    base: str, method: str, path: str, headers: dict[str, str], chunks: Iterable[bytes], *,
    chunked: bool = True, give_up_after: int = 64 * 1024 * 1024, timeout: float = 30,
) -> Answer:
    url = urlsplit(base)
    sock = socket.create_connection((url.hostname, url.port), timeout=timeout)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 256 * 1024)
    head = [f"{method} {path} HTTP/1.1", f"Host: {url.netloc}"]
    head += [f"{k}: {v}" for k, v in headers.items()]
    if chunked:
        head.append("Transfer-Encoding: chunked")
    sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
    sent = 0
    try:
        for chunk in chunks:
            if _readable(sock) or sent >= give_up_after:
                break
            frame = b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk
            sock.sendall(frame)
            sent += len(chunk)
        else:
            if chunked:
                sock.sendall(b"0\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError, TimeoutError):
        pass  # the server answered and closed while we were sending: read what it said
    return _read_answer(sock, sent)


def _read_answer(sock: socket.socket, sent: int) -> Answer:
    data = b""
    sock.settimeout(10)
    try:
        while b"\r\n\r\n" not in data:
            part = sock.recv(65536)
            if not part:
                break
            data += part
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        if not lines[0].startswith("HTTP/"):
            return Answer(None, {}, b"", sent)
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        length = int(headers.get("content-length", "0"))
        while len(rest) < length:
            part = sock.recv(65536)
            if not part:
                break
            rest += part
        return Answer(int(lines[0].split()[1]), headers, rest[:length], sent)
    except (ConnectionResetError, TimeoutError):
        return Answer(None, {}, b"", sent)
    finally:
        sock.close()


def zeros(total: int, chunk: int = 256 * 1024) -> Iterable[bytes]:
    """`total` bytes made on the fly, never held at once."""
    block = b"0" * chunk
    while total > 0:
        yield block[: min(chunk, total)]
        total -= chunk


def multipart(filename: str, body: Iterable[bytes], boundary: str = "tfboundary") -> Iterable[bytes]:
    """A multipart/form-data upload (purpose + file) around a lazily made file body."""
    yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nfine-tune\r\n"
           f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\n"
           "Content-Type: application/octet-stream\r\n\r\n").encode()
    yield from body
    yield f"\r\n--{boundary}--\r\n".encode()
