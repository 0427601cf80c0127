"""outputs stage: reports, gallery, review and promote, all read from the journal.

The defaults of the outputs' commands live here, written once, where the CLI reads them without
importing pandas or aiohttp.
"""

REVIEW_HOST = "127.0.0.1"  # the review server binds loopback unless told otherwise
REVIEW_PORT = 8765  # `omni-batch review`'s port (the library's serve_review takes any free one)
PROMOTE_REPEATS = 1  # takes of each winner in the next run
