"""Private mosquitto, influxd and victoria-metrics processes for the demo and the tests.

Each service gets a work dir (created if missing) holding its config, data and log, binds
to 127.0.0.1 on a free port, is started in its own process group, is waited on until it
answers its protocol, and is stopped by PID (SIGTERM, then SIGKILL). Stdlib only: the CLI
imports this module without numpy or the stream's dependencies.

    with Mosquitto(tmp / "mqtt", users={"gw1": "secret"}) as broker:
        ...  # broker.host, broker.port

Measured on the target machine: mosquitto is ready in about
30 ms, influxd in about 20 ms (and takes about 1.7 s to stop), victoria-metrics in about
70 ms.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import hashlib
import logging
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar

log = logging.getLogger(__name__)

TEMPLATE_PATH = Path(__file__).with_name("mosquitto.conf")
"""The production-shaped broker config (also at the repo root as `mosquitto.conf`)."""

_SEARCH_DIRS = ("/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin")
_LOG_TAIL_LINES = 20


class ServiceError(RuntimeError):
    """A service binary is missing, or the process exited or never answered."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (the OS picks it).

    Another process may take it before the service binds it; services started on an
    automatic port retry with a new one when their bind fails.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_binary(name: str, package: str) -> str:
    """Absolute path of `name` on PATH or in the system dirs; ServiceError names the package."""
    found = shutil.which(name)
    if found:
        return found
    for d in _SEARCH_DIRS:
        candidate = Path(d) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise ServiceError(
        f"{name} not found: install the Debian package {package} (make install-deps)")


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


# Every started service, so that a crashing demo does not leave brokers behind.
_RUNNING: set[Service] = set()


@atexit.register
def _stop_all() -> None:
    for service in list(_RUNNING):
        with contextlib.suppress(Exception):
            service.stop()


class Service:
    """Base class: one child process in its own process group, with a work dir and a log.

    Subclasses set `name`, `package`, `binary` and implement `_prepare()` (write config,
    return argv) and `_ready()` (True when the service answers).
    """

    name: ClassVar[str] = "service"
    package: ClassVar[str] = ""
    binary: ClassVar[str] = ""
    stop_timeout_s: ClassVar[float] = 5.0

    def __init__(self, workdir: str | os.PathLike[str] | None = None, port: int | None = None,
                 *, executable: str | None = None) -> None:
        """`workdir`: created if missing (None: a new temp dir, removed by `stop()`).
        `port`: TCP port on 127.0.0.1 (None: a free one). `executable`: binary name or path
        instead of the default (tests use it to check the missing-binary error)."""
        self._own_workdir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix=f"ballpass-{self.name}-")
                            if workdir is None else workdir).resolve()
        self._fixed_port = port is not None
        self.host = "127.0.0.1"
        self.port = port if port is not None else 0
        self.executable = executable or self.binary
        self.log_path = self.workdir / f"{self.name}.log"
        self._proc: subprocess.Popen[bytes] | None = None

    # --- public ---------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """PID of the running process, None when not started or stopped."""
        return self._proc.pid if self._proc is not None else None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout_s: float = 10.0) -> None:
        """Launch and wait until it answers; ServiceError (with the log tail) otherwise.

        On an automatic port, a start that fails because the port was taken in between
        is retried twice with a new port.
        """
        if self.running:
            return
        exe = self.executable if os.sep in self.executable else find_binary(
            self.executable, self.package)
        self.workdir.mkdir(parents=True, exist_ok=True)
        attempts = 1 if self._fixed_port else 3
        for attempt in range(attempts):
            if not self._fixed_port:
                self.port = free_port()
            try:
                self._launch(exe, timeout_s)
                return
            except ServiceError as e:
                if attempt + 1 < attempts and "in use" in str(e).lower():
                    log.warning("event=service_port_retry service=%s port=%d",
                                self.name, self.port)
                    continue
                raise

    def stop(self, timeout_s: float | None = None) -> None:
        """SIGTERM the process group, SIGKILL after `timeout_s`; safe to call twice."""
        proc, self._proc = self._proc, None
        _RUNNING.discard(self)
        if proc is not None:
            self._terminate(proc, self.stop_timeout_s if timeout_s is None else timeout_s)
            log.info("event=service_stopped service=%s pid=%d rc=%s",
                     self.name, proc.pid, proc.returncode)
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def kill(self) -> None:
        """SIGKILL the process group (a crash, for the tests); `start()` restarts it with
        the same work dir and port."""
        proc, self._proc = self._proc, None
        _RUNNING.discard(self)
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5.0)

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """The last `lines` lines of the service's log ('' if there is none)."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> Service:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(workdir={str(self.workdir)!r}, port={self.port}, "
                f"pid={self.pid})")

    # --- for subclasses -------------------------------------------------------------

    def _prepare(self) -> list[str]:
        """Write config files into the work dir; return argv after the executable."""
        raise NotImplementedError

    def _ready(self) -> bool:
        """True when the service answers on its port."""
        raise NotImplementedError

    # --- internals ------------------------------------------------------------------

    def _launch(self, exe: str, timeout_s: float) -> None:
        # Something already listening would answer the readiness probe in place of our
        # process (which then exits with "Address already in use"): refuse up front.
        if _port_open(self.host, self.port):
            raise ServiceError(f"{self.name}: port {self.host}:{self.port} is already in use")
        args = self._prepare()
        t0 = time.monotonic()
        with open(self.log_path, "ab") as logf:
            # Own session/process group: Ctrl-C in a terminal reaches us, not the child,
            # so the demo shuts services down in order; stop() signals the group.
            proc = subprocess.Popen([exe, *args], stdin=subprocess.DEVNULL, stdout=logf,
                                    stderr=subprocess.STDOUT, cwd=self.workdir,
                                    start_new_session=True)
        self._proc = proc
        _RUNNING.add(self)
        deadline = t0 + timeout_s
        while True:
            rc = proc.poll()
            if rc is not None:
                self._proc = None
                _RUNNING.discard(self)
                raise ServiceError(
                    f"{self.name} exited with code {rc} during start (port {self.port}); "
                    f"log {self.log_path}:\n{self.log_tail()}")
            if self._ready():
                log.info("event=service_started service=%s pid=%d port=%d ms=%.0f",
                         self.name, proc.pid, self.port, (time.monotonic() - t0) * 1e3)
                return
            if time.monotonic() > deadline:
                self.stop(timeout_s=2.0)
                raise ServiceError(
                    f"{self.name} did not answer on {self.host}:{self.port} within "
                    f"{timeout_s:g} s; log {self.log_path}:\n{self.log_tail()}")
            time.sleep(0.01)

    @staticmethod
    def _terminate(proc: subprocess.Popen[bytes], timeout_s: float) -> None:
        if proc.poll() is not None:
            return
        # Signal by our child's PID (its process group id is the same, it leads it).
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5.0)

    def _http_status(self, path: str, timeout_s: float = 0.5) -> int | None:
        """Status code of GET `path`, None if the connection fails."""
        try:
            with urllib.request.urlopen(self.url + path, timeout=timeout_s) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as e:
            return int(e.code)
        except (OSError, urllib.error.URLError):
            return None


# --- mosquitto -------------------------------------------------------------------------

# Global directives the launcher owns: commented out and set again in its own block.
_MANAGED_GLOBAL = {"persistence", "persistence_location", "persistence_file", "log_dest",
                   "user", "pid_file", "port", "bind_address", "bind_interface"}
# Directives that belong to the listener declared before them (per_listener_settings
# true): they are dropped with their listener, and their paths are rewritten.
_LISTENER_SCOPED = {"allow_anonymous", "password_file", "acl_file", "use_username_as_clientid",
                    "cafile", "capath", "certfile", "keyfile", "tls_version",
                    "require_certificate", "use_identity_as_username",
                    "use_subject_as_username", "crlfile", "ciphers", "protocol",
                    "socket_domain", "mount_point", "max_connections"}
_TLS_KEYS = {"cafile", "capath", "certfile", "keyfile"}


def acl_text(stream_users: Iterable[str] = ("stream",),
             operator_users: Iterable[str] = ()) -> str:
    """The mosquitto ACL of docs/topics.md.

    Every user is a gateway under the `pattern` lines (username = gateway id): it may
    write only window, tacho and status below its own prefix and read only its config.
    Stream users read everything and write diagnosis and alerts; operator users read
    everything and write gateway config and operator commands (`bp/v1/{site}/command`:
    rebaseline, ack, false alarm). Anonymous clients get nothing.
    """
    lines = [
        "# ballpass ACL (generated by ballpass.services.acl_text).",
        "# Gateways: username = gateway id.",
        "pattern write bp/v1/+/%u/+/window",
        "pattern write bp/v1/+/%u/+/tacho",
        "pattern write bp/v1/+/%u/status",
        "pattern read bp/v1/+/%u/config",
        "",
    ]
    for user in stream_users:
        lines += [f"user {user}", "topic read bp/v1/#", "topic write bp/v1/+/+/+/diagnosis",
                  "topic write bp/v1/+/alerts", ""]
    for user in operator_users:
        lines += [f"user {user}", "topic read bp/v1/#", "topic write bp/v1/+/+/config",
                  "topic write bp/v1/+/command", ""]
    return "\n".join(lines)


def mosquitto_password_hash(password: str, iterations: int = 101) -> str:
    """A mosquitto 2.0 password-file hash: `$7$iterations$salt$hash`, PBKDF2-SHA512.

    The same format `mosquitto_passwd` writes (12-byte salt, 64-byte key, base64), so no
    subprocess is needed to create users.
    """
    salt = secrets.token_bytes(12)
    key = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations, 64)
    return (f"$7${iterations}${base64.b64encode(salt).decode()}"
            f"${base64.b64encode(key).decode()}")


_USERNAME_RE = re.compile(r"[^:\s#]{1,64}")


def derive_mosquitto_config(template: str, *, port: int, workdir: Path, anonymous: bool,
                            run_as: str | None, tls: Mapping[str, object] | None = None,
                            tls_port: int | None = None, tls_only: bool = False) -> str:
    """The shipped template with its listeners, file paths and logging moved to `workdir`.

    Every listener block of the template is kept with its own security settings
    (per_listener_settings true): a plain one moves to 127.0.0.1:`port`, a TLS one (a
    block with a certfile) to 127.0.0.1:`tls_port` with the `tls` files (keys cafile,
    certfile, keyfile, require_certificate). The TLS block is dropped when `tls` is None;
    the plain blocks are dropped when `tls_only` (the documented TLS-only mode). Password
    and ACL paths point into `workdir`; `anonymous` opens every kept listener to anyone,
    with no ACL. Every other line is kept as is. ValueError when no listener is left.
    """
    lines = template.splitlines()
    # A listener's block runs to the next `listener` line; it is TLS when it names a cert.
    kinds: dict[int, str] = {}
    current = None
    for i, line in enumerate(lines):
        words = line.split()
        if words and words[0] == "listener":
            current = i
            kinds[i] = "plain"
        elif words and words[0] == "certfile" and current is not None:
            kinds[current] = "tls"
    kept_listeners = 0
    out: list[str] = []
    block_kind: str | None = None
    block_kept = True
    for i, line in enumerate(lines):
        words = line.split()
        key = words[0] if words and not words[0].startswith("#") else None

        def rewrite(new: str | None, old: str = line) -> None:
            if new == old.strip():
                out.append(old)
                return
            out.append(f"# (rewritten by ballpass.services) {old}")
            if new is not None:
                out.append(new)

        if key == "listener":
            block_kind = kinds[i]
            block_kept = not (tls_only if block_kind == "plain" else tls is None)
            if not block_kept:
                rewrite(None)
                continue
            kept_listeners += 1
            if block_kind == "tls":
                if tls_port is None:
                    raise ValueError("derive_mosquitto_config: tls needs tls_port")
                rewrite(f"listener {tls_port} 127.0.0.1")
            else:
                rewrite(f"listener {port} 127.0.0.1")
        elif key in _MANAGED_GLOBAL:
            rewrite(None)
        elif key in _LISTENER_SCOPED and block_kind is not None:
            if not block_kept:
                rewrite(None)
            elif key == "allow_anonymous":
                rewrite(f"allow_anonymous {'true' if anonymous else 'false'}")
            elif key in ("password_file", "acl_file"):
                rewrite(None if anonymous else
                        f"{key} {workdir / ('passwd' if key == 'password_file' else 'acl')}")
            elif key == "use_username_as_clientid" and anonymous:
                rewrite(None)  # with no username mosquitto would refuse every client
            elif key in _TLS_KEYS and block_kind == "tls" and tls is not None:
                rewrite(f"{key} {tls[key]}" if key in tls else None)
            elif key == "require_certificate" and tls is not None:
                rewrite("require_certificate "
                        + ("true" if tls.get("require_certificate") else "false"))
            else:
                out.append(line)
        else:
            out.append(line)
    if kept_listeners == 0:
        raise ValueError("derive_mosquitto_config: no listener left (tls_only needs tls)")
    block = [
        "",
        "# --- derived by ballpass.services.Mosquitto ---",
        # QoS 1 sessions of a stopped stream survive a broker restart (Debian's main
        # config sets this in production).
        "persistence true",
        f"persistence_location {workdir / 'data'}/",
        # stdout redirected to a file is buffered until exit; stderr is not.
        "log_dest stderr",
    ]
    if run_as:
        # Started as root, mosquitto switches to the `mosquitto` user before it opens the
        # password/ACL/log files, which then fail in a 0700 temp dir (pytest's tmp_path).
        # The private broker keeps running as the user that started it instead.
        block.append(f"user {run_as}")
    return "\n".join(out + block) + "\n"


class Mosquitto(Service):
    """A private mosquitto broker on 127.0.0.1.

    `anonymous=True`: anyone connects, no ACL (quick tests). Otherwise `users` (username
    -> password) are written to a password file and the ACL of `acl_text()` applies;
    `stream_users` and `operator_users` name the privileged accounts, every other user
    is a gateway. `users` stays readable on the object so tests can log in.
    """

    name = "mosquitto"
    package = "mosquitto"
    binary = "mosquitto"
    stop_timeout_s = 5.0

    def __init__(self, workdir: str | os.PathLike[str] | None = None, port: int | None = None,
                 *, users: Mapping[str, str] | None = None, anonymous: bool = False,
                 stream_users: Iterable[str] = ("stream",),
                 operator_users: Iterable[str] = (),
                 template: str | os.PathLike[str] | None = None,
                 executable: str | None = None,
                 tls: Mapping[str, object] | None = None,
                 tls_port: int | None = None, tls_only: bool = False) -> None:
        """`tls`: keep the template's TLS listener (keys cafile, certfile, keyfile: paths;
        optional require_certificate: bool, clients must then present a certificate signed
        by cafile) on `tls_port` (None: a free port, kept across restarts of this object).
        `tls_only`: the documented TLS-only mode, the template's plain listener is dropped
        and `port` is the TLS listener (`tls_port` is then the same port)."""
        super().__init__(workdir, port, executable=executable)
        if tls_only and tls is None:
            raise ValueError("Mosquitto: tls_only needs tls={...}")
        self.tls = dict(tls) if tls is not None else None
        self.tls_port = tls_port
        self.tls_only = tls_only
        self.users: dict[str, str] = dict(users or {})
        self.anonymous = anonymous
        self.stream_users = tuple(stream_users)
        self.operator_users = tuple(operator_users)
        self.template_path = Path(template) if template is not None else TEMPLATE_PATH
        for user in self.users:
            if not _USERNAME_RE.fullmatch(user):
                raise ValueError(f"mosquitto username {user!r}: no ':', '#' or spaces, 1-64 chars")
        if not anonymous and not self.users:
            raise ValueError("Mosquitto: give users={...} or anonymous=True "
                             "(a broker nobody can log in to is useless)")
        self.config_path = self.workdir / "mosquitto.conf"

    def _prepare(self) -> list[str]:
        (self.workdir / "data").mkdir(exist_ok=True)
        # The effective user's name, not $USER/$LOGNAME (getpass), which sudo may keep.
        run_as = pwd.getpwuid(os.geteuid()).pw_name if os.geteuid() == 0 else None
        if self.tls_only:
            self.tls_port = self.port
        elif self.tls is not None and self.tls_port is None:
            self.tls_port = free_port()
        text = derive_mosquitto_config(
            self.template_path.read_text(encoding="utf-8"), port=self.port,
            workdir=self.workdir, anonymous=self.anonymous, run_as=run_as, tls=self.tls,
            tls_port=self.tls_port, tls_only=self.tls_only)
        if not self.anonymous:
            pw = "".join(f"{u}:{mosquitto_password_hash(p)}\n" for u, p in self.users.items())
            write_private(self.workdir / "passwd", pw, keep_group_read=False)
            write_private(self.workdir / "acl", acl_text(self.stream_users,
                                                         self.operator_users),
                          keep_group_read=False)
        self.config_path.write_text(text, encoding="utf-8")
        return ["-c", str(self.config_path)]

    def _ready(self) -> bool:
        """A CONNACK to an MQTT 3.1.1 CONNECT: the broker parses packets, not just accepts.

        Refused logins (anonymous on an auth broker) still answer with a CONNACK. In
        TLS-only mode (no plain listener; a handshake may need a client certificate) the
        listening port is the sign.
        """
        if self.tls_only:
            return _port_open(self.host, self.port)
        client_id = b"bp-ready-probe"
        body = (b"\x00\x04MQTT\x04\x02\x00\x05"  # protocol, level 4, clean session, keepalive 5
                + len(client_id).to_bytes(2, "big") + client_id)
        packet = b"\x10" + bytes([len(body)]) + body
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5) as s:
                s.sendall(packet)
                reply = s.recv(4)
                with contextlib.suppress(OSError):
                    s.sendall(b"\xe0\x00")  # DISCONNECT
        except OSError:
            return False
        return len(reply) >= 2 and reply[0] == 0x20


def write_private(path: Path, text: str, *, owner: tuple[int, int] | None = None,
                  keep_group_read: bool = True) -> None:
    """Replace `path` by a file holding `text`, never readable by others.

    Written to a new temp file in the same dir (mkstemp: O_CREAT|O_EXCL, mode 0600 from
    its first byte; the umask can only remove bits) and renamed over `path`, so no reader
    sees a partial file and an old file's world bits are never kept. A new file is 0600.
    A replaced file keeps its owner and group (when the caller is root) and its group-read
    bit, so Debian's `root:mosquitto 0640` layout and a file chowned to the broker's user
    both stay readable by the broker (`keep_group_read=False`: always 0600). `owner`
    (uid, gid): for a new file, when root.
    """
    path = Path(path)
    mode = 0o600
    try:
        st = path.stat()
        owner = (st.st_uid, st.st_gid)
        mode |= st.st_mode & 0o040 if keep_group_read else 0
    except FileNotFoundError:
        pass
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # 0600, O_EXCL
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if owner is not None and os.geteuid() == 0:
            os.chown(tmp, *owner)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise





# --- influxd 1.x -----------------------------------------------------------------------


class Influxd(Service):
    """A private InfluxDB 1.x (`influxd`, Debian 1.6.7) with its data in the work dir.

    HTTP on 127.0.0.1:`port` (`url`), RPC on 127.0.0.1:`rpc_port`; usage reporting,
    the _internal monitor database and HTTP access logs are off.
    """

    name = "influxd"
    package = "influxdb"
    binary = "influxd"
    stop_timeout_s = 10.0  # it takes about 1.7 s on SIGTERM

    def __init__(self, workdir: str | os.PathLike[str] | None = None, port: int | None = None,
                 *, rpc_port: int | None = None, executable: str | None = None) -> None:
        super().__init__(workdir, port, executable=executable)
        self._fixed_rpc = rpc_port is not None
        self.rpc_port = rpc_port or 0
        self.config_path = self.workdir / "influxdb.conf"

    def _prepare(self) -> list[str]:
        if not self._fixed_rpc:
            self.rpc_port = free_port()
        w = self.workdir
        # Both bind addresses are set: the defaults are all interfaces (:8086) and :8088.
        self.config_path.write_text(f"""\
reporting-disabled = true
bind-address = "127.0.0.1:{self.rpc_port}"

[meta]
  dir = "{w / 'meta'}"
  logging-enabled = false

[data]
  dir = "{w / 'data'}"
  wal-dir = "{w / 'wal'}"
  query-log-enabled = false

[monitor]
  store-enabled = false

[http]
  enabled = true
  bind-address = "127.0.0.1:{self.port}"
  auth-enabled = false
  log-enabled = false

[logging]
  level = "warn"

[subscriber]
  enabled = false
""", encoding="utf-8")
        return ["run", "-config", str(self.config_path)]

    def _ready(self) -> bool:
        return self._http_status("/ping") == 204

    def query(self, q: str, db: str | None = None) -> dict[str, Any]:
        """POST /query (any statement); returns the parsed JSON; ServiceError on errors."""
        import json

        params = {"q": q}
        if db:
            params["db"] = db
        data = urllib.parse.urlencode(params).encode()
        req = urllib.request.Request(self.url + "/query", data=data, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                result: dict[str, Any] = json.loads(resp.read())
        except urllib.error.HTTPError as e:
            raise ServiceError(f"influxd query {q!r}: HTTP {e.code} "
                               f"{e.read()[:200].decode(errors='replace')}") from e
        for statement in result.get("results", []):
            if isinstance(statement, dict) and "error" in statement:
                raise ServiceError(f"influxd query {q!r}: {statement['error']}")
        return result

    def create_database(self, name: str) -> None:
        """CREATE DATABASE (a no-op when it exists)."""
        self.query(f'CREATE DATABASE "{_quote_ident(name)}"')


def _quote_ident(name: str) -> str:
    return name.replace("\\", "\\\\").replace('"', '\\"')


# --- victoria-metrics ------------------------------------------------------------------


class VictoriaMetrics(Service):
    """A private single-node VictoriaMetrics; accepts InfluxDB line protocol on `/write`
    and `/api/v2/write` (series become `measurement_field`), read with `/api/v1/export`.

    It answers 204 even for lines it drops: call `force_flush()` and read data back.
    """

    name = "victoria-metrics"
    package = "victoria-metrics"
    binary = "victoria-metrics"
    stop_timeout_s = 10.0

    def _prepare(self) -> list[str]:
        return [f"-httpListenAddr={self.host}:{self.port}",
                f"-storageDataPath={self.workdir / 'data'}",
                "-retentionPeriod=1",          # months
                "-search.latencyOffset=1s",    # fresh points are queryable after 1 s, not 30
                "-loggerLevel=WARN"]

    def _ready(self) -> bool:
        return self._http_status("/health") == 200

    def force_flush(self) -> None:
        """Make recently written samples searchable (GET /internal/force_flush)."""
        status = self._http_status("/internal/force_flush", timeout_s=10.0)
        if status != 200:
            raise ServiceError(f"victoria-metrics force_flush: HTTP {status}")
