"""invariant-mr: Mendelian randomization with instruments learned to be invariant across environments."""

__version__ = "0.1.0"

from .data import MRData  # noqa: E402
from .errors import InputError  # noqa: E402

__all__ = ["MRData", "InputError", "__version__"]
