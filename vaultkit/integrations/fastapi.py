"""FastAPI and Pydantic: the vaultkit scope of a request, and values that may be sealed.

Install with the extra: ``pip install vaultkit[fastapi]``.

**The scope of a request.** ``vaultkit.acting_as`` keeps the scope in a context variable. FastAPI
runs a sync ``def`` dependency with ``yield`` in a thread pool, entering and leaving it in two
different copies of the request's context: the scope it sets is not the one the endpoint sees,
and leaving it fails. :func:`vaultkit_scope` builds an ``async`` dependency instead, which FastAPI
runs in the request's own task: the scope is set there, seen by the endpoint and by every
dependency and serializer after it (sync ones run in the thread pool with a copy of that context),
and left in the same context once the response is sent::

    from fastapi import Depends, FastAPI, Header
    from vaultkit import Principal
    from vaultkit.integrations.fastapi import MaybeSealed, vaultkit_scope

    def current_principal(x_user: str = Header()) -> Principal:   # sync or async, any dependency
        return principals[x_user]

    coaching = vaultkit_scope(current_principal, purpose="coaching", vault=vault)
    app = FastAPI()

    class ChatOut(BaseModel):
        model_config = ConfigDict(from_attributes=True)
        id: uuid.UUID
        text: MaybeSealed[str]

    @app.get("/chats/{chat_id}", response_model=ChatOut, dependencies=[Depends(coaching)])
    def read_chat(chat_id: uuid.UUID): ...

Each request runs in its own scope; concurrent requests under different principals never see one
another's (each ASGI request runs in its own task, hence its own context).

**Sealed values in responses.** A reader without the grant gets a :class:`vaultkit.SealedValue`
where the plaintext would be. A response model field of type ``str`` refuses it (FastAPI answers
500); a field of type :data:`MaybeSealed` ``[str]`` renders it as the placeholder
``{"sealed": "<domain>"}`` (the domain only: never plaintext, never ciphertext, and never a
``null`` that a client could take for "no value"), and plaintext as usual. The JSON schema of the
field is ``anyOf`` the inner type and that placeholder object.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import types
import typing
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any, TypeVar

import anyio
from fastapi import Depends
from fastapi.concurrency import run_in_threadpool
from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import core_schema

from vaultkit import Principal, SealedValue, Vault, acting_as

__all__ = ["SEALED_PLACEHOLDER_KEY", "MaybeSealed", "sealed_placeholder", "vaultkit_scope"]

_T = TypeVar("_T")

#: The one key of the JSON object a sealed value renders as: ``{"sealed": "medical"}``.
SEALED_PLACEHOLDER_KEY = "sealed"


def vaultkit_scope(
    resolve_principal: Callable[..., Principal] | Callable[..., Awaitable[Principal]],
    *,
    purpose: str,
    vault: Vault | None = None,
) -> Callable[..., AsyncIterator[Principal]]:
    """Return a FastAPI dependency that acts as the request's principal for ``purpose``.

    Args:
        resolve_principal: a FastAPI dependency (sync or async, with dependencies of its own such
            as a header or a token) that returns the request's :class:`~vaultkit.Principal`.
        purpose: the purpose recorded in the audit log for reads in this scope.
        vault: when given, its open audit batches are written when the request's scope ends (in
            the thread pool, off the event loop), as :meth:`vaultkit.Vault.acting_as` does.

    Returns:
        An ``async`` generator dependency yielding the principal. Declare it with
        ``Depends(...)`` on the route, the router or the app, with FastAPI's default dependency
        scope (``"request"``): the scope then lasts until the response is sent, so that the body
        of a streaming response is produced inside it too.

    Raises:
        TypeError: ``purpose`` is empty; at request time, ``resolve_principal`` returned something
            that is not a :class:`~vaultkit.Principal` (FastAPI answers 500).

    .. versionadded:: 0.1.0
    """
    if not isinstance(purpose, str) or not purpose:
        raise TypeError("vaultkit_scope needs a non-empty purpose")
    if not callable(resolve_principal):
        raise TypeError("vaultkit_scope takes the dependency that returns the request's Principal")
    if vault is not None and not isinstance(vault, Vault):
        raise TypeError(f"vault must be a Vault, not {type(vault).__name__}")

    # The default, not ``Annotated``: annotations are strings here (``from __future__``), and
    # FastAPI resolves them in this module's globals, where the closure's resolver is not.
    async def scope_dependency(
        principal: Principal = Depends(resolve_principal),  # noqa: B008 - FastAPI's idiom
    ) -> AsyncIterator[Principal]:
        # An async dependency runs in the request's own task, so the context variable is set
        # and reset in the one context the endpoint and the serializers run in.
        with acting_as(principal, purpose=purpose):
            try:
                yield principal
            finally:
                if vault is not None:
                    # Shielded: a client that disconnects must not leave the batches unwritten.
                    with anyio.CancelScope(shield=True):
                        await run_in_threadpool(vault.flush_audit)

    return scope_dependency


def sealed_placeholder(value: SealedValue) -> dict[str, str]:
    """The JSON form of a sealed value in a response: ``{"sealed": "<domain>"}``."""
    return {SEALED_PLACEHOLDER_KEY: value.domain}


class _MaybeSealedMarker:
    """Pydantic schema hook behind :data:`MaybeSealed`: a sealed value or the inner type."""

    __slots__ = ()

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        inner = _without_sealed(source)
        sealed = core_schema.is_instance_schema(
            SealedValue,
            serialization=core_schema.plain_serializer_function_ser_schema(
                sealed_placeholder,
                return_schema=core_schema.dict_schema(
                    core_schema.str_schema(), core_schema.str_schema()
                ),
                when_used="always",
            ),
        )
        # The sealed branch comes first: an instance check, so no inner validator ever sees it.
        return core_schema.union_schema([sealed, handler.generate_schema(inner)])

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        if schema["type"] != "union":  # not built by this hook: leave it to pydantic
            return handler(schema)
        inner = handler(schema["choices"][1])
        placeholder = {
            "type": "object",
            "title": "Sealed",
            "description": "A value the reader has no grant for: names its key domain only.",
            "properties": {SEALED_PLACEHOLDER_KEY: {"type": "string"}},
            "required": [SEALED_PLACEHOLDER_KEY],
            "additionalProperties": False,
        }
        return {"anyOf": [inner, placeholder]}

    def __repr__(self) -> str:
        return "MaybeSealed"


def _without_sealed(source: Any) -> Any:
    """``str | SealedValue`` -> ``str``: the inner type a plaintext is validated as."""
    if typing.get_origin(source) in (typing.Union, types.UnionType):
        rest = [a for a in typing.get_args(source) if a is not SealedValue]
        if len(rest) == 1:
            return rest[0]
        return typing.Union[tuple(rest)]  # noqa: UP007 - built at run time from a tuple
    return source


#: ``MaybeSealed[str]``: a response field that holds either the plaintext (validated and
#: serialized as ``str``) or, for a reader without the grant, a sealed value rendered as
#: ``{"sealed": "<domain>"}``.
MaybeSealed = Annotated[_T | SealedValue, _MaybeSealedMarker()]
