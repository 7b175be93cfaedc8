"""What auditors read: the signed checkpoints that seal the log."""

from __future__ import annotations

import base64
from typing import Annotated

from fastapi import APIRouter, Query
from starlette.concurrency import run_in_threadpool

from interaction_store.api.deps import MAX_POSITION, Auditor, Svc
from interaction_store.api.models import CheckpointPage, problems
from interaction_store.api.problems import JSON
from interaction_store.audit import checkpoints

__all__ = ["router"]

router = APIRouter(tags=["audit"])


@router.get(
    "/v1/audit/checkpoints",
    response_model=CheckpointPage,
    responses=problems(401, 403, 422),
)
async def list_checkpoints(
    svc: Svc,
    key: Auditor,
    after: Annotated[int, Query(ge=0, le=MAX_POSITION, description="a checkpoint id")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> JSON:
    """The signed checkpoints, oldest first: each signs the size and Merkle root of the
    log's first events in gap-safe order. Keep them elsewhere too: a copy an attacker
    cannot reach is what makes a rewritten history show."""

    def read() -> list[checkpoints.SealedCheckpoint]:
        with svc.connection() as conn:
            return checkpoints.checkpoints(conn, after=after, limit=limit)

    found = await run_in_threadpool(read)
    public = svc.public_key
    return JSON(
        {
            "checkpoints": [
                {
                    "id": c.checkpoint_id,
                    "tree_size": c.tree_size,
                    "root_hash": c.root_hash.hex(),
                    "sealed_at": c.sealed_at,
                    "key_id": c.key_id,
                    "signature": base64.b64encode(c.signature).decode(),
                }
                for c in found
            ],
            "public_key": None if public is None else public.text(),
            "next": found[-1].checkpoint_id if found else after,
        }
    )
