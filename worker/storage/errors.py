"""Errors of the archive storage. Callers decide "retry or give up" from the type.

- ``StorageRetryable`` (and ``ChecksumMismatch``): try again later, with backoff;
- ``StoragePermanent``: retrying cannot help until a person fixes the configuration
  (bucket, credentials, permissions) or the code.

Errors of a local disk are not wrapped: ``LocalStorage`` lets ``OSError`` through unchanged.
An invalid object name or archive URL is a ``ValueError``.
"""

from __future__ import annotations

__all__ = ["ChecksumMismatch", "StorageError", "StoragePermanent", "StorageRetryable"]


class StorageError(Exception):
    """The archive storage failed."""


class StorageRetryable(StorageError):
    """The archive storage failed for now (network, throttling, server trouble); try again."""


class StoragePermanent(StorageError):
    """The archive storage refused the request (bucket, credentials, permissions, size limits)."""


class ChecksumMismatch(StorageRetryable):
    """The stored bytes are not the bytes that were sent; nothing was kept."""
