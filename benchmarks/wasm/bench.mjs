// irkit's WebAssembly models against onnxruntime-web (wasm backend, SIMD, one thread) in
// node. Driven by benchmarks/bench_wasm.py, which writes the config:
//   node --no-liftoff bench.mjs CONFIG.json  ->  one JSON line per (model, batch)
// Config: {"repeats": R, "seconds": S, "cases": [{"model", "batch", "artifact", "onnx",
//          "input", "dtype", "shape"}]}. Each case warms both up (V8's optimizing tier
// compiles everything with --no-liftoff; warming also settles caches), checks that they
// agree, then alternates R rounds of timed runs and reports median milliseconds per call.
import { readFileSync } from "node:fs";
import { pathToFileURL } from "node:url";
import * as ort from "onnxruntime-web";

ort.env.wasm.numThreads = 1;
ort.env.wasm.simd = true;
ort.env.logLevel = "error";

const config = JSON.parse(readFileSync(process.argv[2], "utf8"));

function randomData(count, seed) {
  const data = new Float32Array(count);
  let state = seed >>> 0;
  for (let i = 0; i < count; i++) {
    state = (state * 1664525 + 1013904223) >>> 0;
    data[i] = state / 2 ** 32 - 0.5;
  }
  return data;
}

// Wall-clock and CPU milliseconds per call. On a machine shared with other work the CPU
// time (user + system of this process: after the warm-up V8's compiler threads are idle)
// is the steadier of the two.
async function timeCalls(fn, inner) {
  const cpu = process.cpuUsage();
  const start = process.hrtime.bigint();
  for (let i = 0; i < inner; i++) await fn();
  const wall = Number(process.hrtime.bigint() - start) / 1e6 / inner;
  const used = process.cpuUsage(cpu);
  return [wall, (used.user + used.system) / 1e3 / inner];
}

function median(values) {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

for (const c of config.cases) {
  const count = c.shape.reduce((a, b) => a * b, 1);
  const data = randomData(count, 1234 + c.batch);
  const { load } = await import(pathToFileURL(`${c.artifact}/model.mjs`).href);
  const model = await load(pathToFileURL(`${c.artifact}/`).href);
  const session = await ort.InferenceSession.create(readFileSync(c.onnx), {
    executionProviders: ["wasm"], graphOptimizationLevel: "all",
  });
  const feeds = { [c.input]: new ort.Tensor("float32", data, c.shape) };
  const ours = () => model.run({ [c.input]: { data, shape: c.shape } });
  const theirs = () => session.run(feeds);
  // Agreement first: the largest absolute difference over the outputs.
  const a = ours();
  const b = await theirs();
  let diff = 0;
  for (const name of Object.keys(a)) {
    const x = a[name].data;
    const y = b[name].data;
    for (let i = 0; i < x.length; i++) diff = Math.max(diff, Math.abs(x[i] - y[i]));
  }
  // Warm up both for about config.seconds each, and size the inner loop from it.
  const warm = async (fn) => {
    let calls = 0;
    const start = performance.now();
    while (performance.now() - start < config.seconds * 1000) {
      await fn();
      calls++;
    }
    return (performance.now() - start) / calls;
  };
  const perCall = Math.min(await warm(ours), await warm(theirs));
  const inner = Math.max(1, Math.round(20 / Math.max(perCall, 1e-3)));
  const timesOurs = [];
  const timesTheirs = [];
  for (let r = 0; r < config.repeats; r++) {
    timesOurs.push(await timeCalls(ours, inner));
    timesTheirs.push(await timeCalls(theirs, inner));
  }
  const irkitMs = median(timesOurs.map((t) => t[0]));
  const ortMs = median(timesTheirs.map((t) => t[0]));
  const irkitCpu = median(timesOurs.map((t) => t[1]));
  const ortCpu = median(timesTheirs.map((t) => t[1]));
  console.log(JSON.stringify({
    model: c.model, batch: c.batch, variant: model.variant, irkit_ms: irkitMs, ort_web_ms: ortMs,
    ratio: irkitMs / ortMs, irkit_cpu_ms: irkitCpu, ort_web_cpu_ms: ortCpu,
    cpu_ratio: irkitCpu / ortCpu, max_abs_diff: diff, inner,
  }));
  await session.release();
}
