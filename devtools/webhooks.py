"""A local webhook endpoint for the tests: it records every delivery and refuses the first few."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Receiver:
    """What the endpoint at :attr:`url` got: each delivery's headers (lower-case names) and body.

    Attributes:
        refusals: deliveries still to answer with ``refused_status`` before answering ``accepted_status``.
    """

    url: str
    refusals: int = 0
    refused_status: int = 500
    accepted_status: int = 200
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)


@contextlib.contextmanager
def webhook_receiver(refusals: int = 0, refused_status: int = 500, accepted_status: int = 200) -> Iterator[Receiver]:
    """An endpoint on 127.0.0.1 for as long as the block runs."""
    receiver = Receiver(url="", refusals=refusals, refused_status=refused_status, accepted_status=accepted_status)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["content-length"]))
            receiver.received.append(({name.lower(): value for name, value in self.headers.items()}, body))
            refused = receiver.refusals > 0
            receiver.refusals -= 1
            self.send_response(receiver.refused_status if refused else receiver.accepted_status)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            return None

    endpoint = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver.url = f"http://127.0.0.1:{endpoint.server_address[1]}/hooks"
    threading.Thread(target=endpoint.serve_forever, daemon=True).start()
    try:
        yield receiver
    finally:
        endpoint.shutdown()
        endpoint.server_close()
