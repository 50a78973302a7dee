"""Every module imports: an undefined name at module level, or a module nothing else imports, fails here first."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import dpokit

# __main__ runs the CLI when imported (`python -m dpokit`); test_config_cli runs it as a process
MODULES = sorted(m.name for m in pkgutil.walk_packages(dpokit.__path__, "dpokit.") if m.name != "dpokit.__main__")


def test_the_package_has_its_modules():
    assert {"dpokit.api", "dpokit.cli", "dpokit.data.chat", "dpokit.trainer.loop"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_module_imports(name):
    importlib.import_module(name)
