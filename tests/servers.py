"""Real Redis and memcached servers for the tests, started from the binaries on PATH.

Each server runs on a free loopback port, in its own directory, with nothing
persisted, and can be stopped, killed, paused and restarted on the same port,
which is what outage tests need::

    >>> server = RedisServer(tmp_path).start()
    >>> server.url
    'redis://127.0.0.1:40123/0'
    >>> server.kill()       # the clients now see connection errors
    >>> server.start()      # same port: clients reconnect
    >>> server.stop()

No process outlives the test run: every started server is registered, stopped
at interpreter exit, and a server left behind by a run that was killed outright
(SIGKILL, so no exit handler ran) is killed by the next run (see
:func:`reap_orphans`).
"""

from __future__ import annotations

import atexit
import contextlib
import getpass
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar, Self

__all__ = [
    "MemcachedServer",
    "RedisServer",
    "ServerError",
    "ServerProcess",
    "free_port",
    "reap_orphans",
]

_HOST = "127.0.0.1"
_REGISTRY = Path(tempfile.gettempdir()) / "buttress-test-servers"
"""One file per live server process, named by its pid, holding the pid of the test
process that owns it: what :func:`reap_orphans` reads."""


class ServerError(RuntimeError):
    """A server binary is missing, or the server did not start or answer."""


def free_port(host: str = _HOST) -> int:
    """A TCP port nobody listens on right now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap_orphans() -> None:
    """Kill servers whose test process died without stopping them (it was SIGKILLed)."""
    if not _REGISTRY.is_dir():
        return
    for entry in _REGISTRY.iterdir():
        try:
            pid = int(entry.name)
            owner, _, directory = entry.read_text().partition("\n")
            owner_pid = int(owner)
        except (ValueError, OSError):
            continue
        if _alive(owner_pid):
            continue  # its test run (maybe this one) is still going
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            cmdline = b""
        # The pid may have been reused since: only kill what is still one of ours.
        if any(name in cmdline for name in (b"redis-server", b"memcached")):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        leftover = Path(directory.strip())
        if directory.strip() and leftover.name.startswith("buttress-"):
            shutil.rmtree(leftover, ignore_errors=True)  # a temporary one it made
        entry.unlink(missing_ok=True)


class ServerProcess:
    """One server process; :class:`RedisServer` and :class:`MemcachedServer` fill in the details.

    The port is chosen once, at the first :meth:`start`, and kept: a restart
    after :meth:`stop` or :meth:`kill` listens on the same address, so clients
    configured with :attr:`url` reconnect to it.
    """

    binary: ClassVar[str]
    startup_timeout: ClassVar[float] = 10.0

    def __init__(
        self,
        directory: Path | None = None,
        *,
        port: int | None = None,
        arguments: Sequence[str] = (),
    ) -> None:
        """``arguments`` are added to the server's command line (``["-o", "no_lru_crawler"]``)."""
        self.host = _HOST
        self._extra_arguments = list(arguments)
        self._fixed_port = port is not None
        self.port = port if port is not None else 0
        self._owns_directory = directory is None
        self.directory = (
            Path(tempfile.mkdtemp(prefix=f"buttress-{self.binary}-"))
            if directory is None
            else directory
        )
        self._process: subprocess.Popen[bytes] | None = None
        self._paused = False

    def __repr__(self) -> str:
        state = "paused" if self._paused else "running" if self.running else "stopped"
        return f"{type(self).__name__}({self.host}:{self.port}, {state})"

    # -- what subclasses provide ---------------------------------------------

    @property
    def url(self) -> str:
        raise NotImplementedError

    def _arguments(self) -> list[str]:
        raise NotImplementedError

    def _handshake(self, sock: socket.socket) -> None:
        """Raise unless the server behind ``sock`` answers a trivial request."""
        raise NotImplementedError

    def flush(self) -> None:
        """Drop every key (the server keeps running)."""
        raise NotImplementedError

    # -- lifecycle -----------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def log_path(self) -> Path:
        return self.directory / f"{self.binary}.log"

    def start(self) -> Self:
        """Start the server (on the same port as before, if it ran before) and wait until
        it answers; a no-op if it is running. Resumes a paused server."""
        if self.running:
            self.resume()
            return self
        executable = shutil.which(self.binary)
        if executable is None:
            raise ServerError(
                f"{self.binary} not found on PATH; the tests run a real server: "
                f"install it (`make servers` installs the Debian package)"
            )
        # A port picked by the kernel may be taken by someone else before the
        # server binds it; only then, and only the first time, pick another.
        attempts = 1 if self._fixed_port or self.port else 5
        for attempt in range(attempts):
            if not self._fixed_port and not self.port:
                self.port = free_port(self.host)
            try:
                self._launch(executable)
                return self
            except ServerError:
                if attempt + 1 == attempts or "in use" not in self._log_tail():
                    raise
                self.port = 0
        raise AssertionError("unreachable")

    def _launch(self, executable: str) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"--- starting on port {self.port}\n".encode())
            log.flush()
            # The server stays in our process group, so Ctrl-C in a terminal
            # stops it together with pytest.
            self._process = subprocess.Popen(
                [executable, *self._arguments(), *self._extra_arguments],
                cwd=self.directory,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self._paused = False
        _LIVE[self._process.pid] = self
        _REGISTRY.mkdir(parents=True, exist_ok=True)
        owned = str(self.directory) if self._owns_directory else ""
        (_REGISTRY / str(self._process.pid)).write_text(f"{os.getpid()}\n{owned}\n")
        try:
            self._wait_ready()
        except BaseException:
            self.kill()
            raise

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        last_error: BaseException | None = None
        while True:
            assert self._process is not None
            code = self._process.poll()
            if code is not None:
                raise ServerError(
                    f"{self.binary} exited with status {code} while starting on "
                    f"{self.host}:{self.port}; its output:\n{self._log_tail()}"
                )
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5) as sock:
                    sock.settimeout(0.5)
                    self._handshake(sock)
                return
            except OSError as exc:
                last_error = exc
            if time.monotonic() > deadline:
                raise ServerError(
                    f"{self.binary} did not answer on {self.host}:{self.port} within "
                    f"{self.startup_timeout} s (last error: {last_error!r}); its output:\n"
                    f"{self._log_tail()}"
                )
            time.sleep(0.01)

    def _log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no output)"
        return "\n".join(text.splitlines()[-lines:]) or "(no output)"

    def stop(self, timeout: float = 5.0) -> None:
        """Shut the server down cleanly (SIGTERM), killing it if it does not exit in time."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            if self._paused:
                process.send_signal(signal.SIGCONT)
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._forget()

    def kill(self) -> None:
        """Kill the server at once (SIGKILL): an outage, as a client sees a crash."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.kill()
            process.wait()
        self._forget()

    def _forget(self) -> None:
        if self._process is not None:
            _LIVE.pop(self._process.pid, None)
            (_REGISTRY / str(self._process.pid)).unlink(missing_ok=True)
        self._paused = False

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections still open, nothing answers."""
        if self._process is not None and self.running and not self._paused:
            self._process.send_signal(signal.SIGSTOP)
            self._paused = True
            # The signal lands a moment later; a request sent meanwhile would be
            # answered. Wait until the kernel reports the process stopped.
            stat = Path(f"/proc/{self._process.pid}/stat")
            deadline = time.monotonic() + 5.0
            while stat.exists() and time.monotonic() < deadline:
                state = stat.read_text().rsplit(")", 1)[1].split()[0]
                if state in ("T", "t"):
                    break
                time.sleep(0.001)

    def resume(self) -> None:
        """Thaw a paused server (SIGCONT)."""
        if self._process is not None and self._paused:
            self._process.send_signal(signal.SIGCONT)
            self._paused = False

    def ensure_running(self) -> Self:
        """Resume it if paused, restart it if it was stopped or killed."""
        return self.start()

    def close(self) -> None:
        """Stop the server and remove its directory if this object created it."""
        self.stop()
        if self._owns_directory:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- talking to it -------------------------------------------------------

    def request(
        self, payload: bytes, *, terminator: bytes = b"\r\n", timeout: float = 5.0
    ) -> bytes:
        """Send ``payload`` on a new connection and read the reply up to ``terminator``."""
        with socket.create_connection((self.host, self.port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(payload)
            return _read_until(sock, terminator)


def _read_until(sock: socket.socket, terminator: bytes) -> bytes:
    buffer = b""
    while not buffer.endswith(terminator):
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"connection closed after {buffer!r}")
        buffer += chunk
    return buffer


def _resp(*args: str | bytes) -> bytes:
    """Encode a Redis command in RESP."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg.encode() if isinstance(arg, str) else arg
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class RedisServer(ServerProcess):
    """``redis-server`` without persistence, with ``DEBUG`` allowed from loopback."""

    binary = "redis-server"

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def _arguments(self) -> list[str]:
        return [
            "--port", str(self.port),
            "--bind", self.host,
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.directory),
            "--daemonize", "no",
            "--logfile", "",
            # DEBUG SLEEP freezes the server for timeout tests.
            "--enable-debug-command", "local",
        ]  # fmt: skip

    def _handshake(self, sock: socket.socket) -> None:
        sock.sendall(_resp("PING"))
        reply = _read_until(sock, b"\r\n")
        if reply != b"+PONG\r\n":
            raise ConnectionError(f"unexpected reply to PING: {reply!r}")

    def command(self, *args: str | bytes) -> bytes:
        """Run one command on a new connection; the first line of the reply."""
        return self.request(_resp(*args))

    def flush(self) -> None:
        reply = self.command("FLUSHALL")
        if reply != b"+OK\r\n":
            raise ServerError(f"FLUSHALL failed: {reply!r}")


class MemcachedServer(ServerProcess):
    """``memcached`` on TCP only (no UDP), 64 MB of memory."""

    binary = "memcached"

    @property
    def url(self) -> str:
        return f"memcached://{self.host}:{self.port}"

    def _arguments(self) -> list[str]:
        arguments = ["-l", self.host, "-p", str(self.port), "-U", "0", "-m", "64", "-t", "2"]
        if os.geteuid() == 0:
            arguments += ["-u", getpass.getuser()]  # memcached refuses root without -u
        return arguments

    def _handshake(self, sock: socket.socket) -> None:
        sock.sendall(b"version\r\n")
        reply = _read_until(sock, b"\r\n")
        if not reply.startswith(b"VERSION "):
            raise ConnectionError(f"unexpected reply to version: {reply!r}")

    def stop(self, timeout: float = 5.0) -> None:
        """Kill it: memcached keeps nothing on disk, and its clean shutdown takes a second."""
        self.kill()

    def flush(self) -> None:
        reply = self.request(b"flush_all\r\n")
        if reply != b"OK\r\n":
            raise ServerError(f"flush_all failed: {reply!r}")


_LIVE: dict[int, ServerProcess] = {}
"""Started servers by pid, until stopped: what the exit handler kills."""


@atexit.register
def _kill_live_servers() -> None:
    for server in list(_LIVE.values()):
        with contextlib.suppress(Exception):
            server.kill()
