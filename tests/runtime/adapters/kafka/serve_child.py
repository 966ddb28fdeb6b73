"""``KafkaAdapter.serve()`` in a process of its own, for the process-level tests.

    python serve_child.py MODEL_DIR --brokers HOST:PORT --input-topic T --output-topic O
        --group G [--processes N] [--max-batch B]

Logs at INFO to stderr (each consumer process logs its pid, partitions and counts).
"""

from __future__ import annotations

import argparse
import logging
import sys

from irkit.runtime import load
from irkit.runtime.adapters.kafka import KafkaAdapter


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("model_dir")
    parser.add_argument("--brokers", required=True)
    parser.add_argument("--input-topic", required=True)
    parser.add_argument("--output-topic", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--max-batch", type=int, default=16)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(process)d %(name)s %(message)s")
    adapter = KafkaAdapter(
        load(args.model_dir), brokers=args.brokers, input_topic=args.input_topic,
        output_topic=args.output_topic, group=args.group, processes=args.processes,
        max_batch=args.max_batch, create_topics=False,
    )
    adapter.serve()
    print("serve returned", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
