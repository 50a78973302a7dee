"""The worked `>>>` examples in module docstrings are checked, so they stay true."""

from __future__ import annotations

import doctest

import pytest

import dpokit.core.paths
import dpokit.data.collate
import dpokit.data.packing
import dpokit.data.store
import dpokit.eval.perplexity


@pytest.mark.parametrize("module", [dpokit.core.paths, dpokit.data.collate, dpokit.data.packing, dpokit.data.store,
                                    dpokit.eval.perplexity])
def test_docstring_examples(module):
    result = doctest.testmod(module, verbose=False)
    assert result.attempted > 0 and result.failed == 0
