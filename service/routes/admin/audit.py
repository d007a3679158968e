"""Admin route for reading the audit log. No route edits or deletes an entry."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query

from service.admin_models import (
    MAX_PAGE_LIMIT,
    AuditPage,
    audit_entry_out,
    decode_cursor,
    encode_cursor,
    query_time_in_utc,
)
from service.routes.admin.deps import RuntimeDep, registry_errors

router = APIRouter(tags=["audit"])


@router.get("/audit", response_model=AuditPage, name="audit.read")
async def read_audit(
    runtime: RuntimeDep,
    since: Annotated[
        datetime | None, Query(description="ISO 8601 time; UTC when it has no offset")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_LIMIT)] = 100,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> AuditPage:
    """List audit entries oldest first: admin actions and security events.

    Each entry contains the time, the actor (operator name and certificate fingerprint,
    a device id, or a certificate fingerprint), the action, the target, the source IP
    and the result. Security events that a client can repeat at will are written
    once per minute per actor, action and target, with a repeat count.

    Rejections in the TLS handshake (no certificate, a certificate from another CA,
    an expired one) never reach the application, so they are not in this log.
    """
    if since is not None:
        since = query_time_in_utc(since, "since")
    after = decode_cursor(cursor) if cursor else None
    with registry_errors():
        documents = await runtime.store.list_audit(limit=limit + 1, since=since, after_id=after)
    page = documents[:limit]
    next_cursor = encode_cursor(page[-1]["_id"]) if len(documents) > limit else None
    return AuditPage(entries=[audit_entry_out(doc) for doc in page], next_cursor=next_cursor)
