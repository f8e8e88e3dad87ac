"""SandboxServer: the embedded ServiceNow instance on a real loopback HTTP port."""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from werkzeug.serving import ThreadedWSGIServer, WSGIRequestHandler

from .app import SandboxApp
from .auth import Auth
from .counters import Counters
from .data import load_data
from .faults import Faults
from .store import Store
from .transform import TransformEngine

log = logging.getLogger("importer.sandbox")


class _QuietHandler(WSGIRequestHandler):
    # Headers and body go out in separate writes: without TCP_NODELAY, Nagle's algorithm and the
    # client's delayed ACK add milliseconds to every answer.
    disable_nagle_algorithm = True
    # Keep-alive, as a real instance offers it: a connection serves many requests, and one idle
    # for longer than the server's keepalive_idle_s is closed (StreamRequestHandler.timeout), so a
    # client's pooled connections go stale.
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        self.timeout = self.server.keepalive_idle_s  # type: ignore[attr-defined,misc]
        super().setup()
        self._requests_served = 0
        self._answered = False
        self.busy = False
        self.rfile = _KeepAliveInput(self.rfile, self)  # type: ignore[assignment]
        self.server.track(self, True)  # type: ignore[attr-defined]

    def handle_one_request(self) -> None:
        super().handle_one_request()
        self.busy = False
        if self.server.closing:  # type: ignore[attr-defined]
            self.close_connection = True  # the answer is out; the server is going away

    def end_headers(self) -> None:
        super().end_headers()
        self._answered = True

    def finish(self) -> None:
        self.server.track(self, False)  # type: ignore[attr-defined]
        super().finish()

    def make_environ(self) -> Any:
        self._answered = False
        self.busy = True
        environ = super().make_environ()
        self._requests_served += 1
        environ["sandbox.requests_on_connection"] = self._requests_served
        self._environ = environ
        return environ

    def send_header(self, keyword: str, value: str) -> None:
        # Werkzeug always answers "Connection: close" (it cannot tell whether the application read
        # the request body). The application can: it sets sandbox.close when it did not.
        closing = keyword.lower() == "connection" and value.lower() == "close"
        if closing and not getattr(self, "_environ", {}).get("sandbox.close"):
            return
        super().send_header(keyword, value)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass

    def log(self, type: str, message: str, *args: Any) -> None:
        if type == "error":
            log.error(message, *args)


class _KeepAliveInput:
    """The connection's input. After an answer Werkzeug reads whatever is left on the socket to
    discard it (it closes every connection); on a kept-alive connection that would swallow the
    next request, so once the answer is out, ``read`` gives nothing unless the connection closes."""

    def __init__(self, raw: Any, handler: _QuietHandler) -> None:
        self._raw = raw
        self._handler = handler

    def read(self, size: int = -1) -> bytes:
        handler = self._handler
        if handler._answered and not getattr(handler, "_environ", {}).get("sandbox.close"):
            return b""
        return bytes(self._raw.read(size))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)


class _Server(ThreadedWSGIServer):
    # Handler threads are joined on close, so stopping the sandbox leaks no thread.
    daemon_threads = False
    block_on_close = True
    keepalive_idle_s = 5.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._open: set[_QuietHandler] = set()
        self._open_lock = threading.Lock()
        self.closing = False
        super().__init__(*args, **kwargs)

    def track(self, handler: _QuietHandler, opened: bool) -> None:
        with self._open_lock:
            (self._open.add if opened else self._open.discard)(handler)

    def close_idle_connections(self) -> None:
        """On stop or an outage: end every idle kept-alive connection, so its handler thread ends
        and is joined; one answering a request closes once its answer is out."""
        self.closing = True
        with self._open_lock:
            handlers = [h for h in self._open if not h.busy]
        for handler in handlers:
            with contextlib.suppress(OSError):
                handler.connection.shutdown(socket.SHUT_RDWR)

    def server_close(self) -> None:
        self.close_idle_connections()
        super().server_close()


class SandboxServer:
    """The sandbox: ``SandboxServer(data).start()``, then talk to ``.url`` over HTTP."""

    def __init__(
        self, data: str | Path | dict[str, Any] | None = None, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.spec = load_data(data)
        self.host = host
        self.port = port
        self.store = Store(self.spec)
        self._counters = Counters()
        self._faults = Faults()
        self.auth = Auth(self.spec)
        self.engine = TransformEngine(
            self.store, self._counters, self.spec.seed, self.spec.async_transform_delay_ms / 1000.0
        )
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._outage_until = 0.0
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.app = SandboxApp(
            self.store,
            self.engine,
            self.auth,
            self._faults,
            self._counters,
            self._stopping,
            set_faults=self.set_faults,
            outage_active=self._outage_active,
        )

    # ------------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _bind(self, port: int) -> _Server:
        try:
            server = _Server(self.host, port, self.app, handler=_QuietHandler)
        except SystemExit as exc:  # werkzeug exits on bind errors; this is a library
            raise OSError(f"cannot listen on {self.host}:{port}") from exc
        server.keepalive_idle_s = self.spec.keepalive_idle_s
        return server

    def start(self) -> SandboxServer:
        if self._thread is not None:
            return self
        self._server = self._bind(self.port)
        self.port = self._server.port
        self.engine.start()
        self._thread = threading.Thread(target=self._serve, name=f"sandbox-http-{self.port}", daemon=True)
        self._thread.start()
        initial = dict(self.spec.faults)
        if initial:
            self.set_faults(**initial)
        return self

    def _serve(self) -> None:
        while True:
            server = self._server
            assert server is not None
            server.serve_forever(poll_interval=0.05)  # closes the listening socket when it returns
            if self._stopping.wait(max(0.0, self._outage_until - time.monotonic())):
                return
            new = None
            while new is None and not self._stopping.is_set():
                try:
                    new = self._bind(self.port)
                except OSError:
                    self._stopping.wait(0.05)
            with self._lock:
                if self._stopping.is_set():
                    if new is not None:
                        new.server_close()
                    return
                self._server = new

    def stop(self) -> None:
        with self._lock:
            self._stopping.set()
            server = self._server
        if server is not None and self._thread is not None and self._thread.is_alive():
            server.shutdown()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.engine.stop()

    def __enter__(self) -> SandboxServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def serve_forever(self) -> None:
        """For the CLI: serve until Ctrl-C or SIGTERM, then stop cleanly."""
        self.start()
        previous = None
        if threading.current_thread() is threading.main_thread():

            def on_term(signum: int, frame: object) -> None:
                raise KeyboardInterrupt

            previous = signal.signal(signal.SIGTERM, on_term)
        try:
            while not self._stopping.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
            self.stop()

    def banner(self) -> str:
        users = self.spec.users
        shown = [u for u in ("admin", "svc.import") if u in users] or list(users)[:2]
        basic = " ".join(f"{u}/{users[u].password}" for u in shown)
        client = next(iter(self.spec.clients.values()), None)
        oauth = f"  oauth client: {client.client_id}/{client.client_secret}" if client else ""
        return f"ServiceNow sandbox at {self.url}  basic: {basic}{oauth}"

    # ------------------------------------------------------------------ faults, counters, idleness

    def set_faults(self, **faults: Any) -> dict[str, Any]:
        config = self._faults.set(**faults)
        if "untransformed_import_sets" in faults and not faults["untransformed_import_sets"]:
            self.engine.release_held()
        outage = faults.get("outage_s")
        if outage:
            self._begin_outage(float(outage))
        return config

    def clear_faults(self) -> None:
        self._faults.clear()
        self.engine.release_held()

    def _outage_active(self) -> bool:
        return time.monotonic() < self._outage_until

    def _begin_outage(self, seconds: float) -> None:
        """Close the listening socket: connections are refused until it reopens on the same port."""
        with self._lock:
            already = self._outage_active()
            self._outage_until = max(self._outage_until, time.monotonic() + seconds)
            server = self._server
        self._counters.add_fault("outage")
        if not already and server is not None:
            # shutdown() waits for the serving loop; it runs in another thread than this request.
            threading.Thread(target=server.shutdown, name="sandbox-outage", daemon=True).start()
            with contextlib.suppress(OSError):
                server.socket.close()

    def counters(self) -> dict[str, Any]:
        return self.app.counters_snapshot()

    def wait_idle(self, timeout: float = 10) -> bool:
        """True once every posted asynchronous import set is processed."""
        return self.engine.wait_idle(timeout)
