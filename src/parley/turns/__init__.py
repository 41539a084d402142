"""Turn-taking: VAD, the smart-turn model and the pure turn machine.

Owns: deciding when the caller starts, pauses, finishes or interrupts. ``machine``, ``events`` and
``policy`` are pure (events with explicit times in, actions out); ``vad`` and ``smart_turn`` are blocking
numeric code around shared ONNX sessions. Nothing here imports asyncio or touches sockets or a clock.
Import the submodules directly; this package imports nothing so the machine stays usable without
onnxruntime.
"""
