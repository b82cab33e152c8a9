"""`gptscratch serve`: an OpenAI-compatible completions server with batched decoding and a playground page.

`engine` decodes many requests in one forward pass per step; `api` is the HTTP side (Starlette, run by
uvicorn), imported only here, so the rest of the package never needs the `[serve]` extra.
"""

from __future__ import annotations

import argparse
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from gptscratch.device import pick_device
from gptscratch.errors import UserError
from gptscratch.hf.pretrained import add_model_args, check_model_args, load_model_arg, model_name
from gptscratch.model import GPT
from gptscratch.precision import DTYPE_HELP, DTYPES, autocast_dtype


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


def serve(model: GPT, model_id: str, host: str = "127.0.0.1", port: int = 8000, max_batch: int = 8,
          max_queue: int = 64, api_key: str | None = None, amp: torch.dtype | None = None,
          max_body: int = 1 << 20) -> None:
    """Serve `model` until interrupted."""
    check_installed()
    import uvicorn

    from gptscratch.serve.api import Server, make_app
    from gptscratch.serve.engine import Engine

    sock = open_socket(host, port)
    engine = Engine(model, max_batch=max_batch, max_queue=max_queue, amp=amp).start()
    app = make_app(Server(engine, model_id, api_key=api_key, max_body=max_body))
    bound_host, bound_port = sock.getsockname()[:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    print(f"serving {model_id} at http://{shown}:{bound_port} (the page at /, the API at /v1/completions); "
          "Ctrl-C stops", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2))
    try:
        server.run(sockets=[sock])
    finally:
        engine.stop()
        sock.close()


@contextmanager
def serving_in_thread(engine, model_id: str, host: str = "127.0.0.1", port: int = 0, **server_kwargs) -> Iterator[str]:
    """Run the app on `engine` in a background thread (tests, benchmarks); yields its base URL. The engine
    is the caller's to start and stop."""
    import uvicorn

    from gptscratch.serve.api import Server, make_app

    sock = open_socket(host, port)
    server = uvicorn.Server(uvicorn.Config(make_app(Server(engine, model_id, **server_kwargs)), log_level="warning",
                                          timeout_graceful_shutdown=1))
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


def cmd_serve(args: argparse.Namespace) -> int:
    check_model_args(args)
    if args.max_batch < 1 or args.max_queue < 1:
        raise UserError("--max-batch and --max-queue must be at least 1")
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port {args.port}: expected 0 (any free port) to 65535")
    check_installed()
    device = pick_device(args.device)
    model = load_model_arg(args, device)
    name = args.model_name or model_name(args)
    serve(model, name, host=args.host, port=args.port, max_batch=args.max_batch, max_queue=args.max_queue,
          api_key=args.api_key, amp=autocast_dtype(args.dtype, device), max_body=args.max_body)
    return 0


def register(sub) -> None:
    p = sub.add_parser("serve", help="serve a model: an OpenAI-compatible completions API and a playground page",
                       description="Serve a model over HTTP: POST /v1/completions (OpenAI's shape, streaming "
                       "included), GET /v1/models, GET /health, and a playground page at /. Concurrent requests "
                       "are decoded together, one forward pass per step. Needs the [serve] extra.")
    add_model_args(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine "
                   "only; 0.0.0.0 opens it to the network)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument("--max-batch", type=int, default=8, metavar="N", help="sequences decoded together (default 8)")
    p.add_argument("--max-queue", type=int, default=64, metavar="N",
                   help="requests waiting for a place in the batch before new ones get HTTP 429 (default 64)")
    p.add_argument("--api-key", default=None, metavar="KEY",
                   help="require 'Authorization: Bearer KEY' on /v1/* (default: no key)")
    p.add_argument("--model-name", default=None, help="the model's id in the API (default: the --ckpt/--hf name)")
    p.add_argument("--max-body", type=int, default=1 << 20, metavar="BYTES", help="largest request body "
                   "(default 1 MiB)")
    p.add_argument("--dtype", choices=DTYPES, default="float32",
                   help=f"{DTYPE_HELP}. Default float32, as sample's")
    p.set_defaults(func=cmd_serve)
