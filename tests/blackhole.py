"""A TCP proxy on loopback that can silently drop its open connections, for connection-loss tests."""

from __future__ import annotations

import contextlib
import socket
import threading

from tests.processes import free_port


class _Pair:
    """One client connection and its upstream connection, pumped in both directions."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client, self.upstream = client, upstream
        # Once set, bytes are still read (so neither side sees a full window or a close) but
        # never forwarded: to both ends the peer has gone silent, as behind a dead NAT or firewall.
        self.dropped = threading.Event()

    def pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                if not self.dropped.is_set():
                    sink.sendall(data)
        except OSError:
            pass  # closed by close()


class BlackholeProxy:
    """Forwards 127.0.0.1:`port` to `upstream_port`. `blackhole()` silences every connection
    open now, in both directions, without a FIN or an RST; connections opened afterwards are
    forwarded normally (a client that reconnects gets through, one that waits hangs)."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._pairs: list[_Pair] = []
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            pair = _Pair(client, upstream)
            with self._lock:
                self._pairs.append(pair)
            threading.Thread(target=pair.pump, args=(client, upstream), daemon=True).start()
            threading.Thread(target=pair.pump, args=(upstream, client), daemon=True).start()

    def blackhole(self) -> int:
        """Silence every connection open now. Returns how many."""
        with self._lock:
            for pair in self._pairs:
                pair.dropped.set()
            return len(self._pairs)

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        with self._lock:
            for pair in self._pairs:
                for s in (pair.client, pair.upstream):
                    with contextlib.suppress(OSError):
                        s.shutdown(socket.SHUT_RDWR)  # wakes the pump threads
                    s.close()
