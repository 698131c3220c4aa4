"""Small helpers for tests that put a run on the local S3 server."""

from __future__ import annotations

from pathlib import Path


def upload_folder(storage, folder: Path, uri: str) -> None:
    """Copy a local folder (a prepared data set) under an s3:// URI."""
    for path in folder.rglob("*"):
        if path.is_file():
            storage.upload(path, f"{uri}/{path.relative_to(folder).as_posix()}")


def bucket_keys(storage, bucket: str, prefix: str = "") -> list[str]:
    """Every key under `prefix`, read with the client (pyarrow's folder markers included)."""
    pages = storage.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]
