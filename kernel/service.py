"""The base class every service derives from."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from pydantic import BaseModel

    from .interfaces import ServiceHost
    from .manifest import Manifest

# Attributes that tie an instance to this process; never shipped to a worker.
RUNTIME_ATTRS = frozenset({"_kernel", "_em", "manifest"})


class BaseService:
    """A unit the kernel loads from a folder with a ``config.json``.

    Subclasses override :meth:`start` and :meth:`stop` (both async, both optional) and
    may declare ``settings_model``, a pydantic model that validates the manifest's
    ``custom`` object; the validated result is ``self.settings``.

    When an instance travels to a worker (``@distributed``), its ``__dict__`` is
    pickled minus the kernel bindings (``_kernel``, ``_em``, ``manifest``); keep
    process-bound resources (sockets, locks, clients) out of it or create them lazily.
    """

    name: str = ""
    settings_model: ClassVar[type[BaseModel] | None] = None
    settings: Any = None

    _kernel: ServiceHost | None = None
    manifest: Manifest | None = None

    async def start(self) -> None:
        """Called once, after the service's dependencies have started."""

    async def stop(self) -> None:
        """Called once at shutdown, before the services it depends on stop."""

    @property
    def kernel(self) -> ServiceHost:
        """The kernel that started this service."""
        if self._kernel is None:
            raise RuntimeError(f"service {self.name or type(self).__name__!r} is not bound to a kernel")
        return self._kernel

    def get_service(self, name: str) -> Any:
        """A global service, or one this service lists in its ``dependencies``."""
        return self.kernel.get_service(name, requester=self.name)

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in RUNTIME_ATTRS}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} service={self.name!r}>"
