"""model_loader: the one-shot Model-Load initContainer. Run it as `python -m model_loader`."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("model-loader")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0"
