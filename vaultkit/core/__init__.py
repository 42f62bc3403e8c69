"""Hazardous materials: raw keys, nonces and byte layouts.

Warning:
    This layer does exactly what it is told. It does not pick keys, check key budgets, route by
    key id or enforce domains; :class:`vaultkit.Vault` does. Use it only to build or review a
    vaultkit component (a key provider, a re-keying tool, an independent decoder), and never hand
    it secrets you could have handed to the vault instead. Nothing here is re-exported at the top
    of the package, in the same spirit as pyca/cryptography's ``hazmat`` split.
"""

from vaultkit.core import aead, envelope, wire

__all__ = ["aead", "envelope", "wire"]
