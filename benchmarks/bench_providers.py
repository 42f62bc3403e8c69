"""Key providers: DEK wrap and unwrap latency per provider, and a cold read of 100,000 rows.

Run: ``python benchmarks/bench_providers.py [--rows N]`` (a minute or two). It starts its own
SoftHSM2 token, OpenBao dev server and moto KMS emulator, as the tests do (skipping any that is not
installed), and prints Markdown tables:

* wrap and unwrap latency (median and 95th percentile of 200 calls) for the in-memory, local,
  PKCS#11 (SoftHSM2), transit (OpenBao) and AWS KMS (moto emulator) providers;
* a cold read of N rows (default 100,000) whose values are spread over 100 DEKs, through an
  ``Encrypted`` column on SQLite: the provider calls are counted (exactly one unwrap per DEK).

The emulator is not AWS: its latency says nothing about KMS's; the count of calls is what carries.
"""

from __future__ import annotations

import argparse
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import vaultkit.sqla
from vaultkit import Principal, Vault
from vaultkit.keys import LocalKeyProvider
from vaultkit.sqla import Encrypted
from vaultkit.store import MemoryKeyStore
from vaultkit.testing import CountingKeyProvider, InMemoryKeyProvider

CONTEXT = b"bench-context"
COACH = Principal("bench", grants={"medical"})


@contextmanager
def providers(folder: Path) -> Iterator[dict[str, Any]]:
    """Every provider that can run here, with the servers it needs."""
    from tests.providers import conftest as servers

    found: dict[str, Any] = {
        "in-memory": InMemoryKeyProvider(),
        "local (keyring file)": LocalKeyProvider(
            folder / "keyring.json", master_key=os.urandom(32)
        ),
    }
    stop: list[Callable[[], None]] = []
    try:
        util = "/usr/bin/softhsm2-util"
        if Path(util).exists() and Path(servers.SOFTHSM_LIBRARY).exists():
            from vaultkit.keys.pkcs11 import PKCS11KeyProvider

            (folder / "tokens").mkdir()
            conf = folder / "softhsm2.conf"
            conf.write_text(
                f"directories.tokendir = {folder / 'tokens'}\nobjectstore.backend = file\n"
            )
            os.environ["SOFTHSM2_CONF"] = str(conf)
            pin = secrets.token_hex(8)
            subprocess.run(
                [util, "--init-token", "--free", "--label", "bench", "--so-pin", pin, "--pin", pin],
                check=True,
                capture_output=True,
            )
            found["PKCS#11 (SoftHSM2)"] = PKCS11KeyProvider(
                servers.SOFTHSM_LIBRARY, token_label="bench", pin=pin
            )
        if servers.bao_binary():
            from vaultkit.keys.transit import VaultTransitKeyProvider

            bao = servers.start_openbao(folder / "bao.log")
            stop.append(bao.stop)
            found["transit (OpenBao dev, loopback)"] = VaultTransitKeyProvider(
                bao.url, token=bao.token, create_keys=True
            )
        from vaultkit.keys.aws import AWSKMSKeyProvider

        os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY=secrets.token_hex(20))
        moto = servers.start_moto(folder / "moto.log")
        stop.append(moto.stop)
        found["AWS KMS (moto emulator, loopback)"] = AWSKMSKeyProvider(
            region="eu-west-1", endpoint_url=moto.url, create_keys=True
        )
        yield found
    finally:
        for action in stop:
            action()


def latency(provider: Any, calls: int) -> tuple[list[float], list[float]]:
    ref = provider.primary("medical")
    wraps: list[float] = []
    unwraps: list[float] = []
    for _ in range(calls):
        dek = os.urandom(32)
        start = time.perf_counter()
        wrapped = provider.wrap(ref, dek, context=CONTEXT)
        wraps.append(time.perf_counter() - start)
        start = time.perf_counter()
        assert provider.unwrap(ref, wrapped, context=CONTEXT) == dek
        unwraps.append(time.perf_counter() - start)
    return wraps, unwraps


def p(values: list[float], q: float) -> str:
    ordered = sorted(values)
    value = ordered[min(len(ordered) - 1, int(q * len(ordered)))]
    return f"{value * 1e6:,.0f} µs" if value < 1e-3 else f"{value * 1e3:.2f} ms"


def cold_read(provider: Any, rows: int, folder: Path) -> tuple[int, float, float]:
    """Write ``rows`` values over 100 DEKs; read them all with a fresh vault; count unwraps."""
    store = MemoryKeyStore()
    table = sa.Table(
        "cold",
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("note", Encrypted(sa.Text, domain="medical")),
    )
    engine = sa.create_engine(f"sqlite:///{folder / f'cold-{secrets.token_hex(4)}.db'}")
    table.create(engine)
    per_dek = rows // 100
    with Vault(
        provider=provider, store=store, domains=["medical"], dek_max_encryptions=per_dek
    ) as writer:
        vaultkit.sqla.configure(writer)
        with writer.acting_as(COACH, purpose="load"), engine.begin() as conn:
            conn.execute(table.insert(), [{"id": i, "note": f"note {i}"} for i in range(rows)])
    counting = CountingKeyProvider(provider)
    with Vault(provider=counting, store=store, domains=["medical"]) as reader:
        vaultkit.sqla.configure(reader)
        before = counting.calls["unwrap"]
        start = time.perf_counter()
        with reader.acting_as(COACH, purpose="read"), engine.connect() as conn:
            notes = conn.execute(sa.select(table.c.note)).scalars().all()
        elapsed = time.perf_counter() - start
        unwraps = counting.calls["unwrap"] - before
    vaultkit.sqla.configure(None)
    assert len(notes) == rows and notes[-1] == f"note {rows - 1}"
    assert len({r.dek_id for r in store.records()}) == 100
    engine.dispose()
    return unwraps, elapsed, rows / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp())
    with providers(folder) as found:
        print("| provider | wrap median | wrap p95 | unwrap median | unwrap p95 |")
        print("|---|---:|---:|---:|---:|")
        for name, provider in found.items():
            wraps, unwraps = latency(provider, args.calls)
            print(
                f"| {name} | {p(wraps, 0.5)} | {p(wraps, 0.95)} | {p(unwraps, 0.5)} | "
                f"{p(unwraps, 0.95)} |"
            )
        print()
        print(f"Cold read of {args.rows:,} rows over 100 DEKs (SQLite, `Encrypted` column):")
        print()
        print("| provider | provider unwraps | read time | rows/s |")
        print("|---|---:|---:|---:|")
        for name, provider in found.items():
            unwraps, elapsed, rate = cold_read(provider, args.rows, folder)
            print(f"| {name} | {unwraps} | {elapsed:.2f} s | {rate:,.0f} |")


if __name__ == "__main__":
    main()
