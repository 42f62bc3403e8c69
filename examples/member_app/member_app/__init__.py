"""A member app for a health insurer: FastAPI, async SQLAlchemy on PostgreSQL, and vaultkit.

``models`` declares the encrypted tables, ``keys`` opens the vault, ``auth`` is the stand-in for
authentication, ``main`` is the application. README.md (one directory up) says how to run it.
"""
