"""A local HTTP receiver standing in for a notification webhook, and the Secret block naming it."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from phase2.infra import notifications


class WebhookReceiver:
    """An HTTP server in a thread that records every JSON body POSTed to it."""

    def __init__(self) -> None:
        self.messages: list[dict] = []
        self.raw: list[bytes] = []
        received = threading.Condition()
        self.received = received
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with received:
                    receiver.raw.append(body)
                    receiver.messages.append(json.loads(body))
                    received.notify_all()
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait_for(self, event: str, timeout: float = 30.0) -> dict:
        with self.received:
            self.received.wait_for(lambda: any(m["event"] == event for m in self.messages), timeout)
        found = [m for m in self.messages if m["event"] == event]
        assert found, f"no {event!r} message within {timeout} s; got {self.messages}"
        return found[-1]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook_receiver() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    yield receiver
    receiver.close()


@pytest.fixture
def webhook_secret_block(local_stack, webhook_receiver, monkeypatch) -> Iterator[WebhookReceiver]:
    """The receiver's URL in the Secret block the running worker's flow runs read at hook time."""
    from prefect.blocks.system import Secret

    monkeypatch.delenv(notifications.WEBHOOK_ENV, raising=False)
    Secret(value=webhook_receiver.url).save(notifications.WEBHOOK_SECRET_BLOCK, overwrite=True)
    yield webhook_receiver
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        block = client.read_block_document_by_name(notifications.WEBHOOK_SECRET_BLOCK, "secret")
        client.delete_block_document(block.id)
