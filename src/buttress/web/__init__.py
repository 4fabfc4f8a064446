"""The ops service: a FastAPI router and app over the same objects the library uses.

>>> from buttress.web import create_app
>>> app = create_app()        # uvicorn buttress.web:app, or `buttress serve`

Needs the ``web`` extra: ``pip install 'buttress[web]'``.
"""

from buttress.web._app import create_app, install, router
from buttress.web._auth import Principal
from buttress.web._service import Service

__all__ = ["Principal", "Service", "create_app", "install", "router"]
