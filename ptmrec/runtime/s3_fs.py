"""pyarrow's S3 file system for Ray Train's checkpoints, with the retry budget surviving pickling.

Ray Train moves its storage file system into its controller and worker processes by pickling it, and
`pyarrow.fs.S3FileSystem` leaves its retry strategy behind (there it gives up on S3 after 3 attempts, so a short
outage fails the stage). Wrapped as a `pyarrow.fs.PyFileSystem` handler, the settings travel instead and each
process builds its own S3 file system with them.
"""

from __future__ import annotations

from typing import Any

import pyarrow.fs


class RetryingS3(pyarrow.fs.FileSystemHandler):
    """pyarrow's S3 file system with `storage.outage_budget_s` worth of retries in every process it reaches.
    `S3FileSystem` drops its retry strategy when pickled (to Ray Train's controller and workers, which then give
    up on S3 after 3 attempts), so this handler (for `pyarrow.fs.PyFileSystem`) pickles its settings and builds
    the file system where it is used."""

    def __init__(self, options: dict[str, Any], attempts: int) -> None:
        self.options, self.attempts = options, attempts
        self._fs = None

    def __getstate__(self):
        return {"options": self.options, "attempts": self.attempts}

    def __setstate__(self, state) -> None:
        self.__init__(state["options"], state["attempts"])

    @property
    def fs(self) -> pyarrow.fs.S3FileSystem:
        if self._fs is None:
            retry = pyarrow.fs.AwsStandardS3RetryStrategy(max_attempts=self.attempts)
            self._fs = pyarrow.fs.S3FileSystem(**self.options, retry_strategy=retry)
        return self._fs

    # pyarrow.fs.FileSystemHandler, each call handed to the S3 file system
    def get_type_name(self) -> str:
        return "ptmrec-s3"

    def equals(self, other) -> bool:
        return isinstance(other, RetryingS3) and other.options == self.options

    def normalize_path(self, path):
        return self.fs.normalize_path(path)

    def get_file_info(self, paths):
        return self.fs.get_file_info(paths)

    def get_file_info_selector(self, selector):
        return self.fs.get_file_info(selector)

    def create_dir(self, path, recursive):
        self.fs.create_dir(path, recursive=recursive)

    def delete_dir(self, path):
        self.fs.delete_dir(path)

    def delete_dir_contents(self, path, missing_dir_ok=False):
        self.fs.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self):
        self.fs.delete_dir_contents("/", accept_root_dir=True)

    def delete_file(self, path):
        self.fs.delete_file(path)

    def move(self, src, dest):
        self.fs.move(src, dest)

    def copy_file(self, src, dest):
        self.fs.copy_file(src, dest)

    def open_input_stream(self, path):
        return self.fs.open_input_stream(path)

    def open_input_file(self, path):
        return self.fs.open_input_file(path)

    def open_output_stream(self, path, metadata):
        return self.fs.open_output_stream(path, metadata=metadata)

    def open_append_stream(self, path, metadata):
        return self.fs.open_append_stream(path, metadata=metadata)
