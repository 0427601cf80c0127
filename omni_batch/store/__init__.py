"""Where videos and their posters are kept: the `VideoStore` protocol (base), the local folder
that implements it (local), an S3 bucket through obstore (s3), and which one a run uses
(location: ``--store``, recorded in the journal's meta)."""

from omni_batch.store.base import Stored, VideoStore
from omni_batch.store.local import LocalStore
from omni_batch.store.location import (
    STORE_META,
    folder_store,
    open_store,
    parse_location,
    shared_store,
)

__all__ = [
    "STORE_META",
    "LocalStore",
    "Stored",
    "VideoStore",
    "folder_store",
    "open_store",
    "parse_location",
    "shared_store",
]
