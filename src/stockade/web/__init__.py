"""The web dashboard: server-rendered pages over the control plane's services, mounted at `/ui`."""

from stockade.web.dashboard import create_dashboard_router

__all__ = ["create_dashboard_router"]
