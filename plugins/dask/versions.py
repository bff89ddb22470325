"""Which Dask the plugin works with, checked before anything else is done."""

from __future__ import annotations

from kernel.errors import PluginError

EXTRA = "pip install 'microkernel-em[dask]'"
SUPPORTED = ((2024, 4), (2027, 0))  # from, up to (not included)


def check_version(version: str | None = None) -> str:
    """Return distributed's version; raise :class:`PluginError` naming the extra when it
    is not installed, or the supported versions when it is one we do not support."""
    if version is None:
        from importlib.metadata import PackageNotFoundError, version as installed

        try:
            import distributed  # noqa: F401  (an installed but broken package fails here)

            version = installed("distributed")
        except (ImportError, PackageNotFoundError):
            raise PluginError(f"the dask transport needs Dask's distributed package: {EXTRA}") from None
    try:
        parts = tuple(int(x) for x in version.split(".")[:2])
    except ValueError:
        raise PluginError(f"cannot read Dask's version {version!r}") from None
    low, high = SUPPORTED
    if not low <= parts < high:
        raise PluginError(
            f"Dask {version} is not supported: the dask transport works with distributed "
            f"{low[0]}.{low[1]} up to (not including) {high[0]}.{high[1]}"
        )
    return version
