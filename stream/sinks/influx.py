"""InfluxDB writers: one interface, two protocols (ARCHITECTURE.md section 6).

- `V1Writer`: `POST {url}/write?db=…&precision=ns` with the stdlib (InfluxDB 1.x, the
  1.x-compatible endpoint of 2.x/3.x, VictoriaMetrics).
- `V2Writer`: `/api/v2/write` through influxdb-client's WriteApi in SYNCHRONOUS mode (its
  batching mode logs failed writes and drops them, which ballpass must never do).

Both raise `InfluxWriteError` for every failure, with `.retryable` telling the caller
whether to keep the points and try again (connection errors, 429, 5xx, and what refuses
every write until someone mends it: a wrong credential, database, endpoint or scheme) or
to give up on them (points InfluxDB says it refused, unencodable points, 413, other 4xx).
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from ballpass.log import kv
from ballpass.stream.sinks.lineprotocol import Point, encode

if TYPE_CHECKING:
    from ballpass.config import InfluxConfig

log = logging.getLogger(__name__)


class InfluxWriteError(Exception):
    """A write failed. `status`: HTTP status (None: no HTTP answer); `retryable`: the same
    points may succeed later (connection error, timeout, 429, 5xx, a wrong credential,
    database or endpoint)."""

    def __init__(self, message: str, *, retryable: bool, status: int | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.status = status


class InfluxQueryError(Exception):
    """An InfluxQL query failed (HTTP error, statement error or no answer)."""


class InfluxWriter(Protocol):
    """Writes points; raises InfluxWriteError on any failure, never drops silently."""

    def write(self, points: Sequence[Point]) -> None: ...

    def close(self) -> None: ...


# What InfluxDB's JSON error says when it refused the points themselves: 1.x `{"error":
# "partial write: field type conflict: …"}` or `"unable to parse '…': …"`, 2.x `{"code":
# "invalid", "message": "unable to parse …"}` (its partial writes are 422), 3.x `{"error":
# "partial write of line protocol occurred"}` or `"parsing failed for write_lp endpoint"`.
_POINTS_REFUSED = ("partial write", "unable to parse", "parsing failed", "field type conflict")


def _error_text(body: bytes) -> tuple[str, bool]:
    """The server's error message and whether it came as JSON (an InfluxDB answer)."""
    text = body.decode("utf-8", errors="replace").strip()
    try:
        data = json.loads(text)
    except ValueError:
        return text[:300], False
    if isinstance(data, dict):
        for key in ("error", "message"):
            if isinstance(data.get(key), str):
                return data[key][:300], True
    return text[:300], True


def classify_http_error(status: int, body: bytes, *, url: str, target: str,
                        api: str) -> InfluxWriteError:
    """Turn an HTTP error answer into an InfluxWriteError naming its cause.

    `target` names what was written to (`db 'x'` or `bucket 'x'`), `api` is "v1"/"v2".
    A missing database is a 404 with JSON `{"error": "database not found: …"}`; a server
    without the endpoint answers a plain-text `404 page not found`. A 400 refuses the
    points only when InfluxDB's JSON error says so (`_POINTS_REFUSED`).
    """
    text, is_json = _error_text(body)
    lowered = text.lower()
    # Any other 400 is about the endpoint: plain http to a TLS influxd answers 400 "Client
    # sent an HTTP request to an HTTPS server.", to every write.
    refused = status == 400 and is_json and any(m in lowered for m in _POINTS_REFUSED)
    # Retryable unless the answer is about these points (their 400, 413, other 4xx): a wrong
    # credential, database, endpoint or scheme, or a redirect (not followed: a POST) refuses
    # every write until someone mends it, and the windows must wait for that in the broker,
    # not fill the spool.
    retryable = (status < 400 or status in (400, 401, 403, 404, 405, 408, 429)
                 or status >= 500) and not refused
    if status == 404:
        if is_json and ("database not found" in lowered
                        or ("bucket" in lowered and "not found" in lowered)):
            cause = f"database not found: {target} on {url} ({text})"
        else:
            other = "v2" if api == "v1" else "v1"
            cause = (f"endpoint not found (HTTP 404 {text!r}): {url} has no {api} write "
                     f"endpoint; wrong URL, or the server speaks the {other} API "
                     f"(influx.api = \"{other}\")")
    elif status in (401, 403):
        cause = f"not authorized (HTTP {status}) writing to {target} on {url}: {text}"
    elif status == 413:
        cause = f"request too large (HTTP 413) for {url}: write fewer points per call"
    elif refused:
        cause = f"points rejected (HTTP 400) by {url} for {target}: {text}"
    elif status < 400:
        cause = (f"redirected (HTTP {status}) by {url}: set influx.url to the address it "
                 f"redirects to ({text})")
    elif status in (400, 405):
        cause = (f"request refused (HTTP {status}) by {url}, not the points: wrong URL or "
                 f"scheme (http to an https server?), or a proxy in between: {text}")
    elif retryable:
        cause = f"server busy or failing (HTTP {status}) at {url}: {text}"
    else:
        cause = f"write refused (HTTP {status}) by {url} for {target}: {text}"
    return InfluxWriteError(cause, retryable=retryable, status=status)


def _basic_auth(username: str, password: str | None) -> str:
    """HTTP basic `Authorization` header value (InfluxDB 1.x with auth-enabled)."""
    return "Basic " + base64.b64encode(f"{username}:{password or ''}".encode()).decode()


def quote_ident(name: str) -> str:
    """An InfluxQL double-quoted identifier."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _encode_or_raise(points: Sequence[Point]) -> bytes:
    try:
        return encode(points).encode("utf-8")
    except ValueError as e:
        raise InfluxWriteError(f"invalid point: {e}", retryable=False) from e


class V1Writer:
    """`POST {url}/write?db=…&precision=ns`; 204 (any 2xx) is success.

    One kept-alive HTTP(S) connection, opened on first use and again after any failure
    (a new connection per batch cost 12 % of the stream's time, BENCHMARKS.md "End to
    end"); direct, without the environment's HTTP proxy. Calls from several threads take
    turns on it.
    `username`/`password`: HTTP basic auth (InfluxDB 1.x with auth-enabled). No retries
    here: the caller keeps the points when `InfluxWriteError.retryable` is true.
    `retention_policy`: the policy written to (None: the database's DEFAULT); `set_routes`
    sends some measurements to another policy (stream/sinks/retention.py).
    """

    def __init__(self, url: str, db: str, username: str | None = None,
                 password: str | None = None, timeout_s: float = 10.0,
                 retention_policy: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.db = db
        self.timeout_s = timeout_s
        self._params = {"db": db, "precision": "ns"}
        if retention_policy:
            self._params["rp"] = retention_policy
        self._write_url = self._url_for(retention_policy)
        self._routes: dict[str, str] = {}
        self._headers = {"Content-Type": "text/plain; charset=utf-8"}
        if username is not None:
            self._headers["Authorization"] = _basic_auth(username, password)
        self._conn: http.client.HTTPConnection | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"V1Writer(url={self.url!r}, db={self.db!r})"

    def _url_for(self, rp: str | None) -> str:
        params = dict(self._params)
        if rp:
            params["rp"] = rp
        return f"{self.url}/write?{urllib.parse.urlencode(params)}"

    def set_routes(self, routes: Mapping[str, str]) -> None:
        """Write the points of measurement `m` to retention policy `routes[m]` from now on
        (the policies must exist); `{}` writes everything to the default again."""
        self._routes = dict(routes)

    def write(self, points: Sequence[Point]) -> None:
        """Write all `points` (one request per retention policy), or raise
        InfluxWriteError. Every policy's points are sent even if another's fail; the
        error names each failure. A retry after a partial failure rewrites the points
        already written, which InfluxDB stores once (same series, same time)."""
        if not points:
            return
        groups: dict[str | None, list[Point]] = {}
        for p in points:
            groups.setdefault(self._routes.get(p.measurement), []).append(p)
        bodies = [(rp, _encode_or_raise(group)) for rp, group in groups.items()]
        failures: list[InfluxWriteError] = []
        for rp, body in bodies:
            target = f"db {self.db!r}" + (f" rp {rp!r}" if rp else "")
            try:
                try:
                    self._post(self._write_url if rp is None else self._url_for(rp), body,
                               target)
                except InfluxWriteError as e:
                    if rp is None or "retention policy not found" not in str(e).lower():
                        raise
                    # Dropped under a running stream (routes are set at start): 500, retried
                    # for ever, and nothing of these batches acknowledged. Kept in the
                    # default policy instead, shorter, but kept; an admin must recreate it.
                    log.error(kv("influx_policy_missing", db=self.db, rp=rp,
                                 measurements=",".join(sorted(
                                     m for m, r in self._routes.items() if r == rp)),
                                 written_to="default", reason=e))
                    self._routes = {m: r for m, r in self._routes.items() if r != rp}
                    self._post(self._write_url, body, f"db {self.db!r}")
            except InfluxWriteError as e:
                # A refusal in one policy (a type conflict in `raw`) must not keep the
                # others' points (the alerts in `long`) out of the database.
                failures.append(e)
                if e.status is None:
                    break  # no answer: the next request would only wait its own timeout
        if failures:
            raise _combined(failures)

    def ensure_database(self) -> None:
        """CREATE DATABASE (no-op when it exists); InfluxWriteError on failure, retryable
        only without an answer, on 429 and 5xx: any other (403 for a user without admin
        rights) would be the same again."""
        q = f"CREATE DATABASE {quote_ident(self.db)}"
        data = urllib.parse.urlencode({"q": q}).encode()
        try:
            answer = self._post(f"{self.url}/query", data, f"db {self.db!r}",
                                content_type="application/x-www-form-urlencoded")
        except InfluxWriteError as e:
            if e.status is None or e.status == 429 or e.status >= 500:
                raise
            raise InfluxWriteError(f"create database {self.db!r}: {e}", retryable=False,
                                   status=e.status) from e
        try:
            results = json.loads(answer).get("results", [])
        except ValueError as e:
            raise InfluxWriteError(f"create database {self.db!r}: not JSON from {self.url}",
                                   retryable=False) from e
        for r in results:
            if isinstance(r, dict) and "error" in r:
                raise InfluxWriteError(f"create database {self.db!r}: {r['error']}",
                                       retryable=False)

    def close(self) -> None:
        """Close the kept-alive connection (the next write opens a new one)."""
        with self._lock:
            self._drop()

    def __del__(self) -> None:
        # A writer dropped without close() (a script, a test) does not leak its socket.
        conn = getattr(self, "_conn", None)
        if conn is not None:
            conn.close()

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _connection(self, parts: urllib.parse.SplitResult) -> http.client.HTTPConnection:
        if self._conn is None:
            cls = (http.client.HTTPSConnection if parts.scheme == "https"
                   else http.client.HTTPConnection)
            self._conn = cls(parts.netloc, timeout=self.timeout_s)
        return self._conn

    def _post(self, url: str, body: bytes, target: str,
              content_type: str | None = None) -> bytes:
        headers = dict(self._headers)
        if content_type:
            headers["Content-Type"] = content_type
        parts = urllib.parse.urlsplit(url)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        with self._lock:
            # A kept-alive connection the server has closed meanwhile fails on first use:
            # once more on a new one. Writing the same points twice stores them once.
            for fresh in (self._conn is None, True):
                conn = self._connection(parts)
                try:
                    conn.request("POST", path or "/", body=body, headers=headers)
                    resp = conn.getresponse()
                    answer = resp.read()
                except (OSError, http.client.HTTPException) as e:
                    self._drop()
                    if not fresh and isinstance(e, (ConnectionError,
                                                    http.client.RemoteDisconnected)):
                        continue
                    reason: object = e
                    if isinstance(e, TimeoutError):
                        reason = f"timed out after {self.timeout_s:g} s"
                    raise InfluxWriteError(f"cannot reach {self.url}: {reason}",
                                           retryable=True) from e
                if resp.will_close:
                    self._drop()
                if 200 <= resp.status < 300:
                    return answer
                raise classify_http_error(resp.status, answer, url=self.url, target=target,
                                          api="v1")
        raise AssertionError("unreachable")  # the second attempt returns or raises


def _combined(failures: Sequence[InfluxWriteError]) -> InfluxWriteError:
    """One error for the failed requests of a write: retryable if any is (the retry
    rewrites them all, and a refusal shows again once the rest succeeds)."""
    if len(failures) == 1:
        return failures[0]
    first = next((e for e in failures if e.retryable), failures[0])
    err = InfluxWriteError("; ".join(str(e) for e in failures), retryable=first.retryable,
                           status=first.status)
    err.__cause__ = first
    return err


class V2Writer:
    """`/api/v2/write` via influxdb-client (WriteApi, SYNCHRONOUS), precision ns.

    `token`: the API token (None: no Authorization header, e.g. VictoriaMetrics).
    influxdb-client is imported here, so a v1 deployment never loads it.
    """

    def __init__(self, url: str, bucket: str, org: str, token: str | None = None,
                 timeout_s: float = 10.0) -> None:
        from influxdb_client import InfluxDBClient, WritePrecision
        from influxdb_client.client.write_api import SYNCHRONOUS

        self.url = url.rstrip("/")
        self.bucket = bucket
        self.org = org
        # retries=False: the caller decides about retries from InfluxWriteError.retryable.
        self._client = InfluxDBClient(url=self.url, token=token,  # type: ignore[arg-type]
                                      # (None = no auth, the client's default; typed str)
                                      org=org,
                                      timeout=int(timeout_s * 1000), retries=False)
        self._write_api = self._client.write_api(write_options=SYNCHRONOUS)
        self._precision = WritePrecision.NS

    def __repr__(self) -> str:
        return f"V2Writer(url={self.url!r}, bucket={self.bucket!r}, org={self.org!r})"

    def write(self, points: Sequence[Point]) -> None:
        """Write all `points` in one request, or raise InfluxWriteError."""
        if not points:
            return
        body = _encode_or_raise(points).decode("utf-8")
        from influxdb_client.rest import ApiException
        from urllib3.exceptions import HTTPError as Urllib3Error

        try:
            self._write_api.write(bucket=self.bucket, org=self.org, record=body,
                                  write_precision=self._precision)  # type: ignore[arg-type]
            # (WritePrecision.NS is the str "ns"; the signature names the class)
        except ApiException as e:
            status = int(e.status) if e.status else 0
            raw: Any = e.body or e.reason or b""
            payload = raw.encode() if isinstance(raw, str) else bytes(raw)
            if status:
                raise classify_http_error(status, payload, url=self.url,
                                          target=f"bucket {self.bucket!r}", api="v2") from e
            raise InfluxWriteError(f"write to {self.url} failed: {e}", retryable=True) from e
        except (Urllib3Error, OSError) as e:
            raise InfluxWriteError(f"cannot reach {self.url}: {e}", retryable=True) from e

    def close(self) -> None:
        self._write_api.close()
        self._client.close()


def create_writer(cfg: InfluxConfig) -> InfluxWriter:
    """The writer for `[influx]`: api "v1" -> V1Writer(url, db), "v2" -> V2Writer(url,
    bucket, org, token from token_file)."""
    if cfg.api == "v1":
        return V1Writer(cfg.url, cfg.db, cfg.username, cfg.password(), cfg.timeout_s)
    if cfg.api == "v2":
        return V2Writer(cfg.url, cfg.bucket, cfg.org, cfg.token(), cfg.timeout_s)
    raise ValueError(f"influx.api: must be v1 or v2, got {cfg.api!r}")


def query_v1(url: str, db: str, q: str, *, username: str | None = None,
             password: str | None = None, timeout_s: float = 10.0) -> list[dict[str, Any]]:
    """Run InfluxQL `q` on `db` (InfluxDB 1.x `/query`, epoch=ns) and flatten the answer.

    Returns one dict per row of every series of the first statement: the columns
    (`time` as int ns), the series' tags (GROUP BY) merged in, and `_measurement`, the
    series name (the measurement for SELECT, e.g. "databases" for SHOW DATABASES). An
    empty result is `[]`. InfluxQueryError on HTTP or statement errors.
    """
    base = url.rstrip("/")
    data = urllib.parse.urlencode({"db": db, "q": q, "epoch": "ns"}).encode()
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if username is not None:
        headers["Authorization"] = _basic_auth(username, password)
    req = urllib.request.Request(f"{base}/query", data=data, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            answer = json.loads(resp.read())
    except urllib.error.HTTPError as e:
        text, _ = _error_text(e.read())
        raise InfluxQueryError(f"query {q!r} on {base} db {db!r}: HTTP {e.code} {text}") from e
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        raise InfluxQueryError(f"query {q!r}: cannot reach {base}: {e}") from e
    except ValueError as e:
        raise InfluxQueryError(f"query {q!r}: answer from {base} is not JSON") from e
    results = answer.get("results") or [{}]
    first = results[0]
    if "error" in first:
        raise InfluxQueryError(f"query {q!r} on db {db!r}: {first['error']}")
    rows: list[dict[str, Any]] = []
    for series in first.get("series", []):
        tags = series.get("tags") or {}
        columns = series.get("columns", [])
        for values in series.get("values", []):
            row: dict[str, Any] = {"_measurement": series.get("name")}
            row.update(tags)
            row.update(zip(columns, values, strict=True))
            rows.append(row)
    return rows
