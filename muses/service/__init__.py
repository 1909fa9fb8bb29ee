"""The HTTP service over a MemoryStore (FastAPI), its query batcher and its search page.

Needs the ``serve`` extra (the store's plus fastapi, uvicorn): ``pip install 'muses[serve]'``.
"""

from muses.extras import require

require("fastapi", "serve")

from muses.service.app import ServiceLimits, create_app, load_api_key  # noqa: E402
from muses.service.batcher import QueryBatcher  # noqa: E402

__all__ = ["QueryBatcher", "ServiceLimits", "create_app", "load_api_key"]
