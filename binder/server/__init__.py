"""The search page of ``binder serve``: a FastAPI app over an open :class:`binder.Index`.

:func:`create_app` builds the app (routes in :mod:`binder.server.app`, the form in
:mod:`binder.server.forms`, content sniffing in :mod:`binder.server.media`, HTML from the Jinja2
templates through :mod:`binder.server.render`); :func:`run_server` serves it with uvicorn.
"""
from binder.server.app import create_app, run_server

__all__ = ["create_app", "run_server"]
