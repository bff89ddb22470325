"""The execution manager's HTTP face: dashboard, JSON API, live feed and ``/metrics``
(README "Seeing it work")."""

from .server import WebServer

__all__ = ["WebServer"]
