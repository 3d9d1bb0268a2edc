"""File bytes (uploads, outputs, errors) in fsspec storage: a local directory by default, any
fsspec URL (s3://bucket/prefix for S3/MinIO) like the router registry. Metadata is in the
database (batches.store); this only reads and writes bytes by file id."""

from __future__ import annotations

import fsspec
from fsspec.implementations.local import LocalFileSystem


class FileStorage:
    def __init__(self, url: str) -> None:
        self.url = url
        self.fs, self.root = fsspec.core.url_to_fs(url)
        self.fs.makedirs(self.root, exist_ok=True)

    def path(self, file_id: str) -> str:
        return f"{self.root.rstrip('/')}/{file_id}.jsonl"

    def write(self, file_id: str, data: bytes) -> str:
        """Write the whole file (a temp name renamed in place on a local disk: no torn file)."""
        path = self.path(file_id)
        if isinstance(self.fs, LocalFileSystem):
            tmp = path + ".part"
            with self.fs.open(tmp, "wb") as f:
                f.write(data)
            self.fs.mv(tmp, path)
        else:
            with self.fs.open(path, "wb") as f:
                f.write(data)
        return path

    def read(self, path: str) -> bytes:
        with self.fs.open(path, "rb") as f:
            return f.read()

    def delete(self, path: str) -> None:
        try:
            self.fs.rm(path)
        except FileNotFoundError:
            pass
