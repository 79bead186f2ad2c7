"""Edge plugin ``storage``: S3-compatible object storage and CID pinning (README, Storage)."""

from edge.plugins.storage.plugin import StoragePlugin

__all__ = ["StoragePlugin"]
