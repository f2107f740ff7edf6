"""Micro-batching on the device: concurrent requests' images go through the model in one forward pass."""

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future

import torch


class MicroBatcher:
    """A worker thread encodes what arrived within ``wait_ms`` of the first waiting request, up to ``max_images``
    images, as one batch, and hands each request its rows. Requests decode and transform their images themselves
    (in the server's thread pool); only the model's forward pass is shared. A failing batch fails its requests."""

    def __init__(self, encode: Callable[[torch.Tensor], torch.Tensor], max_images: int = 64, wait_ms: float = 5.0):
        self.encode, self.max_images, self.wait = encode, max_images, wait_ms / 1000
        self.batches = 0  # forward passes run (what the tests read)
        self.queue: queue.Queue[tuple[torch.Tensor, Future]] = queue.Queue()
        threading.Thread(target=self._work, name="clip-api-batcher", daemon=True).start()

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        future: Future = Future()
        self.queue.put((pixels, future))
        return future.result()

    def _work(self) -> None:
        while True:
            batch = [self.queue.get()]
            count, deadline = len(batch[0][0]), time.monotonic() + self.wait
            while count < self.max_images:
                try:
                    item = self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                batch.append(item)
                count += len(item[0])
            try:
                with torch.no_grad():  # grad mode is per thread
                    rows = self.encode(torch.cat([pixels for pixels, _ in batch]))
                self.batches += 1
            except Exception as err:  # the requests get the error; the worker keeps serving
                for _, future in batch:
                    future.set_exception(err)
                continue
            start = 0
            for pixels, future in batch:
                future.set_result(rows[start : start + len(pixels)])
                start += len(pixels)
