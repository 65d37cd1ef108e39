"""Python's cyclic garbage collector set for a long-running service (once, at process start).

With Python's young-generation threshold (700 container allocations), a gateway request or a batch
of ingest events sets off several collections, and what survives them is promoted and traversed
again by the older generations' collections. At 50,000 the short-lived objects of requests and
batches are gone by the time a collection runs, so the older generations are rarely reached:
`bench/gateway_alone.py` measured the gateway's CPU per request 7 % lower, and ingest's collector
time fell from a tenth of a worker's time to about a thirtieth (README, issue 9). What the process
holds after its imports and start-up (modules, classes, clients) is frozen first: no collection
traverses it again."""

from __future__ import annotations

import gc

DEFAULT_YOUNG_THRESHOLD = 50_000


def tune_gc(young_threshold: int) -> None:
    """Freezes what the process holds now and sets the young generation's threshold (0: Python's own);
    the older generations keep Python's thresholds."""
    gc.collect()
    gc.freeze()
    if young_threshold > 0:
        _, older, oldest = gc.get_threshold()
        gc.set_threshold(young_threshold, older, oldest)
