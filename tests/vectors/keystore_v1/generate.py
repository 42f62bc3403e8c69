import json
from pathlib import Path

from vaultkit import Vault
from vaultkit.keys import LocalKeyProvider
from vaultkit.store import SCHEMA_VERSION

assert SCHEMA_VERSION == 1
MASTER = bytes(range(32))
out = Path("/tmp/v1gen")
provider = LocalKeyProvider(out / "keyring.json", master_key=MASTER)
values = []
with Vault(
    provider=provider,
    store=f"sqlite:///{out / 'keys_v1.db'}",
    domains=["identity", "medical"],
    dek_max_encryptions=3,
) as vault:
    for i in range(8):
        dom = "identity" if i % 2 else "medical"
        values.append(
            {
                "domain": dom,
                "plain": f"value {i}",
                "blob": vault.encrypt(
                    f"value {i}", domain=dom, context={"table": "t", "column": "c", "row": i}
                ).hex(),
                "row": i,
            }
        )
    idx = vault.blind_index_key("identity", table="t", column="c")
    values.append({"index": idx.digest(b"jan").hex()})
(out / "values.json").write_text(json.dumps(values, indent=1))
