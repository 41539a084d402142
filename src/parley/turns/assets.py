"""Where the bundled turn-taking models live on disk.

Owns: finding the Silero VAD and smart-turn ONNX files and pipecat's numpy log-mel feature code inside an
installed ``pipecat-ai`` distribution. pipecat is installed without its dependencies, so ``import pipecat``
fails (its ``__init__`` imports loguru): everything is located by path and nothing from pipecat is imported
as a package. Must not know about sessions, frames or turns.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import cast

import numpy as np
import numpy.typing as npt

from parley.errors import ConfigError

SILERO_RELPATH = "audio/vad/data/silero_vad.onnx"
SMART_TURN_RELPATH = "audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx"
WHISPER_FEATURES_RELPATH = "audio/turn/smart_turn/_whisper_features.py"

_INSTALL_HINT = "install it with: pip install --no-deps pipecat-ai==1.14.0"

LogMelFn = Callable[..., npt.NDArray[np.float32]]


def pipecat_dir() -> Path:
    """The installed ``pipecat`` package folder (found without importing it)."""
    spec = importlib.util.find_spec("pipecat")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"pipecat-ai (which bundles the VAD and turn models) is not installed; {_INSTALL_HINT}")
    return Path(next(iter(spec.submodule_search_locations)))


def pipecat_file(relpath: str) -> Path:
    path = pipecat_dir() / relpath
    if not path.is_file():
        raise ConfigError(f"{path} is missing from the installed pipecat-ai; {_INSTALL_HINT}")
    return path


def load_log_mel_features() -> LogMelFn:
    """pipecat's numpy-only ``compute_whisper_log_mel_features``, loaded from its file (BSD-2 / Apache-2.0)."""
    path = pipecat_file(WHISPER_FEATURES_RELPATH)
    spec = importlib.util.spec_from_file_location("parley_turns_whisper_features", path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    fn = getattr(module, "compute_whisper_log_mel_features", None)
    if not callable(fn):
        raise ConfigError(f"{path} has no compute_whisper_log_mel_features()")
    return cast(LogMelFn, fn)
