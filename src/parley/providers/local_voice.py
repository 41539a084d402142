"""The thread bridge shared by the local voices (hibari, piper): a sync sentence generator, streamed async.

Owns: the one worker thread per model that advances a synthesis generator one ``next()`` at a time (so
sentences of concurrent calls interleave FIFO and never oversubscribe the CPU), closing the generator on
that thread when the consumer stops early, and the Usage contract: a complete iteration ends with
``Usage(characters=len(text))``; a request stopped early reports ``Usage(cancelled=True)`` to the request's
``on_cancel`` sink (an async generator cannot yield to a consumer that left; in a call that is the sink the
call's stream was opened with); a failure yields ``Usage(failed=True)`` and then
raises the :class:`~parley.providers.errors.ProviderError`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Callable, Generator
from concurrent.futures import ThreadPoolExecutor

from parley.audio.pcm import Float32Array, from_float
from parley.errors import ParleyError
from parley.providers.base import AudioChunk, TTSEvent, Usage, UsageSink
from parley.providers.errors import ProviderError

Piece = tuple[str | None, Float32Array]  # (sentence text on its first chunk, float audio)
Pieces = Generator[Piece, None, None]


class VoiceWorker:
    """One worker thread for one local voice model."""

    def __init__(self, provider: str) -> None:
        self.provider = provider
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"parley-{provider}")

    async def next_piece(self, gen: Pieces) -> Piece | None:
        """Advance ``gen`` on the worker thread; None when it is exhausted."""
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, self._advance, gen)
        except RuntimeError as exc:  # executor shut down
            raise ProviderError(f"the {self.provider} model is closed ({exc})", provider=self.provider) from exc

    def _advance(self, gen: Pieces) -> Piece | None:
        try:
            return next(gen, None)
        except Exception as exc:  # the model library's errors become ours here, at the edge
            raise ProviderError(f"{self.provider} synthesis failed: {exc}", provider=self.provider,
                                retryable=False) from exc

    def close_later(self, gen: Pieces) -> None:
        """Close ``gen`` on the worker thread, after any ``next()`` still running there."""
        with contextlib.suppress(RuntimeError):  # executor already shut down: nothing runs any more
            self._executor.submit(gen.close)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


async def stream_pieces(
    worker: VoiceWorker,
    gen: Pieces,
    *,
    text: str,
    sample_rate: int,
    usage: Callable[[bool, bool], Usage],  # (cancelled, failed) -> Usage
    on_cancel: UsageSink | None,
) -> AsyncGenerator[TTSEvent, None]:
    finished = False
    failure: ParleyError | None = None
    try:
        while (piece := await worker.next_piece(gen)) is not None:
            label, audio = piece
            yield AudioChunk(from_float(audio), sample_rate, text=label)
        finished = True
    except ParleyError as exc:
        failure = exc
    finally:
        if not finished:
            worker.close_later(gen)
        if not finished and failure is None and on_cancel is not None:
            on_cancel(usage(True, False))  # stopped early: cannot be yielded
    if failure is not None:
        yield usage(False, True)
        raise failure
    yield usage(False, False)
