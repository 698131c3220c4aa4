"""URIs, the one way jobs name artifacts (a local path, `file://…` or `s3://bucket/key`), and the error every
storage failure raises. Below both the config (which makes a config's URIs absolute) and `ptmrec.storage`."""

from __future__ import annotations

import os
from dataclasses import dataclass


class StorageError(RuntimeError):
    """An artifact could not be read or written; the message names the URI and the cause."""


@dataclass(frozen=True)
class Location:
    """A parsed URI: `scheme` is "file" (local path in `path`) or "s3" (`bucket` and `key`)."""

    scheme: str
    path: str = ""
    bucket: str = ""
    key: str = ""


def parse_uri(uri: str) -> Location:
    """Local paths and `file://` URIs become absolute paths; `s3://bucket/key` splits into bucket and key."""
    if uri.startswith("s3://"):
        rest = uri[len("s3://"):]
        bucket, _, key = rest.partition("/")
        if not bucket:
            raise StorageError(f"{uri}: an s3:// URI needs a bucket name (s3://bucket/prefix)")
        return Location("s3", bucket=bucket, key=key.strip("/"))
    if uri.startswith("file://"):
        uri = uri[len("file://"):]
    elif "://" in uri:
        raise StorageError(f"{uri}: unsupported URI scheme; use a local path, file://… or s3://…")
    return Location("file", path=os.path.abspath(os.path.expanduser(uri)))


def join(base: str, *parts: str) -> str:
    """Append path parts to a URI or path, with exactly one slash between them."""
    out = base.rstrip("/")
    for part in parts:
        out = f"{out}/{part.strip('/')}"
    return out


def absolute_uri(uri: str) -> str:
    """Make a relative local path absolute (as `file://…`), so it means the same in another working dir."""
    loc = parse_uri(uri)
    return uri if loc.scheme == "s3" else f"file://{loc.path}"
