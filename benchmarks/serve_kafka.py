"""End-to-end throughput of the Kafka adapter: digits MLP, JSON vs binary payloads.

    python benchmarks/serve_kafka.py                  # 20,000 messages per payload form
    python benchmarks/serve_kafka.py --messages 50000 --max-batch 512

One embedded Tansu broker; the adapter serves in this process; the load (a producer of
``--messages`` single-row requests and a consumer of their results) runs in a separate
process. The clock starts at the first request produced and stops at the last result
received, so the figure is end-to-end messages/s through broker, adapter and broker again.
The ``broker`` row runs the same load with no adapter (the load reads its own requests
back): the ceiling the broker and the load process allow on this machine. Each form first
sends warm-up requests until results come back, so consumer-group joins
(about 3 s on Tansu) are not timed. The model is ``specs/models/digits_mlp.onnx`` (from
``scripts/make_models.py``) or, when that is missing, a random MLP of the same shape.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from irkit.runtime import Artifact, TensorSpec, load
from irkit.runtime.adapters.kafka import KafkaAdapter
from irkit.runtime.adapters.kafka_broker import EmbeddedBroker, ensure_topics
from irkit.runtime.adapters.kafka_codec import binary_request, decode_result, json_request

DIGITS_MLP = Path(__file__).resolve().parent.parent / "specs" / "models" / "digits_mlp.onnx"


def _random_mlp() -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = {
        "w0": rng.standard_normal((128, 64)).astype(np.float32) * 0.1,
        "b0": np.zeros(128, np.float32),
        "w1": rng.standard_normal((10, 128)).astype(np.float32) * 0.1,
        "b1": np.zeros(10, np.float32),
    }
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w0", "b0"], ["h"], transB=1),
         helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("Gemm", ["r", "w1", "b1"], ["logits"], transB=1)],
        "digits_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        [numpy_helper.from_array(array, name) for name, array in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def build_model(directory: Path) -> tuple[Path, str]:
    """Save the digits MLP as an ort artifact; returns its path and where it came from."""
    if DIGITS_MLP.is_file():
        onnx_bytes, origin = DIGITS_MLP.read_bytes(), str(DIGITS_MLP)
    else:
        onnx_bytes, origin = _random_mlp(), "random MLP 64-128-10 (digits_mlp.onnx missing)"
    artifact = Artifact(
        "digits_mlp", "ort", "cpu",
        (TensorSpec("x", np.dtype("float32"), ("N", 64)),),
        (TensorSpec("logits", np.dtype("float32"), ("N", 10)),),
        files={"model.onnx": onnx_bytes}, entry={"model": "model.onnx"},
        options={"threads": 1},
    )
    return artifact.save(directory / "digits_mlp"), origin


def run_load(servers: str, form: str, topics: tuple[str, str], count: int,
             results: Any) -> None:
    """The load process: produce ``count`` requests, consume their results, time it."""
    from confluent_kafka import Consumer, Producer

    input_topic, output_topic = topics
    if form == "broker":  # no adapter: read the requests themselves back (the ceiling)
        output_topic = input_topic
    rng = np.random.default_rng(1)
    rows = rng.random((1024, 64), dtype=np.float32) * 16
    if form == "json":
        payloads = [(json_request({"x": rows[i : i + 1]}), None) for i in range(len(rows))]
    else:
        payloads = [binary_request({"x": rows[i : i + 1]}) for i in range(len(rows))]
    producer = Producer({"bootstrap.servers": servers, "linger.ms": 5,
                         "queue.buffering.max.messages": 1_000_000})
    consumer = Consumer({"bootstrap.servers": servers, "group.id": f"bench-{uuid.uuid4().hex}",
                         "auto.offset.reset": "latest", "session.timeout.ms": 6000,
                         "enable.auto.commit": False})
    consumer.subscribe([output_topic])

    def send(prefix: str, n: int) -> None:
        for i in range(n):
            value, headers = payloads[i % len(payloads)]
            while True:
                try:
                    producer.produce(input_topic, value, f"{prefix}{i}".encode(),
                                     headers=headers)
                    break
                except BufferError:
                    producer.poll(0.01)
            if i % 1000 == 0:
                producer.poll(0)
        producer.flush()

    # Warm up until results flow: both consumer groups have joined, topics are known.
    warm = False
    while not warm:
        send("warmup-", 10)
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline and not warm:
            warm = any(m.error() is None for m in consumer.consume(100, 0.2))
    while consumer.consume(1000, 0.5):  # drain the remaining warm-up results
        pass

    seen = 0
    checked = False
    started = time.perf_counter()
    sender = threading.Thread(target=send, args=("m-", count))
    sender.start()
    deadline = time.monotonic() + 600
    while seen < count and time.monotonic() < deadline:
        for message in consumer.consume(10000, 0.5):
            if message.error() is not None or not (message.key() or b"").startswith(b"m-"):
                continue
            seen += 1
            if not checked and form == "broker":
                checked = True
            elif not checked:  # the results are real logits, not just messages
                logits = decode_result(message.value(), message.headers())["logits"]
                checked = logits.shape == (1, 10) and bool(np.isfinite(logits).all())
    elapsed = time.perf_counter() - started
    sender.join()
    consumer.close()
    results.put({"form": form, "messages": seen, "seconds": elapsed, "checked": checked})


def bench_form(servers: str, model_dir: Path, form: str, count: int, max_batch: int,
               max_delay_ms: float) -> dict[str, Any]:
    name = f"bench-{form}-{uuid.uuid4().hex[:8]}"
    topics = (f"{name}.requests", f"{name}.predictions")
    ensure_topics(servers, (*topics, f"{name}.requests.dlq"), partitions=1)
    if form == "broker":
        return _timed_load(servers, form, topics, count)
    adapter = KafkaAdapter(
        load(model_dir), brokers=servers, input_topic=topics[0], output_topic=topics[1],
        group=name, max_batch=max_batch, max_delay_ms=max_delay_ms, create_topics=False,
    )
    server = threading.Thread(target=adapter.serve, name="kafka-adapter")
    server.start()
    try:
        return _timed_load(servers, form, topics, count)
    finally:
        adapter.stop()
        server.join(60)


def _timed_load(servers: str, form: str, topics: tuple[str, str], count: int
                ) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    load_process = context.Process(target=run_load, args=(servers, form, topics, count, results))
    load_process.start()
    try:
        outcome = results.get(timeout=900)
    finally:
        load_process.join(60)
    outcome["msg_per_s"] = outcome["messages"] / outcome["seconds"]
    return outcome


def model_ceiling(model_dir: Path, max_batch: int, seconds: float = 1.0) -> float:
    """Rows/s of the model alone at ``max_batch`` rows per call (the serving ceiling)."""
    model = load(model_dir)
    x = np.random.default_rng(2).random((max_batch, 64), dtype=np.float32)
    calls = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        model.run({"x": x})
        calls += 1
    return calls * max_batch / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--max-batch", type=int, default=256)
    parser.add_argument("--max-delay-ms", type=float, default=5.0)
    parser.add_argument("--forms", default="binary,json,broker",
                        help="binary, json; broker = the load without the adapter (ceiling)")
    args = parser.parse_args(argv)

    import tempfile

    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker() as broker:
        model_dir, origin = build_model(Path(tmp))
        ceiling = model_ceiling(model_dir, args.max_batch)
        rows = [bench_form(broker.bootstrap_servers, model_dir, form, args.messages,
                           args.max_batch, args.max_delay_ms)
                for form in args.forms.split(",")]
    print(f"model: {origin}; max_batch={args.max_batch}, max_delay_ms={args.max_delay_ms:g}")
    print(f"model alone at batch {args.max_batch}: {ceiling:,.0f} rows/s")
    print(f"{'payload':<8} {'messages':>9} {'seconds':>8} {'msg/s':>9}  results checked")
    for row in rows:
        print(f"{row['form']:<8} {row['messages']:>9,} {row['seconds']:>8.2f} "
              f"{row['msg_per_s']:>9,.0f}  {row['checked']}")
    return 0 if all(row["messages"] == args.messages for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
