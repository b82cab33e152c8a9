"""`gptscratch serve`: an OpenAI-compatible completions and chat server with batched decoding and a playground page.

`engine` decodes many requests in one forward pass per step; `api` is the HTTP side (Starlette, run by
uvicorn), imported only here, so the rest of the package never needs the `[serve]` extra.
"""

from __future__ import annotations

import argparse
import ipaddress
import math
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from gptscratch.device import pick_device
from gptscratch.errors import UserError
from gptscratch.hf.pretrained import add_model_args, check_model_args, load_model_arg, model_name
from gptscratch.model import GPT
from gptscratch.precision import DTYPE_HELP, DTYPES, autocast_dtype
from gptscratch.tokenizer import Tokenizer


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
          max_body: int = 1 << 20, limits: Limits | None = None, tokenizer: Tokenizer | None = None) -> None:
    """Serve `model` (with its `tokenizer`: GPT-2's by default) until interrupted."""
    check_installed()
    from gptscratch.serve.engine import Engine

    sock = open_socket(host, port)
    engine = Engine(model, max_batch=max_batch, max_queue=max_queue, amp=amp, tokenizer=tokenizer).start()
    server = uvicorn_server(engine, model_id, sock, limits or Limits(), 2, api_key=api_key, max_body=max_body)
    bound_host, bound_port = sock.getsockname()[:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    print(f"serving {model_id} at http://{shown}:{bound_port} (the page at /, the API at /v1/completions"
          f"{' and /v1/chat/completions' if engine.chat else ''}); "
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


# --- gptscratch serve ----------------------------------------------------------------------------


def check_serve_args(args: argparse.Namespace) -> None:
    """Every serve flag, before the model loads."""
    check_model_args(args)
    for flag, value in (("--max-batch", args.max_batch), ("--max-queue", args.max_queue),
                        ("--max-connections", args.max_connections)):
        if value < 1:
            raise UserError(f"{flag} {value}: expected at least 1")
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port {args.port}: expected 0 (any free port) to 65535")
    # a key no client can send (empty, or spaces a header loses at its ends) would lock every client out
    key = args.api_key
    if key is not None and not (key and key.strip() == key and all(" " <= c <= "~" for c in key)):
        raise UserError(f"--api-key {key!r}: expected a non-empty key of printable ASCII characters, without "
                        "spaces at either end")
    if args.max_body < 1024:
        raise UserError(f"--max-body {args.max_body}: expected at least 1024 bytes")
    for flag, value in (("--request-timeout", args.request_timeout),
                        ("--keep-alive-timeout", args.keep_alive_timeout)):
        if not (math.isfinite(value) and value > 0):
            raise UserError(f"{flag} {value}: expected a number of seconds above 0")


def cmd_serve(args: argparse.Namespace) -> int:
    check_serve_args(args)
    check_installed()
    device = pick_device(args.device)
    model, tokenizer = load_model_arg(args, device)
    name = args.model_name or model_name(args)
    limits = Limits(request_timeout=args.request_timeout, keep_alive_timeout=args.keep_alive_timeout,
                    max_connections=args.max_connections)
    serve(model, name, host=args.host, port=args.port, max_batch=args.max_batch, max_queue=args.max_queue,
          api_key=args.api_key, amp=autocast_dtype(args.dtype, device), max_body=args.max_body, limits=limits,
          tokenizer=tokenizer)
    return 0


def register(sub) -> None:
    p = sub.add_parser("serve", help="serve a model: an OpenAI-compatible completions and chat API, and a "
                       "playground page",
                       description="Serve a model over HTTP: POST /v1/completions and, for a chat model (trained "
                       "with --preset sft), POST /v1/chat/completions (OpenAI's shapes, streaming included), "
                       "GET /v1/models, GET /health, and a playground page at / with a completion mode and a chat "
                       "mode. Concurrent requests, completions and chats alike, are decoded together, one forward "
                       "pass per step. Needs the [serve] extra.")
    add_model_args(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine "
                   "only; 0.0.0.0 opens it to the network)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument("--max-batch", type=int, default=8, metavar="N", help="sequences decoded together (default 8)")
    p.add_argument("--max-queue", type=int, default=64, metavar="N",
                   help="requests waiting for a place in the batch before new ones get HTTP 429 (default 64)")
    p.add_argument("--api-key", default=None, metavar="KEY",
                   help="require 'Authorization: Bearer KEY' on /v1/* (default: no key; printable ASCII)")
    p.add_argument("--model-name", default=None, help="the model's id in the API (default: the --ckpt/--hf name)")
    p.add_argument("--max-body", type=int, default=1 << 20, metavar="BYTES", help="largest request body "
                   "(default 1 MiB; at least 1024)")
    p.add_argument("--request-timeout", type=float, default=30.0, metavar="SECONDS",
                   help="a request's headers, and then its body, must each arrive within this (default 30); "
                   "a slower client gets HTTP 408 and is disconnected")
    p.add_argument("--keep-alive-timeout", type=float, default=5.0, metavar="SECONDS",
                   help="an idle connection is closed after this (default 5)")
    p.add_argument("--max-connections", type=int, default=256, metavar="N",
                   help="open connections at most; one more gets HTTP 503 and is closed (default 256)")
    p.add_argument("--dtype", choices=DTYPES, default="float32",
                   help=f"{DTYPE_HELP}. Default float32, as sample's")
    p.set_defaults(func=cmd_serve)
