"""``PostgresAdapter.serve()`` in a process of its own, for the process-level tests.

    python serve_child.py MODEL_DIR --dsn DSN --table T --result-table R
        [--workers N] [--max-batch B]

Logs at INFO to stderr (each worker logs its identity and, when it stops, its counts).
"""

from __future__ import annotations

import argparse
import logging
import sys

from irkit.runtime import load
from irkit.runtime.adapters.postgres import PostgresAdapter


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("model_dir")
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--table", required=True)
    parser.add_argument("--result-table", required=True)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--max-batch", type=int, default=16)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(process)d %(name)s %(message)s")
    adapter = PostgresAdapter(
        load(args.model_dir), dsn=args.dsn, table=args.table, result_table=args.result_table,
        workers=args.workers, max_batch=args.max_batch, init_db=False,
    )
    adapter.serve()
    print("serve returned", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
