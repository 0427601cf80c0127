"""Where videos and their posters are kept: the `VideoStore` protocol (base); an object store
(S3 via obstore, s3) stands beside the local folder."""

from omni_batch.store.base import Stored, VideoStore

__all__ = ["Stored", "VideoStore"]
