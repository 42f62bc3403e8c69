"""A FastAPI route whose principal comes from a dependency, with a medical field that may be sealed.

``vaultkit_scope(resolve_principal, purpose=...)`` is an async dependency: FastAPI runs it in the
request's own task, so the scope it sets is the one the endpoint (sync or async), the other
dependencies and the response serializer see, and it ends with the request. ``MaybeSealed[str]``
renders the plaintext for a coach and ``{"sealed": "medical"}`` for a claims handler: no 500, no
plaintext. ``main()`` serves the app in-process (httpx's ASGI transport), 20 requests at once.

Run it: ``python examples/fastapi_sealed.py`` (needs ``pip install vaultkit[fastapi] httpx``).
"""

# No ``from __future__ import annotations``: FastAPI reads the annotations at run time.

import asyncio
import tempfile
import uuid
from pathlib import Path
from typing import Annotated, Any

import httpx
import sqlalchemy as sa
from fastapi import Depends, FastAPI, Header, HTTPException
from pydantic import BaseModel, ConfigDict
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import vaultkit.sqla
from vaultkit import KeyDomain, Principal, Vault
from vaultkit.integrations.fastapi import MaybeSealed, vaultkit_scope
from vaultkit.keys import LocalKeyProvider, generate_master_key
from vaultkit.keys.local import decode_master_key
from vaultkit.sqla import Encrypted


class Base(DeclarativeBase):
    pass


class Chat(Base):
    __tablename__ = "chats"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    text: Mapped[str] = mapped_column(Encrypted(sa.Text, domain="medical", row_key="id"))


class ChatOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: uuid.UUID
    text: MaybeSealed[str]


PRINCIPALS = {
    "coach-17": Principal("coach-17", grants={"medical"}),
    "claims-3": Principal("claims-3"),
}


def current_principal(x_user: Annotated[str, Header()]) -> Principal:
    """Stands in for the application's authentication (a token, a session cookie)."""
    try:
        return PRINCIPALS[x_user]
    except KeyError:
        raise HTTPException(401) from None


def make_app(engine: sa.Engine, vault: Vault) -> FastAPI:
    coaching = vaultkit_scope(current_principal, purpose="coaching-chat", vault=vault)
    app = FastAPI()

    @app.get("/chats/{chat_id}", response_model=ChatOut, dependencies=[Depends(coaching)])
    def read_chat(chat_id: uuid.UUID) -> Any:
        with Session(engine) as session:
            chat = session.get(Chat, chat_id)
            if chat is None:
                raise HTTPException(404)
            return ChatOut.model_validate(chat)

    return app


async def burst(app: FastAPI, chat_id: uuid.UUID) -> list[httpx.Response]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
        users = ["coach-17", "claims-3"] * 10
        return await asyncio.gather(
            *(client.get(f"/chats/{chat_id}", headers={"X-User": u}) for u in users)
        )


def main() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="vaultkit-fastapi-"))
    url = f"sqlite:///{workdir / 'app.db'}"
    vault = Vault(
        provider=LocalKeyProvider(
            workdir / "keyring.json",
            master_key=decode_master_key(generate_master_key(), source="example key"),
        ),
        store=url,
        domains=[KeyDomain("medical", restricted=True, audited=True)],
    )
    vaultkit.sqla.configure(vault)
    engine = sa.create_engine(url)
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        chat = Chat(text="my blood sugar was 180 this morning")
        session.add(chat)
        session.commit()
        chat_id = chat.id

    responses = asyncio.run(burst(make_app(engine, vault), chat_id))
    for response in responses[:2]:
        print(response.request.headers["X-User"], response.status_code, response.json()["text"])
    assert all(r.status_code == 200 for r in responses)
    assert all(
        r.json()["text"]
        == ({"sealed": "medical"} if i % 2 else "my blood sugar was 180 this morning")
        for i, r in enumerate(responses)
    )
    vaultkit.sqla.configure(None)
    engine.dispose()
    vault.close()


if __name__ == "__main__":
    main()
