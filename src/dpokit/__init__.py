"""dpokit: Direct Preference Optimization for causal language models (Rafailov et al., 2023)."""

from dpokit.errors import ConfigError, DataError, DpokitError

__version__ = "0.1.0"
__all__ = ["ConfigError", "DataError", "DpokitError", "__version__"]
