"""Training batches prepared ahead, in a background thread, so the step never waits for the memmap reads,
the MLM masking or the host-to-device copy.

A step's batches are a pure function of the step's first global sample index (see `xlbtm.data.dataset`),
so preparing them early changes nothing in what is trained. On CUDA they are pinned, so the trainer's
`.to(device, non_blocking=True)` overlaps the copy with compute.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable


class Prefetcher:
    """Yields `make(position)` for position = start, start + stride, ... computed `depth` steps ahead."""

    def __init__(self, make: Callable[[int], list], start: int, stride: int, *, pin: bool = False, depth: int = 2):
        self._make, self._pin = make, pin
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(start, stride), name="xlbtm-prefetch", daemon=True)
        self._thread.start()

    def _run(self, position: int, stride: int) -> None:
        try:
            while not self._stop.is_set():
                batches = self._make(position)
                if self._pin:
                    batches = [tuple(t.pin_memory() for t in b) for b in batches]
                while not self._stop.is_set():
                    try:
                        self._queue.put(("ok", batches), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                position += stride
        except BaseException as e:  # noqa: BLE001 -- handed to the training thread, raised there
            self._queue.put(("error", e))

    def next(self) -> list:
        kind, value = self._queue.get()
        if kind == "error":
            raise value
        return value

    def close(self) -> None:
        self._stop.set()
        try:
            while True:
                self._queue.get_nowait()
        except queue.Empty:
            pass
        self._thread.join(timeout=5)
