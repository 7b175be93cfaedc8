"""The v1 endpoints, one module per kind of caller."""

from fastapi import APIRouter, Depends

from interaction_store.api.deps import known_query_parameters
from interaction_store.api.routes import appends, audit, customers, health, live, log

__all__ = ["router"]

router = APIRouter(dependencies=[Depends(known_query_parameters)])
for module in (health, customers, live, log, appends, audit):
    router.include_router(module.router)
