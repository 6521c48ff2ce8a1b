"""``policy-engine serve``: the live page, /status, /healthz and /metrics over a history or shared store.

Exit codes: 0 stopped by Ctrl-C, 1 the store or policies could not be read,
2 usage error. An engine embedded in an executor serves itself instead:
``engine.observe.serve(eng, port=...)``, which also exports /metrics.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from engine.errors import PolicyError, StorageError
from engine.text import printable, redact_uri

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def serve_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="policy-engine serve",
        description="Serve a live status page (/), /status (JSON), /healthz and /metrics over HTTP, reading "
        "a SQLite history or a Redis shared store.",
        epilog="exit status: 0 stopped, 1 the store or policies could not be read, 2 usage error")
    p.add_argument("--store", metavar="URI",
                   help="sqlite:///PATH, redis://HOST:PORT/DB?... or redis+cluster://HOST:PORT,.../?... "
                   "(default: the newest history under ./memory)")
    p.add_argument("--policies", default="policies", metavar="DIR",
                   help="policy directory, for a SQLite history (default: ./policies)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8321, help="port (default: 8321; 0 picks a free one)")
    return p


def main_serve(argv: Sequence[str] | None = None) -> int:
    from engine.observe.server import ObserveServer
    from engine.observe.sources import RedisSource, Source, SQLiteSource

    parser = serve_parser()
    args = parser.parse_args(argv)
    store = args.store
    try:
        source: Source
        if store is None or store.startswith("sqlite://"):
            from engine.cli.locate import latest_history, not_found_hint
            from engine.policy.loader import load_policies
            from engine.store.historydb import parse_uri

            path = parse_uri(store)[0] if store else latest_history()
            if path is None:
                raise StorageError(not_found_hint())
            if not Path(path).is_file():
                raise StorageError(f"no history database at {path}")
            source = SQLiteSource(path, load_policies(args.policies))
            source.status()  # fail now, not on the first request
        elif store.lower().startswith(("redis://", "redis+cluster://")):
            source = RedisSource(store)
        else:
            parser.error(f"--store: expected a sqlite://, redis:// or redis+cluster:// URI, got {redact_uri(store)!r}")
        server = ObserveServer(source, args.host, args.port)
    except PolicyError as exc:
        for problem in exc.problems:
            print(problem.format(), file=sys.stderr)
        return EXIT_FAILED
    except (StorageError, OSError) as exc:
        print(f"policy-engine serve: {printable(exc)}", file=sys.stderr)
        return EXIT_FAILED
    print(f"serving {printable(source.name)} at {server.url} (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
    return EXIT_OK
