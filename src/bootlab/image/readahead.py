"""Decompressing on a second thread while this one parses and writes.

The codecs release the GIL while they decode, and so does writing a file: extraction can keep
two cores busy, one decoding the next piece while the other writes out the last. (A plain listing
gains nothing from it: its parsing is a few milliseconds.)
"""

from __future__ import annotations

import queue
import threading

from bootlab.image import compress

_DEPTH = 4  # pieces in flight: rides over an uneven writer for 4 MiB of memory


class _Stop(Exception):
    """Raised in the decoder thread when the reader has given up (an error, Ctrl-C)."""


def decompress_chunks(algorithm: str, buf: compress.Buffer, offset: int, sink: compress.Sink) -> int:
    """compress.decompress_chunks, with the decoding on a worker thread and `sink` called here."""
    pool = [bytearray(compress.PIECE) for _ in range(_DEPTH)]
    pooled = {id(b) for b in pool}
    free: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
    for b in pool:
        free.put(b)
    # Bounded: a library decoder (gzip, xz ...) makes new pieces rather than taking pool buffers,
    # and must not run ahead of a slow disk with the whole image in memory.
    ready: queue.Queue[memoryview | BaseException | int] = queue.Queue(maxsize=_DEPTH)
    stop = threading.Event()

    def handoff(piece: memoryview) -> None:
        if stop.is_set():
            raise _Stop
        ready.put(piece)

    def work() -> None:
        try:
            ready.put(compress.decompress_chunks(algorithm, buf, offset, handoff, free.get))
        except BaseException as e:  # noqa: BLE001  (handed to the reader, which raises it)
            ready.put(e)

    worker = threading.Thread(target=work, name="bootlab-decompress", daemon=True)
    worker.start()
    try:
        while True:
            item = ready.get()
            if isinstance(item, int):
                return item
            if isinstance(item, BaseException):
                raise item
            sink(item)
            if id(item.obj) in pooled:
                free.put(item.obj)  # type: ignore[arg-type]
    finally:
        stop.set()
        free.put(bytearray(0))  # a worker waiting for a buffer wakes up, decodes nothing, stops
        while worker.is_alive():  # one waiting to hand over a piece is let through, and stops
            try:
                ready.get(timeout=0.05)
            except queue.Empty:
                pass
        worker.join()
