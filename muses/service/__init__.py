"""The HTTP service over a MemoryStore (FastAPI), its query batcher and its search page."""

from muses.service.app import ServiceLimits, create_app, load_api_key
from muses.service.batcher import QueryBatcher

__all__ = ["QueryBatcher", "ServiceLimits", "create_app", "load_api_key"]
