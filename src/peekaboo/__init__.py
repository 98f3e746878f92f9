"""peekaboo: does each reasoning step of a vision-language model still rest on the visual evidence?"""

from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("peekaboo")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.1.0"

__all__ = ["__version__"]
