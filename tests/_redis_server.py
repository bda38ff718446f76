"""A private redis-server per test session or test, so tests can kill, pause and restart it."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


# A self-signed certificate for one day: clients do not trust it unless told to.
_SELF_SIGNED = [
    "openssl",
    "req",
    "-x509",
    "-newkey",
    "rsa:2048",
    "-nodes",
    "-days",
    "1",
    "-subj",
    "/CN=localhost",
]


@dataclass(frozen=True)
class TlsFiles:
    """A TLS redis-server's certificate and key, the CA that client certificates must
    chain to, and the client certificate and key it requires (None: it requires none)."""

    cert: Path
    key: Path
    ca: Path
    client: tuple[Path, Path] | None = None


class RedisServer:
    """``redis-server`` on a free loopback port, keeping nothing on disk.

    ``tls``: it speaks only TLS; True: with a self-signed certificate (made with
    ``openssl``) that clients do not trust unless told to; `TlsFiles`: with those.
    """

    def __init__(self, directory: Path, *, tls: bool | TlsFiles = False) -> None:
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.tls = tls is not False
        self.tls_files = tls if isinstance(tls, TlsFiles) else None
        if tls is True:
            subprocess.run(
                [*_SELF_SIGNED, "-keyout", "key.pem", "-out", "cert.pem"],
                cwd=directory,
                check=True,
                capture_output=True,
            )
            cert = directory / "cert.pem"
            self.tls_files = TlsFiles(cert, directory / "key.pem", cert)

    @property
    def url(self) -> str:
        return f"{'rediss' if self.tls else 'redis'}://127.0.0.1:{self.port}/0"

    def _listen(self) -> list[str]:
        files = self.tls_files
        if files is None:
            return ["--port", str(self.port)]
        auth_clients = "no" if files.client is None else "yes"
        return [
            *("--port", "0", "--tls-port", str(self.port), "--tls-auth-clients", auth_clients),
            *("--tls-cert-file", str(files.cert), "--tls-key-file", str(files.key)),
            *("--tls-ca-cert-file", str(files.ca)),
        ]

    def _pong(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as plain:
            connection: socket.socket = plain
            if self.tls_files is not None:
                context = ssl.create_default_context()
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
                if self.tls_files.client is not None:
                    context.load_cert_chain(*self.tls_files.client)
                connection = context.wrap_socket(plain)
            connection.sendall(b"PING\r\n")
            return connection.recv(16).startswith(b"+PONG")

    def start(self) -> None:
        try:
            self.process = subprocess.Popen(
                [
                    "redis-server",
                    *self._listen(),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(self.directory),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
            )
        except FileNotFoundError as exc:
            raise RuntimeError(
                "the tests need redis-server on PATH (Debian package redis-server)"
            ) from exc
        deadline = time.monotonic() + 30  # generous: a loaded machine starts it slowly
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}")
            try:
                if self._pong():
                    return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"redis-server did not answer on port {self.port}")

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def pause(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)

    def restart(self) -> None:
        self.kill()
        self.start()
