"""``aim bank``: the demonstration bank as files, against the bank the server's settings name.

    aim bank list                          fingerprints stored, with their counts
    aim bank export DIR [--fingerprint FP]  every fingerprint (or those named) into a new directory
    aim bank import DIR [--fingerprint FP]  back into the bank, every blob checked first
    aim bank reencode --from FP             rebuild FP's demonstrations and sets under the current
                                            model and projector (needs AIM_BANK_KEEP_SOURCES when
                                            they were registered); resumable

With the embedded bank (no AIM_REDIS_URL), stop the server first: one process owns AIM_DATA_DIR.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from bank import DemonstrationBank, RedisConnection, open_redis
from bank.transfer import TransferError, export_bank, import_bank, stored_fingerprints
from server.settings import Settings


async def _run(args: argparse.Namespace, settings: Settings) -> int:
    connection = await open_redis(
        settings.redis_url, settings.data_dir, durable_writes=settings.bank_durable_writes
    )
    try:
        client = connection.client
        stored = await stored_fingerprints(client)
        if args.command == "list":
            for fp in stored:
                root = DemonstrationBank(client, fp)
                for namespace in await root.namespaces():
                    bank = root.in_namespace(namespace)
                    print(f"{fp} {namespace or '-'}: {len(await bank.raw_records())} demonstrations, "
                          f"{len(await bank.list_sets())} sets")  # fmt: skip
            return 0
        if args.command == "reencode":
            return await _reencode(args, settings, connection)
        if args.command == "export":
            wanted = args.fingerprint or stored
            unknown = [fp for fp in wanted if fp not in stored]
            if unknown:
                print(
                    f"aim bank export: no fingerprint {unknown} in {connection.description}", file=sys.stderr
                )
                return 2
            summary = await export_bank(client, args.dir, wanted)
        else:
            summary = await import_bank(client, args.dir, fingerprints=args.fingerprint or None)
        for fp, n in summary.demonstrations.items():
            created = f" ({summary.created[fp]} new)" if fp in summary.created else ""
            print(f"{args.command}ed {fp}: {n} demonstrations{created}, {summary.sets[fp]} sets")
        return 0
    finally:
        await connection.close()


async def _reencode(args: argparse.Namespace, settings: Settings, connection: RedisConnection) -> int:
    from server.app import bank_fingerprint, load_encoder
    from server.reencode import reencode

    if args.source not in await stored_fingerprints(connection.client):
        print(f"aim bank reencode: no fingerprint {args.source} in {connection.description}", file=sys.stderr)
        return 2
    encoder = await asyncio.to_thread(load_encoder, settings)
    target = DemonstrationBank(
        connection.client,
        bank_fingerprint(encoder),
        hidden_size=encoder.backbone.hidden_size,
        wait_for_fsync=connection.wait_for_fsync,
    )
    source = DemonstrationBank(connection.client, args.source)
    summary = await reencode(source, target, encoder, max_image_side=settings.max_image_side)
    print(f"reencoded {args.source} -> {target.fingerprint}: {summary.encoded} encoded, "
          f"{summary.already_there} already there, {summary.sets} sets, {len(summary.skipped)} skipped")  # fmt: skip
    for where, why in summary.skipped.items():
        print(f"  skipped {where}: {why}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="aim bank", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="fingerprints stored, with their counts")
    for name in ("export", "import"):
        sub = commands.add_parser(name, help=f"{name} the bank as a directory of safetensors + JSON lines")
        sub.add_argument("dir", type=Path)
        sub.add_argument("--fingerprint", action="append", help="only this fingerprint (repeatable)")
    sub = commands.add_parser("reencode", help="rebuild an old fingerprint's bank under the current model")
    sub.add_argument("--from", dest="source", required=True, metavar="FP", help="the fingerprint to rebuild")
    args = parser.parse_args(argv)
    try:
        return asyncio.run(_run(args, Settings()))
    except TransferError as exc:
        print(f"aim bank {args.command}: {exc}", file=sys.stderr)
        return 2
