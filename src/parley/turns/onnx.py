"""The one typed seam onto onnxruntime (which ships no type information).

Owns: building a CPU ``InferenceSession`` with explicit thread counts and running it with float32/int64
numpy inputs. A session is safe to share between threads and calls (onnxruntime's ``run`` is re-entrant),
so models are loaded once per process and per-call state lives elsewhere. Must not know which model it runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort  # type: ignore[import-untyped]

from parley.errors import ConfigError

NDArray = npt.NDArray[Any]


class OnnxSession:
    """A loaded ONNX model bound to the CPU execution provider."""

    def __init__(self, session: Any, path: Path) -> None:
        self._session = session
        self.path = path

    @classmethod
    def load(cls, path: Path, *, threads: int = 1) -> OnnxSession:
        if threads < 1:
            raise ConfigError(f"onnxruntime threads must be >= 1, not {threads}")
        opts = ort.SessionOptions()
        opts.inter_op_num_threads = 1
        opts.intra_op_num_threads = threads
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3  # errors only: no per-session warnings in call logs
        try:
            session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own untyped Fail/InvalidProtobuf errors
            raise ConfigError(f"cannot load ONNX model {path}: {exc}") from exc
        return cls(session, path)

    @property
    def input_names(self) -> list[str]:
        return [str(i.name) for i in self._session.get_inputs()]

    def run(self, inputs: dict[str, NDArray]) -> list[npt.NDArray[np.float32]]:
        """All outputs, in the model's order, as float32 arrays."""
        outputs = self._session.run(None, inputs)
        return [np.asarray(o, dtype=np.float32) for o in outputs]
