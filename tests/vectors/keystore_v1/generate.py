"""Make the layout version 1 key store of this directory (run once, with vaultkit 0.2 on the path:
``PYTHONPATH=<a 0.2 checkout> python generate.py``). Kept to show how the files were made."""

import json
from pathlib import Path

from vaultkit import Vault
from vaultkit.keys import LocalKeyProvider
from vaultkit.store import SCHEMA_VERSION

assert SCHEMA_VERSION == 1, "run with vaultkit 0.2 (key-store layout version 1)"
MASTER = bytes(range(32))
out = Path(__file__).parent
provider = LocalKeyProvider(out / "keyring.json", master_key=MASTER)
values: list[dict[str, object]] = []
with Vault(
    provider=provider,
    store=f"sqlite:///{out / 'keys_v1.db'}",
    domains=["identity", "medical"],
    dek_max_encryptions=3,
) as vault:
    for i in range(8):
        domain = "identity" if i % 2 else "medical"
        context = {"table": "t", "column": "c", "row": i}
        blob = vault.encrypt(f"value {i}", domain=domain, context=context)
        values.append({"domain": domain, "plain": f"value {i}", "blob": blob.hex(), "row": i})
    index = vault.blind_index_key("identity", table="t", column="c")
    values.append({"index": index.digest(b"jan").hex()})
(out / "values.json").write_text(json.dumps(values, indent=1))
