"""A second process that erases one member: its keys in the key store, its blind-index cells.

Usage: python _erase_worker.py KEYRING STORE_URL APP_URL SUBJECT
The master key comes from VAULTKIT_MASTER_KEY. Prints the cells callback's counts as JSON.
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import sqlalchemy as sa

import vaultkit.sqla
from tests.integration._subject_app import Base, destroy_subject_keys, open_vault


def run() -> None:
    keyring, store, app, subject = sys.argv[1:5]
    engine = sa.create_engine(app)
    with open_vault(Path(keyring), store) as vault:
        vaultkit.sqla.configure(vault)
        cells = vaultkit.sqla.erasure_cells(Base.metadata, engine, int(subject))
        destroyed = destroy_subject_keys(vault, int(subject))
        print(json.dumps({"destroyed": destroyed, "rows": cells()}))
        vaultkit.sqla.configure(None)
    engine.dispose()


if __name__ == "__main__":
    run()
