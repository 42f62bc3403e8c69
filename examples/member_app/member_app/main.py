"""The member app: FastAPI on async SQLAlchemy (asyncpg), with vaultkit.

Run it with ``uvicorn member_app.main:create_app --factory`` (README.md says how to set it up).

Each route runs in a vaultkit scope that ``vaultkit_scope`` sets from the request: the caller's
principal (``auth.current_principal``) and a purpose that the audit log records. The scope is
set before the session dependency and the endpoint run, covers the response serializer (where the
chat's text is decrypted, or sealed), and ends once the response is sent, when the request's audit
events are written.
"""

# No ``from __future__ import annotations``: FastAPI reads the annotations at run time.

import asyncio
import contextlib
import datetime as dt
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Annotated

import sqlalchemy as sa
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

import vaultkit.sqla
from vaultkit import Principal, Vault, acting_as
from vaultkit.integrations.fastapi import MaybeSealed, vaultkit_scope
from vaultkit.store import DekState

from .auth import Staff, current_principal, require_role
from .models import ChatMessage, Claim, Member
from .vault import database_url, open_vault

# -- request and response bodies --------------------------------------------------------------


class MemberIn(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    email: str = Field(min_length=3, max_length=320, pattern=r"^[^@\s]+@[^@\s]+$")


class EmailLookup(BaseModel):
    """An e-mail address to look up: in the body, never in the URL (access logs keep URLs)."""

    email: str = Field(min_length=3, max_length=320)


class MemberOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: uuid.UUID
    name: str
    email: str


class ClaimIn(BaseModel):
    amount: Decimal = Field(gt=0, max_digits=10, decimal_places=2)
    description: str = Field(min_length=1, max_length=2000)


class ClaimOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: uuid.UUID
    member_id: uuid.UUID
    filed_at: dt.datetime
    amount: Decimal
    description: str


class MessageIn(BaseModel):
    text: str = Field(min_length=1, max_length=4000)


class MessageOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: uuid.UUID
    member_id: uuid.UUID
    author: str
    sent_at: dt.datetime
    # The plaintext for a reader with the medical grant; {"sealed": "medical"} for the others
    # (a plain ``str`` field would refuse the sealed value, and FastAPI would answer 500).
    text: MaybeSealed[str]


# -- dependencies ---------------------------------------------------------------------------------


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """A session for the request, closed after the response is sent (inside the request's scope)."""
    async with request.app.state.sessions() as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(get_session)]
ClaimsHandler = Annotated[Staff, Depends(require_role("claims-handler"))]
Coach = Annotated[Staff, Depends(require_role("coach"))]
AnyStaff = Annotated[Staff, Depends(require_role("claims-handler", "coach"))]


async def member_or_404(session: AsyncSession, member_id: uuid.UUID) -> Member:
    member = await session.get(Member, member_id)
    if member is None:
        raise HTTPException(404, "no such member")
    return member


# -- routes ---------------------------------------------------------------------------------------

members = APIRouter(prefix="/members", tags=["members"])


@members.post("", response_model=MemberOut, status_code=201)
async def create_member(body: MemberIn, session: SessionDep, _: ClaimsHandler) -> Member:
    member = Member(name=body.name, email=body.email)
    session.add(member)
    await session.commit()
    return member


@members.post("/lookup", response_model=list[MemberOut])
async def lookup_member(body: EmailLookup, session: SessionDep, _: AnyStaff) -> list[Member]:
    """Members by e-mail address: one indexed lookup of the blind index, nothing decrypted in SQL."""
    found = await session.scalars(sa.select(Member).where(Member.email_index == body.email))
    return list(found)


@members.get("/{member_id}", response_model=MemberOut)
async def read_member(member_id: uuid.UUID, session: SessionDep, _: AnyStaff) -> Member:
    return await member_or_404(session, member_id)


@members.post("/{member_id}/claims", response_model=ClaimOut, status_code=201)
async def file_claim(
    member_id: uuid.UUID, body: ClaimIn, session: SessionDep, _: ClaimsHandler
) -> Claim:
    await member_or_404(session, member_id)
    claim = Claim(member_id=member_id, amount=body.amount, description=body.description)
    session.add(claim)
    await session.commit()
    return claim


@members.get("/{member_id}/claims", response_model=list[ClaimOut])
async def list_claims(member_id: uuid.UUID, session: SessionDep, _: ClaimsHandler) -> list[Claim]:
    await member_or_404(session, member_id)
    query = sa.select(Claim).where(Claim.member_id == member_id).order_by(Claim.filed_at)
    return list(await session.scalars(query))


chat = APIRouter(prefix="/members/{member_id}/chat", tags=["coaching chat"])


@chat.post("", response_model=MessageOut, status_code=201)
async def post_message(
    member_id: uuid.UUID, body: MessageIn, session: SessionDep, coach: Coach
) -> ChatMessage:
    await member_or_404(session, member_id)
    message = ChatMessage(member_id=member_id, author=coach.user, text=body.text)
    session.add(message)
    await session.commit()
    return message


@chat.get("", response_model=list[MessageOut])
async def read_chat(member_id: uuid.UUID, session: SessionDep, _: AnyStaff) -> list[ChatMessage]:
    """The chat, for coaches and claims handlers alike: the app lets both in, and the key domain
    decides what each one reads. A coach gets the text (each read is audited); a claims handler
    gets ``{"sealed": "medical"}`` where the text would be (each refusal is audited too)."""
    await member_or_404(session, member_id)
    query = (
        sa.select(ChatMessage)
        .where(ChatMessage.member_id == member_id)
        .order_by(ChatMessage.sent_at, ChatMessage.id)
    )
    # In an AsyncSession the statement opens the medical values for this request's scope (the
    # audit events written in worker threads, off the event loop); the response serializer then
    # reads them from the scope's cache (docs/sqlalchemy.md, "asyncio").
    return list(await session.scalars(query))


# -- the application ------------------------------------------------------------------------------

#: Who preloads the DEKs at start-up. It holds the medical grant because preloading skips the
#: DEKs of restricted domains the current principal may not read; it decrypts no value.
START_UP = Principal("member-app-start-up", grants={"medical"})


def active_dek_ids(vault: Vault) -> list[bytes]:
    return [record.dek_id for record in vault.store.records(state=DekState.ACTIVE)]


def create_app(url: str | None = None) -> FastAPI:
    """Build the app: open the vault (blocking, so here, before the server takes requests), the
    async engine, and the routes with their vaultkit scopes.

    Args:
        url: the database URL; by default ``MEMBER_APP_DATABASE_URL``.
    """
    url = url or database_url()
    vault = open_vault(url)
    vaultkit.sqla.configure(vault)
    engine = create_async_engine(url)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Unwrap the DEKs now, in a worker thread, so that no request waits for the provider.
        with acting_as(START_UP, purpose="start-up"):
            await vault.apreload(await asyncio.to_thread(active_dek_ids, vault))
        yield
        await vault.aflush_audit()  # whatever the last requests left in open batches
        await engine.dispose()
        await asyncio.to_thread(vault.close)
        vaultkit.sqla.configure(None)

    app = FastAPI(title="vaultkit member app", lifespan=lifespan)
    app.state.sessions = async_sessionmaker(engine, expire_on_commit=False)
    # One purpose per part of the app, recorded with every audited access. With vault=, each
    # request's open audit batches are written when its scope ends (in the thread pool).
    service = vaultkit_scope(current_principal, purpose="member-service", vault=vault)
    coaching = vaultkit_scope(current_principal, purpose="coaching-chat", vault=vault)
    app.include_router(members, dependencies=[Depends(service)])
    app.include_router(chat, dependencies=[Depends(coaching)])
    return app
