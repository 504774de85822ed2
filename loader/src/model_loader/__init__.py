"""model_loader: the one-shot Model-Load initContainer. Run it as `python -m model_loader`."""


def __getattr__(name: str) -> str:
    # The version is looked up on use (--version, the manifest), not on import: the
    # entry point imports this package before it can switch the collector off.
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("model-loader")
        except PackageNotFoundError:  # running from a source tree
            return "0.0.0"
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
