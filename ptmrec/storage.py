"""One set of calls for local paths, `file://` URIs and `s3://` URIs.

Jobs hand over artifacts only through URIs, so every reader and writer in PTMRec goes through here.

- Writes are atomic: a local file is written to a temporary name in the same folder and renamed; an S3
  object only becomes visible when its PUT (or multipart upload) completes. A reader never sees half an
  artifact under its final name.
- S3 goes through boto3 with the endpoint and credentials from the config's `storage` section, falling
  back to the standard AWS environment variables. The client is created lazily, once per process: boto3
  clients must not cross a fork (Ray and DataLoader workers fork), so a `Storage` that arrives in another
  process (pickled or forked) makes its own.
- Transient S3 errors are retried with exponential backoff (botocore's "standard" retry mode, plus our own
  retry around streaming body reads, which botocore does not retry). Once an endpoint has answered, an
  outage (5xx, throttling, lost connections) is waited out for up to `storage.outage_budget_s` before a
  call fails. A missing bucket, wrong credentials or an endpoint that never answered raise `StorageError`
  with one clear line at once.
"""

from __future__ import annotations

import logging
import os
import random
import secrets
import shutil
import time
from pathlib import Path
from typing import Callable, Optional, TypeVar

from ptmrec.config import StorageConfig
from ptmrec.uris import Location, StorageError, parse_uri

T = TypeVar("T")
log = logging.getLogger(__name__)


class NotFound(StorageError):
    """There is no object at the URI (the storage answered; nothing is wrong with it)."""


class Storage:
    """Reads and writes artifacts by URI. Cheap to build and to pickle; see the module docstring."""

    def __init__(self, options: Optional[StorageConfig] = None):
        self.options = options or StorageConfig()
        self._client = None
        self._client_pid: Optional[int] = None
        self._answered = False  # the endpoint has answered this object once: later failures may be outages

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_client"] = None
        state["_client_pid"] = None
        return state

    # ---------------------------------------------------------------------------------------- reads

    def read_bytes(self, uri: str) -> bytes:
        loc = parse_uri(uri)
        if loc.scheme == "file":
            try:
                return Path(loc.path).read_bytes()
            except FileNotFoundError:
                raise NotFound(f"{uri}: not found") from None
        return self._retry(lambda: self._get_object(loc, uri).read(), uri, "read")

    def read_text(self, uri: str) -> str:
        return self.read_bytes(uri).decode("utf-8")

    def exists(self, uri: str) -> bool:
        return self.size(uri) is not None

    def size(self, uri: str) -> Optional[int]:
        """The object's size in bytes, or None when there is none."""
        loc = parse_uri(uri)
        if loc.scheme == "file":
            p = Path(loc.path)
            return p.stat().st_size if p.is_file() else None
        head = self._call(uri, lambda c: c.head_object(Bucket=loc.bucket, Key=loc.key), missing_ok=True)
        if head is None:
            # A 404 on HEAD is also what a missing bucket looks like: tell the two apart.
            self._call(uri, lambda c: c.head_bucket(Bucket=loc.bucket))
            return None
        return int(head["ContentLength"])

    def list(self, uri: str) -> list[str]:
        """Names of the objects directly below `uri` (like `ls`), sorted; [] when there are none."""
        loc = parse_uri(uri)
        if loc.scheme == "file":
            p = Path(loc.path)
            if not p.is_dir():
                return []
            return sorted(c.name for c in p.iterdir() if c.is_file() and not _is_temp_name(c.name))
        prefix = f"{loc.key}/" if loc.key else ""
        names: list[str] = []
        token = None
        while True:
            kwargs = dict(Bucket=loc.bucket, Prefix=prefix, Delimiter="/")
            if token:
                kwargs["ContinuationToken"] = token
            page = self._call(uri, lambda c: c.list_objects_v2(**kwargs))
            names += [o["Key"][len(prefix):] for o in page.get("Contents", [])]
            if not page.get("IsTruncated"):
                return sorted(names)
            token = page["NextContinuationToken"]

    def download(self, uri: str, local_path: str | Path) -> None:
        """Copy an object to a local file, atomically."""
        with _atomic_local(Path(local_path)) as tmp:
            Path(tmp).write_bytes(self.read_bytes(uri))

    # --------------------------------------------------------------------------------------- writes

    def write_bytes(self, uri: str, data: bytes) -> None:
        """Write `data` to `uri` atomically: readers see the old object or the whole new one."""
        loc = parse_uri(uri)
        if loc.scheme == "file":
            with _atomic_local(Path(loc.path)) as tmp:
                Path(tmp).write_bytes(data)
            return
        self._call(uri, lambda c: c.put_object(Bucket=loc.bucket, Key=loc.key, Body=data))

    def write_text(self, uri: str, text: str) -> None:
        self.write_bytes(uri, text.encode("utf-8"))

    def create_exclusive(self, uri: str, data: bytes) -> bool:
        """Write `data` to `uri` only if nothing is there, atomically (a conditional put on S3, a hard link of a
        finished temporary file locally): True if this call created it, False if it existed."""
        loc = parse_uri(uri)
        if loc.scheme == "file":
            target = Path(loc.path)
            tmp = target.parent / f".{target.name}{_TEMP_MARK}{secrets.token_hex(6)}"
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp.write_bytes(data)
                _fsync(str(tmp))
                os.link(tmp, target)  # fails if the name exists: no reader ever sees a partial file
                _fsync(str(target.parent))
                return True
            except FileExistsError:
                return False
            except OSError as exc:
                raise _write_error(target, exc) from None
            finally:
                tmp.unlink(missing_ok=True)
        from botocore.exceptions import ClientError

        try:
            self.client().put_object(Bucket=loc.bucket, Key=loc.key, Body=data, IfNoneMatch="*")
            return True
        except ClientError as exc:
            if _error_code(exc) in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                return False
            raise self._explain(exc, uri) from None

    def upload(self, local_path: str | Path, uri: str) -> None:
        """Copy a local file to `uri` atomically (multipart for large files on S3, which is atomic too)."""
        loc = parse_uri(uri)
        if loc.scheme == "file":
            with _atomic_local(Path(loc.path)) as tmp:
                shutil.copyfile(local_path, tmp)
            return
        self._call(uri, lambda c: c.upload_file(str(local_path), loc.bucket, loc.key))

    def delete(self, uri: str) -> None:
        """Remove an object; removing one that is not there is not an error."""
        loc = parse_uri(uri)
        if loc.scheme == "file":
            Path(loc.path).unlink(missing_ok=True)
            return
        self._call(uri, lambda c: c.delete_object(Bucket=loc.bucket, Key=loc.key))

    def clean_leftovers(self, uri: str, older_than_s: float = 3600.0) -> int:
        """Remove what killed writes left under `uri` at least `older_than_s` ago: temporary files of local atomic
        writes, and on S3 multipart uploads never completed (which the bucket keeps, and bills, until aborted).
        Returns how many were removed."""
        loc = parse_uri(uri)
        cutoff = time.time() - older_than_s
        removed = 0
        if loc.scheme == "file":
            for folder, _, files in os.walk(loc.path):
                for name in files:
                    path = Path(folder) / name
                    try:
                        if _is_temp_name(name) and path.stat().st_mtime < cutoff:
                            path.unlink()
                            removed += 1
                    except FileNotFoundError:  # its writer finished or cleaned it meanwhile
                        pass
            return removed
        prefix = f"{loc.key}/" if loc.key else ""
        pages = self.client().get_paginator("list_multipart_uploads").paginate(Bucket=loc.bucket, Prefix=prefix)
        for page in self._call(uri, lambda c: list(pages)):
            for upload in page.get("Uploads", []):
                if upload["Initiated"].timestamp() < cutoff:
                    self._call(uri, lambda c: c.abort_multipart_upload(Bucket=loc.bucket, Key=upload["Key"],
                                                                        UploadId=upload["UploadId"]))
                    removed += 1
        return removed

    def ensure_bucket(self, uri: str) -> None:
        """Create the bucket of an s3:// URI if it does not exist (local servers for demos and tests)."""
        loc = parse_uri(uri)
        if loc.scheme != "s3":
            return
        from botocore.exceptions import ClientError

        try:
            self._call(uri, lambda c: c.head_bucket(Bucket=loc.bucket))
        except (ClientError, StorageError):
            self._call(uri, lambda c: c.create_bucket(Bucket=loc.bucket))

    # ------------------------------------------------------------------------------------ S3 plumbing

    def client(self):
        """This process's boto3 S3 client, created on first use (and again after a fork)."""
        if self._client is None or self._client_pid != os.getpid():
            import boto3
            from botocore.config import Config as BotoConfig

            o = self.options
            session = boto3.session.Session()
            self._client = session.client(
                "s3",
                endpoint_url=o.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL"),
                region_name=o.region or os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or "us-east-1",
                aws_access_key_id=o.access_key_id,
                aws_secret_access_key=o.secret_access_key,
                config=BotoConfig(
                    retries={"max_attempts": o.max_attempts, "mode": "standard"},
                    connect_timeout=o.connect_timeout_s,
                    read_timeout=60,
                    # Path-style addressing works with every S3-compatible server, virtual hosts do not.
                    s3={"addressing_style": "path"},
                ),
            )
            self._client_pid = os.getpid()
        return self._client

    def _get_object(self, loc: Location, uri: str):
        return self._call(uri, lambda c: c.get_object(Bucket=loc.bucket, Key=loc.key))["Body"]

    def _call(self, uri: str, fn: Callable, missing_ok: bool = False):
        """Run one S3 call; botocore retries transient failures, we translate what remains.

        With `missing_ok`, a 404 returns None instead of raising.
        """
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        outage = _Outage(self, uri)
        while True:
            try:
                out = fn(self.client())
                self._answered = True
                return out
            except ClientError as exc:
                if missing_ok and _error_code(exc) in ("404", "NotFound", "NoSuchKey"):
                    self._answered = True
                    return None
                if _error_code(exc) in _UNAVAILABLE and outage.wait(exc):
                    continue
                raise self._explain(exc, uri, outage) from None
            except NoCredentialsError:
                raise StorageError(f"{uri}: no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in "
                                   "the environment (or mount the cluster's Secret)") from None
            except BotoCoreError as exc:
                if outage.wait(exc):
                    continue
                raise StorageError(f"{uri}: cannot reach the S3 endpoint {self.client().meta.endpoint_url}"
                                   f"{outage.spent()}: {exc}") from None

    def _retry(self, fn: Callable[[], T], uri: str, what: str) -> T:
        """Retry a streaming read that broke off mid-body (botocore retries only the request itself):
        `max_attempts` times, and then for as long as the outage budget allows."""
        from botocore.exceptions import ConnectionError as BotoConnectionError
        from botocore.exceptions import IncompleteReadError, ResponseStreamingError

        attempts = max(1, self.options.max_attempts)
        outage = _Outage(self, uri)
        attempt = 0
        while True:
            try:
                return fn()
            except (IncompleteReadError, ResponseStreamingError, BotoConnectionError, ConnectionError) as exc:
                attempt += 1
                if attempt < attempts:
                    time.sleep(min(8.0, 0.2 * 2**attempt) * (0.5 + random.random()))
                elif not outage.wait(exc):
                    raise StorageError(f"{uri}: {what} failed after {attempt} attempts{outage.spent()}: {exc}") from None

    def _explain(self, exc, uri: str, outage: Optional["_Outage"] = None) -> StorageError:
        code = _error_code(exc)
        endpoint = self.client().meta.endpoint_url
        if code in ("NoSuchBucket",) or (code in ("404", "NotFound") and "HeadBucket" in str(exc)):
            return StorageError(f"{uri}: bucket does not exist at {endpoint}")
        if code == "NoSuchKey":
            return NotFound(f"{uri}: not found")
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403", "InvalidToken"):
            return StorageError(f"{uri}: access denied by {endpoint} ({code}): check the S3 credentials")
        return StorageError(f"{uri}: S3 error {code} from {endpoint}{outage.spent() if outage else ''}: {exc}")


def _error_code(exc) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


# Answers of a server that is there but cannot serve now (overloaded, restarting, behind a failing balancer).
_UNAVAILABLE = ("SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "Throttling", "ThrottlingException",
                "RequestLimitExceeded", "500", "502", "503", "504")


class _Outage:
    """The outage budget of one call: `wait()` sleeps and returns True while an endpoint that has answered
    before stays unavailable for less than `storage.outage_budget_s`, else returns False."""

    def __init__(self, storage: Storage, uri: str) -> None:
        self.storage, self.uri = storage, uri
        self.called = time.monotonic()  # the outage began at the latest when the call did (botocore retried first)
        self.started: Optional[float] = None
        self.waits = 0

    def wait(self, cause: BaseException) -> bool:
        budget = self.storage.options.outage_budget_s
        if not self.storage._answered or budget <= 0:
            return False
        now = time.monotonic()
        if self.started is None:
            self.started = self.called
            log.warning("%s: S3 endpoint unavailable (%s); retrying for up to %.0f s (storage.outage_budget_s)",
                        self.uri, _error_code(cause) or type(cause).__name__, budget)
        left = budget - (now - self.started)
        if left <= 0:
            return False
        time.sleep(min(left, 10.0, 0.5 * 2**self.waits) * (0.75 + 0.5 * random.random()))
        self.waits += 1
        return True

    def spent(self) -> str:
        """" (unavailable for N s …)" once the budget was used, for the error line."""
        if self.started is None:
            return ""
        return f" (unavailable for {time.monotonic() - self.started:.0f} s, storage.outage_budget_s)"


_TEMP_MARK = ".tmp-"


def _is_temp_name(name: str) -> bool:
    return _TEMP_MARK in name


class _atomic_local:
    """Context manager yielding a temp path next to `target`; renamed onto `target` only on success."""

    def __init__(self, target: Path):
        self.target = target

    def __enter__(self) -> str:
        try:
            self.target.parent.mkdir(parents=True, exist_ok=True)
            self.tmp = self._create_temp()
        except OSError as exc:
            raise _write_error(self.target, exc) from None
        return self.tmp

    def _create_temp(self) -> str:
        # Not mkstemp: its 0600 would hide the run from a group sharing a cluster file system; mode 0666 here
        # gets the umask applied by the kernel, as a plain open() does.
        while True:
            path = self.target.parent / f".{self.target.name}{_TEMP_MARK}{secrets.token_hex(6)}"
            try:
                os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
                return str(path)
            except FileExistsError:
                continue

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            try:
                _fsync(self.tmp)  # the bytes reach the disk before the name points at them
            except OSError as err:
                Path(self.tmp).unlink(missing_ok=True)
                raise _write_error(self.target, err) from None
            os.replace(self.tmp, self.target)
            _fsync(str(self.target.parent))  # and the rename itself survives a crash
        else:
            Path(self.tmp).unlink(missing_ok=True)
            if isinstance(exc, OSError) and not isinstance(exc, StorageError):
                raise _write_error(self.target, exc) from None  # e.g. the disk is full: one line, not a traceback
        return False


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_error(target: Path, exc: OSError) -> "StorageError":
    return StorageError(f"{target}: cannot write: {exc.strerror or exc} (nothing was replaced; free space or fix "
                        "permissions and run again)")
