"""The key check (``key_check_interval``): hot path unchanged, and how soon a second process stops.

Two measurements:

``hot --baseline TREE``
    The per-value ratios of ``vaultkit bench`` (FieldCipher / raw AESGCM, encrypt and decrypt, 16
    and 256 bytes), measured in child processes alternating between this tree and another
    checkout (``TREE``, e.g. the main branch) ``--repeat`` times. Each ratio is against raw
    AES-GCM in the same child, so machine load cancels out; the table gives the median and the
    spread per tree and the ratio of medians (this tree / baseline).
``stop [--store URL]``
    Process B decrypts one value every few milliseconds; process A (this one) destroys its DEK
    and notes the time; B notes the time of its first DecryptionError. Prints the seconds
    between the two, ``--repeat`` times, with the default ``key_check_interval`` (5 s).
    ``--store`` defaults to a SQLite file; pass a PostgreSQL URL for the figure in the docs.

Run: ``python benchmarks/bench_key_check.py hot --baseline ../main`` (about 2 minutes) and
``python benchmarks/bench_key_check.py stop --store postgresql+psycopg://...`` (about 30 s).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()
TREE = HERE.parent.parent
SIZES = (16, 256)
CTX = {"table": "t", "column": "c", "row": 1}


def _ratios(number: int, rounds: int) -> None:
    """Child: print the FieldCipher / raw ratios of this interpreter's vaultkit as JSON."""
    from vaultkit.cli.bench import measure_core

    out = {}
    for r in measure_core(SIZES, number=number, rounds=rounds):
        out[f"{r.size} B encrypt"] = r.field_encrypt / r.raw_encrypt
        out[f"{r.size} B decrypt"] = r.field_decrypt / r.raw_decrypt
    print(json.dumps(out))


def _child(tree: Path, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run(
        [sys.executable, str(HERE), *args], env=env, capture_output=True, text=True, check=True
    )
    return done.stdout


def hot(baseline: Path, repeat: int, number: int, rounds: int) -> None:
    trees = {"baseline": baseline.resolve(), "this tree": TREE}
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
    for i in range(repeat):
        order = list(trees.items()) if i % 2 == 0 else list(trees.items())[::-1]
        for name, tree in order:
            runs[name].append(json.loads(_child(tree, "_ratios", str(number), str(rounds))))
    print(f"<!-- {repeat} alternating runs per tree, {number} calls x {rounds} rounds each -->")
    print(
        "| value | baseline: FieldCipher / raw | this tree: FieldCipher / raw | this / baseline |"
    )
    print("|---|---:|---:|---:|")
    for key in runs["baseline"][0]:
        cells = []
        medians = []
        for name in trees:
            values = [run[key] for run in runs[name]]
            medians.append(statistics.median(values))
            cells.append(f"{medians[-1]:.2f}x ({min(values):.2f}-{max(values):.2f})")
        print(f"| {key} | {cells[0]} | {cells[1]} | {medians[1] / medians[0]:.3f} |")


def _reader(keyring: str, url: str, blob_hex: str, ready: str, done: str) -> None:
    """Child: decrypt one value until it fails; write the wall time of the first failure."""
    from vaultkit import Vault
    from vaultkit.errors import DecryptionError
    from vaultkit.keys import LocalKeyProvider

    blob = bytes.fromhex(blob_hex)
    with Vault(provider=LocalKeyProvider(keyring), store=url, domains=["medical"]) as vault:
        vault.decrypt(blob, context=CTX)
        Path(ready).write_text("")
        give_up = time.monotonic() + 60
        while time.monotonic() < give_up:
            try:
                vault.decrypt(blob, context=CTX)
            except DecryptionError:
                Path(done).write_text(repr(time.time()))
                return
            time.sleep(0.005)
    raise SystemExit("still decrypting after 60 s")


def stop(store: str | None, repeat: int) -> None:
    from vaultkit import Vault
    from vaultkit.keys import LocalKeyProvider

    master = os.urandom(32)
    env = {**os.environ, "VAULTKIT_MASTER_KEY": base64.b64encode(master).decode()}
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        keyring = Path(tmp, "keyring.json")
        url = store or f"sqlite:///{tmp}/keys.db"
        with Vault(
            provider=LocalKeyProvider(keyring, master_key=master), store=url, domains=["medical"]
        ) as a:
            for i in range(repeat):
                blob = a.encrypt("secret", domain="medical", context=CTX)
                a.retire_dek(blob[4:20])  # the next round's value takes a fresh DEK
                ready, done = Path(tmp, f"ready-{i}"), Path(tmp, f"done-{i}")
                args = ["_reader", str(keyring), url, blob.hex(), str(ready), str(done)]
                proc = subprocess.Popen([sys.executable, str(HERE), *args], env=env)
                while not ready.exists():
                    if proc.poll() is not None:
                        raise SystemExit("the reader failed to start")
                    time.sleep(0.01)
                time.sleep(i % 3)  # destroy at different points of B's check interval
                a.destroy_dek(blob[4:20], references=0)
                destroyed = time.time()
                if proc.wait(timeout=120) != 0:
                    raise SystemExit("the reader kept decrypting")
                times.append(float(done.read_text()) - destroyed)
    where = "SQLite" if store is None else store.split(":", 1)[0]
    print(f"key store: {where}; key_check_interval: 5 s (default); {repeat} runs")
    print("seconds until process B stopped decrypting after A destroyed the DEK:")
    print(" ".join(f"{t:.2f}" for t in times))
    print(
        f"median {statistics.median(times):.2f} s, min {min(times):.2f} s, max {max(times):.2f} s"
    )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_ratios":
        _ratios(int(sys.argv[2]), int(sys.argv[3]))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "_reader":
        _reader(*sys.argv[2:7])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    hot_args = commands.add_parser("hot", help="hot-path ratios, this tree against a baseline")
    hot_args.add_argument("--baseline", type=Path, required=True, help="another checkout")
    hot_args.add_argument("--repeat", type=int, default=5)
    hot_args.add_argument("--number", type=int, default=20000, help="calls per round")
    hot_args.add_argument("--rounds", type=int, default=7, help="rounds; the best is kept")
    stop_args = commands.add_parser("stop", help="time until a second process stops decrypting")
    stop_args.add_argument("--store", help="key-store URL (default: a SQLite file)")
    stop_args.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    if args.command == "hot":
        hot(args.baseline, args.repeat, args.number, args.rounds)
    else:
        stop(args.store, args.repeat)


if __name__ == "__main__":
    main()
