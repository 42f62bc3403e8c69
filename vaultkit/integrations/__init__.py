"""Optional adapters for application stacks, one module each, imported only where used.

* :mod:`vaultkit.integrations.fastapi`: the vaultkit scope of a request from a FastAPI dependency,
  and a Pydantic type for values that may come back sealed (extra ``vaultkit[fastapi]``).
* :mod:`vaultkit.integrations.sqlmodel`: blind-index and encrypted fields for SQLModel models
  (extra ``vaultkit[sqlmodel]``).
"""
