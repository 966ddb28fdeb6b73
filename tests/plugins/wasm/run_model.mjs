// Runs irkit wasm artifacts through their model.mjs loader in node, for the Python tests.
//   node run_model.mjs REQUESTS.json  ->  one JSON line per request
// A request: {"artifact": dir, "source": "url" | "bytes", "options": {...},
//             "inputs": {name: {"dtype", "shape", "b64"} | {"raw": any JSON value}}}
// The answer: {"variant", "outputs": {name: {"dtype", "shape", "b64"}}} or {"error": text}.
import { readFileSync } from "node:fs";
import { pathToFileURL } from "node:url";

const ARRAYS = {
  float32: Float32Array, float64: Float64Array, int8: Int8Array, uint8: Uint8Array,
  int16: Int16Array, uint16: Uint16Array, int32: Int32Array, uint32: Uint32Array,
  int64: BigInt64Array, uint64: BigUint64Array, bool: Uint8Array,
};

function decode(value) {
  if ("raw" in value) return value.raw;
  const bytes = Buffer.from(value.b64, "base64");
  const copy = new Uint8Array(bytes); // aligned, own buffer
  const data = new ARRAYS[value.dtype](copy.buffer);
  return value.shape === null ? data : { data, shape: value.shape };
}

const requests = JSON.parse(readFileSync(process.argv[2], "utf8"));
for (const request of requests) {
  let answer;
  try {
    const dir = pathToFileURL(`${request.artifact}/`);
    const { load } = await import(new URL("model.mjs", dir).href);
    let source = dir.href;
    if (request.source === "bytes") {
      const variant = request.options.variant || "wasm32-simd";
      const wasm = readFileSync(new URL(`${variant}/model.wasm`, dir));
      source = request.weights === null ? wasm
        : { wasm, weights: readFileSync(new URL(request.weights, dir)) };
    }
    const model = await load(source, request.options || {});
    const inputs = {};
    for (const [name, value] of Object.entries(request.inputs)) inputs[name] = decode(value);
    const out = await model.run(inputs);
    const outputs = {};
    for (const [name, t] of Object.entries(out)) {
      const bytes = new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength);
      outputs[name] = { dtype: t.dtype, shape: t.shape, b64: Buffer.from(bytes).toString("base64") };
    }
    answer = { variant: model.variant, outputs };
  } catch (error) {
    answer = { error: String(error && error.message ? error.message : error) };
  }
  console.log(JSON.stringify(answer));
}
