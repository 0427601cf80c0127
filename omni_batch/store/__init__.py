"""Where videos and their posters are kept: the `VideoStore` protocol (base) and the local
folder that implements it (local); an object store (S3 via obstore) can stand beside it."""

from omni_batch.store.base import Stored, VideoStore
from omni_batch.store.local import LocalStore

__all__ = ["LocalStore", "Stored", "VideoStore"]
