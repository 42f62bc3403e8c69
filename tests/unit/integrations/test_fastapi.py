"""FastAPI: the vaultkit scope of a request from a dependency, and sealed values in responses.

Everything runs through a real FastAPI application over ASGI (httpx's ``ASGITransport``), with
sync and async endpoints and dependencies, a real SQLite database and a restricted, audited
medical domain.
"""

# No ``from __future__ import annotations``: FastAPI reads the routes' annotations at run time,
# and those of the nested routes name local dependencies.

import asyncio
import json
import random
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import anyio
import httpx
import pydantic
import pytest
import sqlalchemy as sa
from fastapi import Depends, FastAPI, Header, HTTPException
from pydantic import BaseModel, ConfigDict
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import vaultkit.sqla
from vaultkit import KeyDomain, Principal, SealedValue, Vault, acting_as, current_scope
from vaultkit.errors import ConfigurationError
from vaultkit.integrations.fastapi import MaybeSealed, vaultkit_scope
from vaultkit.keys import LocalKeyProvider
from vaultkit.sqla import Encrypted

MASTER = bytes(range(32))
DOMAINS = [KeyDomain("identity"), KeyDomain("medical", restricted=True, audited=True)]


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


def principal_named(name: str) -> Principal:
    """Coaches hold the medical grant; claims handlers do not."""
    return Principal(name, grants={"medical"} if name.startswith("coach") else ())


def sync_principal(x_user: Annotated[str, Header()]) -> Principal:
    return principal_named(x_user)


async def async_principal(x_user: Annotated[str, Header()]) -> Principal:
    await anyio.sleep(0)
    return principal_named(x_user)


class World:
    """A vault over an SQLite file with the key store and audit log, and some chats in it."""

    def __init__(self, tmp_path: Path) -> None:
        self.url = f"sqlite:///{tmp_path / 'app.db'}"
        self.vault = Vault(
            provider=LocalKeyProvider(tmp_path / "keyring.json", master_key=MASTER),
            store=self.url,
            domains=DOMAINS,
        )
        vaultkit.sqla.configure(self.vault)
        self.engine = sa.create_engine(self.url)
        Base.metadata.create_all(self.engine)
        self.chats: dict[uuid.UUID, str] = {}
        with Session(self.engine) as session:
            for i in range(24):
                # The writer holds no medical grant: after the flush it could not read the text
                # back (the attribute holds the ciphertext), so it keeps its own copy.
                text = f"chat {i}: blood sugar {100 + i} mg/dL"
                chat = Chat(text=text)
                session.add(chat)
                session.flush()
                self.chats[chat.id] = text
            session.commit()

    def read(self, chat_id: uuid.UUID) -> Any:
        with Session(self.engine) as session:
            chat = session.get(Chat, chat_id)
            if chat is None:
                raise HTTPException(404)
            return chat.text

    def audit_events(self) -> list[tuple[str, str, str, str]]:
        """(action, principal, purpose, row keys) of every read or denied read in the audit log."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "select action, principal, purpose, row_keys from vaultkit_audit_events "
                    "where action != 'write'"
                )
            ).all()
        return [(r[0], r[1], r[2], r[3]) for r in rows]

    def close(self) -> None:
        vaultkit.sqla.configure(None)
        self.engine.dispose()
        self.vault.close()


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path)
    yield w
    w.close()


def app_for(world: World, resolver: Any) -> FastAPI:
    """An app whose chat routes set the scope through ``vaultkit_scope`` (sync and async routes)."""
    coaching = vaultkit_scope(resolver, purpose="coaching", vault=world.vault)
    app = FastAPI()

    def seen() -> dict[str, Any]:
        scope = current_scope()
        return {"who": scope.principal.name, "purpose": scope.purpose}

    @app.get("/sync/{chat_id}", dependencies=[Depends(coaching)])
    def read_sync(chat_id: uuid.UUID) -> dict[str, Any]:
        before = seen()
        time.sleep(random.uniform(0, 0.005))
        text = world.read(chat_id)
        return {**before, "after": seen()["who"], "text": _plain(text)}

    @app.get("/async/{chat_id}", dependencies=[Depends(coaching)])
    async def read_async(chat_id: uuid.UUID) -> dict[str, Any]:
        before = seen()
        await anyio.sleep(random.uniform(0, 0.005))
        text = world.read(chat_id)
        await anyio.sleep(0)
        return {**before, "after": seen()["who"], "text": _plain(text)}

    @app.get("/model/{chat_id}", response_model=ChatOut, dependencies=[Depends(coaching)])
    def read_model(chat_id: uuid.UUID) -> Any:
        with Session(world.engine) as session:
            chat = session.get(Chat, chat_id)
            if chat is None:
                raise HTTPException(404)
            return ChatOut.model_validate(chat)

    def db_session(principal: Annotated[Principal, Depends(coaching)]) -> Iterator[Session]:
        # A user's own sync yield dependency after the scope: it runs in the thread pool.
        assert current_scope().principal == principal
        with Session(world.engine) as session:
            yield session

    @app.get("/session/{chat_id}", response_model=ChatOut)
    def read_with_session(
        chat_id: uuid.UUID, session: Annotated[Session, Depends(db_session)]
    ) -> Any:
        return session.get(Chat, chat_id)

    def plain_session() -> Iterator[Session]:
        # A sync yield dependency that does not depend on the scope, on a route that lists it.
        with Session(world.engine) as session:
            session.info["who"] = current_scope().principal.name
            yield session

    @app.get("/listed/{chat_id}", dependencies=[Depends(coaching)])
    def read_listed(
        chat_id: uuid.UUID, session: Annotated[Session, Depends(plain_session)]
    ) -> dict[str, Any]:
        chat = session.get(Chat, chat_id)
        return {"who": session.info["who"], "text": _plain(chat.text if chat else None)}

    @app.get("/whoami")
    async def whoami() -> dict[str, Any]:
        return seen()

    return app


def _plain(text: Any) -> Any:
    return sealed_json(text) if isinstance(text, SealedValue) else text


def sealed_json(value: SealedValue) -> dict[str, str]:
    return {"sealed": value.domain}


async def get(app: FastAPI, path: str, user: str | None = None) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return await client.get(path, headers={"X-User": user} if user else {})


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout=60))


class TestScopeFromDependency:
    @pytest.mark.parametrize("resolver", [sync_principal, async_principal], ids=["sync", "async"])
    @pytest.mark.parametrize("route", ["sync", "async"])
    def test_granted_reader_gets_plaintext(self, world: World, resolver: Any, route: str) -> None:
        """A coach resolved by a sync or async dependency reads the chat in a sync or async route."""
        app = app_for(world, resolver)
        chat_id, text = next(iter(world.chats.items()))
        response = run(get(app, f"/{route}/{chat_id}", "coach-1"))
        assert response.status_code == 200, response.text
        assert response.json() == {
            "who": "coach-1",
            "purpose": "coaching",
            "after": "coach-1",
            "text": text,
        }

    def test_reader_without_grant_gets_sealed_value(self, world: World) -> None:
        """A claims handler in the same route gets the sealed value, never the plaintext."""
        app = app_for(world, sync_principal)
        chat_id, text = next(iter(world.chats.items()))
        response = run(get(app, f"/sync/{chat_id}", "claims-1"))
        assert response.status_code == 200
        assert response.json()["text"] == {"sealed": "medical"}
        assert text not in response.text

    def test_sync_yield_dependency_after_the_scope_sees_it(self, world: World) -> None:
        """A user's sync yield dependency (a DB session) depending on the scope runs inside it."""
        app = app_for(world, sync_principal)
        chat_id, text = next(iter(world.chats.items()))
        response = run(get(app, f"/session/{chat_id}", "coach-2"))
        assert response.status_code == 200, response.text
        assert response.json() == {"id": str(chat_id), "text": text}

    def test_route_dependencies_run_before_the_endpoints_own(self, world: World) -> None:
        """A session dependency of the endpoint runs inside the scope listed on the route."""
        app = app_for(world, async_principal)
        chat_id, text = next(iter(world.chats.items()))
        response = run(get(app, f"/listed/{chat_id}", "coach-3"))
        assert response.status_code == 200, response.text
        assert response.json() == {"who": "coach-3", "text": text}

    def test_scope_is_left_when_the_request_ends(self, world: World) -> None:
        """After a request, also one that fails with 404, the caller's context is anonymous again."""
        app = app_for(world, sync_principal)

        async def scenario() -> tuple[int, dict[str, Any], str]:
            failed = await get(app, f"/async/{uuid.uuid4()}", "coach-1")
            after = await get(app, "/whoami")
            return failed.status_code, after.json(), current_scope().principal.name

        status, after, here = run(scenario())
        assert status == 404
        assert after == {"who": "anonymous", "purpose": None}
        assert here == "anonymous"

    def test_resolver_must_return_a_principal(self, world: World) -> None:
        """A resolver returning a name instead of a Principal fails the request, reading nothing."""
        app = app_for(world, lambda: "coach-1")
        chat_id = next(iter(world.chats))
        with pytest.raises(TypeError, match="Principal"):
            run(get(app, f"/sync/{chat_id}", "coach-1"))

    def test_purpose_is_required(self) -> None:
        """A scope dependency without a purpose is refused when it is built."""
        with pytest.raises(TypeError, match="purpose"):
            vaultkit_scope(sync_principal, purpose="")


class TestConcurrentRequests:
    @pytest.mark.parametrize("resolver", [sync_principal, async_principal], ids=["sync", "async"])
    def test_no_request_sees_another_requests_scope(self, world: World, resolver: Any) -> None:
        """48 interleaved requests under 24 principals: each sees its own scope and only its grant."""
        app = app_for(world, resolver)
        chats = list(world.chats.items())
        plan = []
        for i, (chat_id, text) in enumerate(chats):
            user = f"coach-{i}" if i % 2 == 0 else f"claims-{i}"
            for route in ("sync", "async"):
                plan.append((user, route, chat_id, text))
        random.Random(7).shuffle(plan)

        async def burst() -> list[httpx.Response]:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                return await asyncio.gather(
                    *(
                        client.get(f"/{route}/{chat_id}", headers={"X-User": user})
                        for user, route, chat_id, _ in plan
                    )
                )

        responses = run(burst())
        for (user, _route, _chat_id, text), response in zip(plan, responses, strict=True):
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["who"] == body["after"] == user
            if user.startswith("coach"):
                assert body["text"] == text
            else:
                assert body["text"] == {"sealed": "medical"}
                assert "blood sugar" not in response.text
        assert current_scope().principal.name == "anonymous"
        # Each read is in the audit log under the principal that made it, with its row.
        events = world.audit_events()
        readers: dict[str, set[str]] = {}
        for action, principal, purpose, row_keys in events:
            assert purpose == "coaching"
            assert action == ("decrypt" if principal.startswith("coach") else "denied")
            readers.setdefault(principal, set()).update(json.loads(row_keys))
        for user, _route, chat_id, _ in plan:
            assert str(chat_id) in readers[user]


class TestNaiveSyncDependency:
    def test_acting_as_in_a_sync_yield_dependency_is_refused_clearly(self, world: World) -> None:
        """``acting_as`` in a sync ``def`` yield dependency fails with a pointer to vaultkit_scope."""
        app = FastAPI()

        def naive(x_user: Annotated[str, Header()]) -> Iterator[None]:
            with acting_as(principal_named(x_user), purpose="coaching"):
                yield

        seen: list[str] = []

        @app.get("/chats/{chat_id}", dependencies=[Depends(naive)])
        def read(chat_id: uuid.UUID) -> dict[str, Any]:
            seen.append(current_scope().principal.name)
            return {"text": _plain(world.read(chat_id))}

        chat_id = next(iter(world.chats))
        with pytest.raises(ConfigurationError, match="vaultkit_scope"):
            run(get(app, f"/chats/{chat_id}", "coach-1"))
        # The endpoint ran in another copy of the context: it never had the coach's scope.
        assert seen == ["anonymous"]


class TestMaybeSealed:
    def test_response_model_renders_plaintext_for_the_grant(self, world: World) -> None:
        """A response model field ``MaybeSealed[str]`` carries the plaintext to a coach."""
        app = app_for(world, sync_principal)
        chat_id, text = next(iter(world.chats.items()))
        response = run(get(app, f"/model/{chat_id}", "coach-1"))
        assert response.status_code == 200
        assert response.json() == {"id": str(chat_id), "text": text}

    def test_response_model_renders_placeholder_without_the_grant(self, world: World) -> None:
        """Without the grant the field is ``{"sealed": "medical"}``: no 500, no plaintext."""
        app = app_for(world, sync_principal)
        chat_id, text = next(iter(world.chats.items()))
        response = run(get(app, f"/model/{chat_id}", "claims-1"))
        assert response.status_code == 200, response.text
        assert response.json() == {"id": str(chat_id), "text": {"sealed": "medical"}}
        assert text not in response.text

    def test_openapi_schema_documents_the_placeholder(self, world: World) -> None:
        """The OpenAPI schema gives the field as the inner type or the sealed placeholder."""
        app = app_for(world, sync_principal)
        schema = app.openapi()["components"]["schemas"]["ChatOut"]["properties"]["text"]
        inner, placeholder = schema["anyOf"]
        assert inner == {"type": "string"}
        assert placeholder["required"] == ["sealed"]
        assert placeholder["properties"] == {"sealed": {"type": "string"}}

    def test_plaintext_is_still_validated_as_the_inner_type(self) -> None:
        """``MaybeSealed[int]`` refuses a string, and renders a sealed value as its placeholder."""

        class Out(BaseModel):
            value: MaybeSealed[int]

        with pytest.raises(pydantic.ValidationError):
            Out(value="seven")  # type: ignore[arg-type]
        assert Out(value=7).model_dump_json() == '{"value":7}'
        sealed = Out(value=SealedValue("medical"))
        assert sealed.model_dump() == {"value": {"sealed": "medical"}}
        assert sealed.model_dump_json() == '{"value":{"sealed":"medical"}}'

    def test_optional_field_keeps_null_apart_from_sealed(self) -> None:
        """``MaybeSealed[str | None]``: a stored NULL is null, a sealed value is the placeholder."""

        class Out(BaseModel):
            value: MaybeSealed[str | None]

        assert Out(value=None).model_dump_json() == '{"value":null}'
        assert Out(value=SealedValue("medical")).model_dump_json() == (
            '{"value":{"sealed":"medical"}}'
        )


# Starlette's TestClient warns when it runs on httpx rather than its successor httpx2; the tests
# group installs httpx, which the ASGI tests above use directly.
@pytest.mark.filterwarnings("ignore::starlette.exceptions.StarletteDeprecationWarning")
class TestWithTestClient:
    def test_sync_client_requests_each_get_their_own_scope(self, world: World) -> None:
        """Through FastAPI's TestClient (the app in a portal thread), scopes follow the requests."""
        from fastapi.testclient import TestClient

        app = app_for(world, sync_principal)
        chat_id, text = next(iter(world.chats.items()))
        with TestClient(app) as client:
            coach = client.get(f"/sync/{chat_id}", headers={"X-User": "coach-5"})
            claims = client.get(f"/model/{chat_id}", headers={"X-User": "claims-5"})
            nobody = client.get("/whoami")
        assert coach.json()["text"] == text and coach.json()["who"] == "coach-5"
        assert claims.json() == {"id": str(chat_id), "text": {"sealed": "medical"}}
        assert nobody.json() == {"who": "anonymous", "purpose": None}

    def test_naive_sync_dependency_fails_clearly(self, world: World) -> None:
        """The naive sync yield dependency fails through TestClient too, naming vaultkit_scope."""
        from fastapi.testclient import TestClient

        app = FastAPI()

        def naive(x_user: Annotated[str, Header()]) -> Iterator[None]:
            with acting_as(principal_named(x_user), purpose="coaching"):
                yield

        @app.get("/whoami", dependencies=[Depends(naive)])
        def whoami() -> dict[str, str]:
            return {"who": current_scope().principal.name}

        with (
            TestClient(app) as client,
            pytest.raises(ConfigurationError, match="vaultkit_scope"),
        ):
            client.get("/whoami", headers={"X-User": "coach-1"})
