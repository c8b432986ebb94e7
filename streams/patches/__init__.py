"""Every workaround for Faust's and aiokafka's internals, in one place.

They reach into private attributes of the versions in :data:`PINNED`, so a new version
needs each module checked against its source before the pin moves
(``tests/unit/streams/test_patches_pinned.py`` fails until it is):

* :mod:`.transport`: a Kafka fetch wait the worker chooses (Faust's driver fixes 1,500 ms),
  Faust's partition pauses told to aiokafka, a send-soon buffer it can drain;
* :mod:`.healing`: messages Faust read but dropped around a rebalance are found and fetched
  again (faust-streaming's flow-control resume clears the stream queues; a late fetch batch
  overwrites the read offset after a seek);
* :mod:`.batching`: batches taken straight off an agent's channel queue, past the per-event
  ``Stream.__aiter__`` path;
* :mod:`.eager`: each fetched message handed to the conductor without mode's four tasks per
  ``Service.wait_first``.

``streams.runtime``'s ``/debug/consumer`` view reads Faust's consumer bookkeeping too, read-only.
"""

from __future__ import annotations

#: The distributions these modules were written against, and checked on.
PINNED: dict[str, str] = {
    "faust-streaming": "0.15.3",
    "aiokafka": "0.14.0",
    "mode-streaming": "0.7.1",
}
