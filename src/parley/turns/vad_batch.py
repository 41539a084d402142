"""Silero windows of many calls scored in one ONNX run: the VAD's share of CPU at high call density.

Owns: collecting the windows that calls hand in during one event-loop turn and running them as one batch
(``input [B, context + window]``, ``state [2, B, 128]``), then giving each call its own probability and
state. Rows are independent in the model, so the results are bit-identical to one run per window
(``tests/turns/test_vad_batch.py``); measured here, one window costs ~220 us alone and ~65 us inside a
batch of 16 (``parley bench density`` shows the effect on a whole process).

A lone call pays one event-loop hop (the flush is scheduled with ``call_soon``); under load, every call
whose frame arrived in the same turn of the loop shares one run, so the batch grows exactly when CPU is
short. Must not hold per-call state: each request carries its own window and state.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import TYPE_CHECKING

import numpy as np

from parley.audio.pcm import Float32Array

if TYPE_CHECKING:
    from parley.turns.vad import SileroModel

MAX_BATCH = 64  # beyond ~16 rows the per-window cost stops falling; 64 bounds one run to ~4 ms


class SileroBatcher:
    """``await infer(window, state, rate)``: like ``SileroModel.infer``, batched per event-loop turn."""

    def __init__(self, model: SileroModel, max_batch: int = MAX_BATCH) -> None:
        self.model = model
        self.max_batch = max_batch
        self.runs = 0  # ONNX runs, for benchmarks and tests
        self.windows = 0  # windows scored through them
        # one queue per event loop (tests run many loops; a model is shared by the whole process)
        self._queues: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Queue] = weakref.WeakKeyDictionary()

    async def infer(self, x: Float32Array, state: Float32Array, sample_rate: int) -> tuple[float, Float32Array]:
        loop = asyncio.get_running_loop()
        queue = self._queues.get(loop)
        if queue is None:
            queue = self._queues[loop] = _Queue()
        fut: asyncio.Future[tuple[float, Float32Array]] = loop.create_future()
        # copy now: the caller's window buffer is reused for its next window
        queue.pending.setdefault(sample_rate, []).append((x.copy(), state, fut))
        if not queue.scheduled:
            queue.scheduled = True
            loop.call_soon(self._flush, queue)
        return await fut

    def _flush(self, queue: _Queue) -> None:
        queue.scheduled = False
        pending, queue.pending = queue.pending, {}
        for rate, items in pending.items():
            items = [item for item in items if not item[2].done()]  # a cancelled call's window is skipped
            for i in range(0, len(items), self.max_batch):
                self._run(rate, items[i : i + self.max_batch])

    def _run(self, rate: int, items: list[_Item]) -> None:
        try:
            x = np.concatenate([item[0] for item in items], axis=0)
            state = np.concatenate([item[1] for item in items], axis=1)
            out, state_n = self.model.session.run({"input": x, "state": state, "sr": np.array(rate, dtype=np.int64)})
        except Exception as exc:  # every waiting call gets the model's error
            for item in items:
                if not item[2].done():
                    item[2].set_exception(exc)
            return
        self.runs += 1
        self.windows += len(items)
        probs = out.reshape(len(items), -1)[:, 0]
        for row, (_x, _s, fut) in enumerate(items):
            if not fut.done():
                fut.set_result((float(probs[row]), state_n[:, row : row + 1, :].copy()))


_Item = tuple[Float32Array, Float32Array, "asyncio.Future[tuple[float, Float32Array]]"]


class _Queue:
    __slots__ = ("pending", "scheduled")

    def __init__(self) -> None:
        self.pending: dict[int, list[_Item]] = {}
        self.scheduled = False
