"""model_api: FastAPI + ONNX Runtime serving a model published by model-loader."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("model-api")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0"
