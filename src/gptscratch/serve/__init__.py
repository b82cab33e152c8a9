"""`gptscratch serve`: an OpenAI-compatible completions server with batched decoding and a playground page.

`engine` decodes many requests in one forward pass per step; `api` is the HTTP side (Starlette, run by
uvicorn), imported only here, so the rest of the package never needs the `[serve]` extra.
"""

from __future__ import annotations

import ipaddress
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from gptscratch.errors import UserError
from gptscratch.model import GPT


def open_socket(host: str, port: int) -> socket.socket:
    """Bind before serving, so port 0 (any free port) can be reported and a busy port fails in one line."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)  # from now on a client is queued, not refused, while uvicorn starts
    except OSError as e:
        sock.close()
        raise UserError(f"--host {host} --port {port}: cannot listen there ({e.strerror})") from None
    return sock


def check_installed() -> None:
    """The [serve] extra, or one line saying how to install it (before any model is loaded)."""
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise UserError(f"gptscratch serve needs the [serve] extra ({e.name} is missing): "
                        "pip install 'gptscratch[serve]'") from None


@dataclass
class Limits:
    """What one client may hold: seconds for a request's head and then its body to arrive, seconds an idle
    keep-alive connection stays open, and open connections in all."""

    request_timeout: float = 30.0
    keep_alive_timeout: float = 5.0
    max_connections: int = 256


def is_loopback(sock: socket.socket) -> bool:
    return ipaddress.ip_address(sock.getsockname()[0]).is_loopback


def uvicorn_server(engine, model_id: str, sock: socket.socket, limits: Limits, graceful_s: int, **server_kwargs):
    """uvicorn running the app on `engine`: h11 with a deadline for each request's head and a connection cap
    (`GuardedH11`), headers capped at 16 KiB, no WebSocket upgrades."""
    import uvicorn

    from gptscratch.serve.api import GuardedH11, Server, make_app

    app = make_app(Server(engine, model_id, loopback=is_loopback(sock), request_timeout=limits.request_timeout,
                          **server_kwargs))
    protocol = GuardedH11.limited(limits.request_timeout, limits.max_connections)
    return uvicorn.Server(uvicorn.Config(app, http=protocol, ws="none", log_level="warning",
                                         timeout_keep_alive=limits.keep_alive_timeout,
                                         h11_max_incomplete_event_size=16 * 1024,
                                         timeout_graceful_shutdown=graceful_s))


def serve(model: GPT, model_id: str, host: str = "127.0.0.1", port: int = 8000, max_batch: int = 8,
          max_queue: int = 64, api_key: str | None = None, amp: torch.dtype | None = None,
          max_body: int = 1 << 20, limits: Limits | None = None) -> None:
    """Serve `model` until interrupted."""
    check_installed()
    from gptscratch.serve.engine import Engine

    sock = open_socket(host, port)
    engine = Engine(model, max_batch=max_batch, max_queue=max_queue, amp=amp).start()
    server = uvicorn_server(engine, model_id, sock, limits or Limits(), 2, api_key=api_key, max_body=max_body)
    bound_host, bound_port = sock.getsockname()[:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    print(f"serving {model_id} at http://{shown}:{bound_port} (the page at /, the API at /v1/completions); "
          "Ctrl-C stops", flush=True)
    if api_key is None and not is_loopback(sock):
        print(f"warning: --host {host} takes connections from other machines and no --api-key is set: anyone who "
              "can reach this port can use the model", file=sys.stderr, flush=True)
    try:
        server.run(sockets=[sock])
    finally:
        engine.stop()
        sock.close()


@contextmanager
def serving_in_thread(engine, model_id: str, host: str = "127.0.0.1", port: int = 0, limits: Limits | None = None,
                      **server_kwargs) -> Iterator[str]:
    """Run the app on `engine` in a background thread (tests, benchmarks); yields its base URL. The engine
    is the caller's to start and stop."""
    sock = open_socket(host, port)
    server = uvicorn_server(engine, model_id, sock, limits or Limits(), 1, **server_kwargs)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the server did not start")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
