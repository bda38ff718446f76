"""Local certificates (trustme) and a private PostgreSQL that speaks only TLS.

`make_certificates` writes a CA, the server and client certificates it signs, and a second
CA that signed none of them (the wrong CA). `TlsPostgres` runs ``initdb`` and ``postgres``
(as the ``postgres`` user when the tests run as root: initdb refuses root) in a directory
of its own, with ``ssl=on``, listening on 127.0.0.1 and 127.0.0.2 on a free port, its
socket in that directory; the machine's own PostgreSQL and its configuration are untouched.
Its ``pg_hba.conf`` refuses every connection without TLS and takes TCP connections by
client certificate only (``cert``: the certificate's CN must be the user's name).
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import trustme

from ._poll import eventually_sync
from ._redis_server import free_port

#: The PostgreSQL user (initdb's superuser) and the CN of the client certificate.
USER = "agent"
#: Where initdb and postgres are (Debian's wrappers and binaries both work).
_BIN_DIRS = ("/usr/local/bin", "/usr/lib/postgresql/15/bin", "/usr/bin")


@dataclass(frozen=True)
class Certificates:
    ca: Path
    #: A CA that signed nothing here: trusting it alone must fail verification.
    wrong_ca: Path
    #: For localhost and 127.0.0.1 (not 127.0.0.2: a host the certificate does not name).
    server_cert: Path
    server_key: Path
    #: CN ``agent``: PostgreSQL's ``cert`` authentication maps it to the user ``agent``.
    client_cert: Path
    client_key: Path


def make_certificates(directory: Path) -> Certificates:
    directory.mkdir(parents=True, exist_ok=True)
    ca, wrong = trustme.CA(), trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1")
    client = ca.issue_cert("client.agent-core.test", common_name=USER)
    files = Certificates(
        ca=directory / "ca.pem",
        wrong_ca=directory / "wrong-ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
        client_cert=directory / "client.pem",
        client_key=directory / "client.key",
    )
    ca.cert_pem.write_to_path(str(files.ca))
    wrong.cert_pem.write_to_path(str(files.wrong_ca))
    server.cert_chain_pems[0].write_to_path(str(files.server_cert))
    server.private_key_pem.write_to_path(str(files.server_key))
    client.cert_chain_pems[0].write_to_path(str(files.client_cert))
    client.private_key_pem.write_to_path(str(files.client_key))
    for key in (files.server_key, files.client_key):
        key.chmod(0o600)
    return files


def _program(name: str) -> str:
    for directory in _BIN_DIRS:
        path = Path(directory) / name
        if path.exists():
            return str(path)
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"the TLS tests need PostgreSQL's {name} (Debian: postgresql)")
    return found


class TlsPostgres:
    """A private PostgreSQL with ``ssl=on`` in ``directory`` (created, owned by its user)."""

    def __init__(self, directory: Path, certificates: Certificates) -> None:
        self.directory = directory
        self.certificates = certificates
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        # initdb and postgres refuse to run as root: then they run as ``postgres``.
        self._user = "postgres" if os.geteuid() == 0 else None

    @property
    def data(self) -> Path:
        return self.directory / "data"

    def url(self, host: str = "127.0.0.1", **parameters: str) -> str:
        query = f"?{urlencode(parameters)}" if parameters else ""
        return f"postgresql://{USER}@{host}:{self.port}/postgres{query}"

    def start(self) -> None:
        self.directory.mkdir(parents=True)
        certificates = self.certificates
        # The server's own copies: its key must belong to the user that runs it (0600).
        for source, name in (
            (certificates.server_cert, "server.pem"),
            (certificates.server_key, "server.key"),
            (certificates.ca, "ca.pem"),
        ):
            shutil.copy(source, self.directory / name)
        if self._user is not None:
            user = pwd.getpwnam(self._user)
            for path in (self.directory, *self.directory.iterdir()):
                os.chown(path, user.pw_uid, user.pw_gid)
        self._run(
            _program("initdb"),
            *("-D", str(self.data), "-U", USER, "-A", "trust", "-E", "UTF8"),
            *("--locale=C", "--no-sync", "--no-instructions"),
        )
        (self.data / "pg_hba.conf").write_text(
            "local all all trust\n"
            "hostnossl all all 0.0.0.0/0 reject\n"
            "hostssl all all 127.0.0.0/8 cert\n"
        )
        settings = {
            "port": str(self.port),
            "listen_addresses": "127.0.0.1,127.0.0.2",
            "unix_socket_directories": str(self.directory),
            "ssl": "on",
            "ssl_cert_file": str(self.directory / "server.pem"),
            "ssl_key_file": str(self.directory / "server.key"),
            "ssl_ca_file": str(self.directory / "ca.pem"),
            "fsync": "off",
            "max_connections": "40",
            "shared_buffers": "16MB",
        }
        options = [arg for name, value in settings.items() for arg in ("-c", f"{name}={value}")]
        with (self.directory / "postgres.log").open("wb") as log:
            self.process = subprocess.Popen(
                [_program("postgres"), "-D", str(self.data), *options],
                stdout=log,
                stderr=subprocess.STDOUT,
                user=self._user,
                cwd=self.directory,
            )
        eventually_sync(self._ready, within=30, interval=0.02, show=self._log_tail)

    def _run(self, *command: str) -> None:
        done = subprocess.run(
            command, capture_output=True, user=self._user, cwd=self.directory, check=False
        )
        if done.returncode:
            output = (done.stdout + done.stderr).decode(errors="replace")[-2000:]
            raise RuntimeError(f"{Path(command[0]).name} failed ({done.returncode}): {output}")

    def _ready(self) -> bool:
        """postmaster.pid's 8th line says ``ready`` once it accepts connections."""
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(
                f"postgres exited with {self.process.returncode}: {self._log_tail()}"
            )
        try:
            lines = (self.data / "postmaster.pid").read_text().splitlines()
        except FileNotFoundError:
            return False
        return len(lines) >= 8 and lines[7].strip() == "ready"

    def _log_tail(self) -> str:
        try:
            return (self.directory / "postgres.log").read_text(errors="replace")[-2000:]
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        process.send_signal(signal.SIGINT)  # fast shutdown: disconnects clients, then exits
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
