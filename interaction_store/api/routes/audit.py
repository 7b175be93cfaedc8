"""What auditors read: the signed checkpoints that seal the log, and who read whom."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Annotated

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from interaction_store import views
from interaction_store.api.deps import (
    MAX_POSITION,
    Administrator,
    Auditor,
    PathId,
    Svc,
    id_query,
)
from interaction_store.api.models import (
    AccessPage,
    CheckpointPage,
    ErasureAnswer,
    ErasureRequest,
    problems,
)
from interaction_store.api.problems import JSON, Problem
from interaction_store.api.routes.appends import read_body
from interaction_store.audit import checkpoints
from interaction_store.audit.access import Access, accesses
from interaction_store.audit.export import export_customer
from interaction_store.shredding import Erasure, ViewsBehind, erase

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


@router.get("/v1/audit/access", response_model=AccessPage, responses=problems(401, 403, 422))
async def access_log(
    svc: Svc,
    key: Auditor,
    customer_id: Annotated[str, id_query("the customer (or a merged alias)")],
    after: Annotated[int, Query(ge=0, le=MAX_POSITION, description="an access id")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> JSON:
    """Who read the customer: every read of its timeline, summary, context or export,
    oldest first, with the API key's id and name."""

    def read() -> list[Access]:
        if svc.access is not None:
            svc.access.flush()  # the reads of a moment ago, too
        with svc.connection() as conn:
            return accesses(conn, customer_id, after=after, limit=limit)

    found = await run_in_threadpool(read)
    return JSON(
        {
            "customer_id": customer_id,
            "accesses": [
                {
                    "id": a.access_id,
                    "read_at": a.read_at,
                    "key_id": a.key_id,
                    "key_name": a.key_name,
                    "customer_id": a.customer_id,
                    "endpoint": a.endpoint,
                }
                for a in found
            ],
            "next": found[-1].access_id if found else after,
        }
    )


@router.get(
    "/v1/customers/{customer_id}/export",
    tags=["customers"],
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "NDJSON: one object per line, each naming its record.",
            "content": {"application/x-ndjson": {"schema": {"type": "string"}}},
        },
        **problems(401, 403, 404, 422),
    },
)
async def export(svc: Svc, key: Auditor, customer_id: PathId) -> StreamingResponse:
    """Everything about the person, across all their identities: summary, identity links,
    merges, events, timeline and conversation rows, and who read them (NDJSON, streamed;
    the first line is ``export``, the last ``end``)."""

    def found() -> str | None:
        with svc.connection() as conn:
            return views.find_customer_read(customer_id).run(conn)

    customer = await run_in_threadpool(found)
    if customer is None:
        raise Problem(404, "Not found", f"no customer {customer_id}")
    svc.accessed(key, customer, "export")
    if svc.access is not None:
        await run_in_threadpool(svc.access.flush)  # the export lists itself

    def lines() -> Iterator[bytes]:
        with svc.connection() as conn:
            for line in export_customer(conn, customer, svc.store.sealer):
                yield orjson.dumps(line) + b"\n"

    return StreamingResponse(lines(), media_type="application/x-ndjson")


@router.post(
    "/v1/customers/{customer_id}/erase",
    tags=["customers"],
    response_model=ErasureAnswer,
    responses=problems(401, 403, 404, 413, 422, 503),
    openapi_extra={
        "requestBody": {
            "required": False,
            "content": {"application/json": {"schema": ErasureRequest.model_json_schema()}},
        }
    },
)
async def erase_customer(
    request: Request, svc: Svc, key: Administrator, customer_id: PathId
) -> JSON:
    """Erase the person (crypto-shredding): destroy the data keys of the customer, of the
    customers merged into it and of all their contacts, and append ``customer.erased``.
    Their personal data in the log can no longer be read (it reads as placeholders), the
    log itself is untouched (so ``audit verify`` still passes), and the projections purge
    their rows from the views. A new interaction from one of their addresses starts a
    new history. Irreversible."""

    raw = await read_body(request, svc)
    try:
        body = ErasureRequest.model_validate(orjson.loads(raw) if raw.strip() else {})
    except orjson.JSONDecodeError as exc:
        raise Problem(422, "Invalid request", f"the body is not JSON: {exc}") from None
    except ValidationError as exc:
        raise Problem(
            422,
            "Invalid request",
            "the body is not an erasure request",
            errors=[
                {"field": ".".join(map(str, e["loc"])) or None, "reason": e["msg"]}
                for e in exc.errors()
            ],
        ) from None

    def run() -> Erasure:
        actor = f"api key {key.name} ({key.key_id})"
        return erase(svc.store, customer_id, reason=body.reason, actor=actor)

    try:
        done = await run_in_threadpool(run)
    except LookupError:
        raise Problem(404, "Not found", f"no customer {customer_id}") from None
    except ViewsBehind as exc:
        raise Problem(503, "Views behind", exc.message, headers={"Retry-After": "5"}) from None
    return JSON(
        {
            "customer_id": done.customer_id,
            "merged_customer_ids": done.merged_customer_ids,
            "contacts": done.contacts,
            "keys_shredded": done.keys_shredded,
            "position": done.position,
        }
    )
