// irkit WebAssembly model loader (ES module; browsers and node >= 18). Written by irkit
// into each wasm artifact with the model's signature and programs filled in below.
//
//   import { load } from "./model.mjs";
//   const model = await load();                  // the files next to this module
//   const out = await model.run({ x: { data: new Float32Array(64), shape: [1, 64] } });
//   out.y.data, out.y.shape
//
// load(source?, options?): source is the artifact directory's URL (string or URL; default:
// this module's directory), or bytes: { wasm, weights } (ArrayBuffers or typed arrays; the
// .wasm of the chosen variant and weights.bin), or the .wasm alone for a model without
// weights.
// options.variant forces "wasm32-simd" or "wasm32"; options.verify = false skips the
// sha256 checks of fetched files. Inputs are checked as strictly as irkit's Python
// runtime: an unknown or missing name, a wrong typed-array type (dtype), rank or dim
// throws an Error naming the input, and so does a NaN or +/-inf in a floating input
// unless options.rejectNonfinite is false (or model.rejectNonfinite is set to false).
// Random ops without a seed attribute draw fresh values on every run (a per-run key from
// crypto.getRandomValues); options.randomSeed (an integer or BigInt below 2**64) makes
// them reproducible per run number, with the keys of irkit's Python runtime
// (load(path, random_seed=...)): the same seed gives the same values on both.

const MODEL = /*IRKIT_MODEL*/ null;

// The smallest module that uses a 128-bit SIMD instruction (v128.const).
const SIMD_PROBE = new Uint8Array([0, 97, 115, 109, 1, 0, 0, 0, 1, 5, 1, 96, 0, 1, 123, 3, 2,
  1, 0, 10, 22, 1, 20, 0, 253, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 11]);

const ARRAYS = {
  float32: Float32Array, float64: Float64Array, int8: Int8Array, uint8: Uint8Array,
  int16: Int16Array, uint16: Uint16Array, int32: Int32Array, uint32: Uint32Array,
  int64: BigInt64Array, uint64: BigUint64Array, bool: Uint8Array, float16: Uint16Array,
  bfloat16: Uint16Array,
};

export const signature = { name: MODEL.name, inputs: MODEL.inputs, outputs: MODEL.outputs };

/** The engine's WebAssembly features this loader can use (["simd128"] or []). */
export function engineFeatures() {
  try {
    return WebAssembly.validate(SIMD_PROBE) ? ["simd128"] : [];
  } catch {
    return [];
  }
}

function isNode() {
  return typeof process !== "undefined" && !!(process.versions && process.versions.node);
}

async function fetchBytes(url) {
  if (url.protocol === "file:" && isNode()) {
    const fs = await import("node:fs/promises");
    const { fileURLToPath } = await import("node:url");
    return new Uint8Array(await fs.readFile(fileURLToPath(url)));
  }
  const response = await fetch(url);
  if (!response.ok) {
    throw new Error(`irkit: fetching ${url} failed: HTTP ${response.status}`);
  }
  return new Uint8Array(await response.arrayBuffer());
}

async function sha256(bytes) {
  const subtle = globalThis.crypto && globalThis.crypto.subtle;
  if (!subtle) return null; // an insecure browser context has no digest: skip the check
  const digest = new Uint8Array(await subtle.digest("SHA-256", bytes));
  return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
}

function toBytes(value, what) {
  if (value instanceof Uint8Array) return value;
  if (value instanceof ArrayBuffer) return new Uint8Array(value);
  if (ArrayBuffer.isView(value)) {
    return new Uint8Array(value.buffer, value.byteOffset, value.byteLength);
  }
  throw new Error(`irkit: ${what} must be an ArrayBuffer or a typed array`);
}

function evalPoly(poly, dims) {
  let total = 0;
  for (const [monomial, coefficient] of Object.entries(poly)) {
    let term = coefficient;
    if (monomial) for (const symbol of monomial.split("*")) term *= dims[symbol];
    total += term;
  }
  return total;
}

function chooseVariant(requested) {
  const features = engineFeatures();
  const problems = [];
  for (const variant of MODEL.variants) {
    if (requested && variant.name !== requested) continue;
    const missing = variant.requires.filter((f) => !features.includes(f));
    if (!missing.length) return variant;
    problems.push(`${variant.name} needs ${missing.join(", ")}`);
  }
  if (requested && !problems.length) {
    const names = MODEL.variants.map((v) => v.name).join(", ");
    throw new Error(`irkit: no variant ${requested} (this model has ${names})`);
  }
  throw new Error(`irkit: this WebAssembly engine cannot run the model: ${problems.join("; ")}`);
}

/** Load the model. See the comment at the top of this file. */
export async function load(source, options = {}) {
  if (MODEL.error) throw new Error(`irkit: ${MODEL.error}`);
  const variant = chooseVariant(options.variant);
  let wasmBytes;
  let weightBytes;
  if (source === undefined || typeof source === "string" || source instanceof URL) {
    let base = source === undefined ? new URL(".", import.meta.url)
      : new URL(String(source), globalThis.location ? globalThis.location.href : import.meta.url);
    if (!base.pathname.endsWith("/")) base = new URL(base.href + "/");
    [wasmBytes, weightBytes] = await Promise.all([
      fetchBytes(new URL(variant.code, base)), fetchBytes(new URL(variant.weights, base))]);
    if (options.verify !== false) {
      for (const [file, bytes, expected] of [[variant.code, wasmBytes, variant.code_sha256],
        [variant.weights, weightBytes, variant.weights_sha256]]) {
        const found = await sha256(bytes);
        if (found !== null && found !== expected) {
          throw new Error(`irkit: ${file} does not match the artifact's checksum`);
        }
      }
    }
  } else if (source instanceof ArrayBuffer || ArrayBuffer.isView(source) ||
             (source && typeof source === "object" && "wasm" in source)) {
    // The module's bytes, alone (a model without weights) or with its weights.
    const bare = source instanceof ArrayBuffer || ArrayBuffer.isView(source);
    wasmBytes = toBytes(bare ? source : source.wasm, "wasm");
    weightBytes = bare || source.weights === undefined ? new Uint8Array(0)
      : toBytes(source.weights, "weights");
    if (weightBytes.length !== variant.weights_bytes) {
      throw new Error(`irkit: weights hold ${weightBytes.length} bytes, the model needs ` +
        `${variant.weights_bytes} (pass { wasm, weights: <${variant.weights}> })`);
    }
  } else {
    throw new Error("irkit: load() takes the artifact's URL, or the module's bytes ({ wasm, " +
      "weights } for a model with weights)");
  }
  const { instance } = await WebAssembly.instantiate(wasmBytes, {});
  return new Model(instance.exports, variant, weightBytes, options.rejectNonfinite !== false,
    options.randomSeed);
}

function checkedInput(spec, value, bound) {
  const name = spec.name;
  const Array_ = ARRAYS[spec.dtype];
  let data = value;
  let shape = null;
  if (value && typeof value === "object" && !ArrayBuffer.isView(value) && "data" in value) {
    data = value.data;
    shape = value.shape;
    if (!Array.isArray(shape) || !shape.every((d) => Number.isInteger(d) && d >= 0)) {
      throw new Error(`input '${name}': shape must be an array of integers >= 0`);
    }
  }
  if (Array.isArray(data)) {
    data = spec.dtype === "int64" || spec.dtype === "uint64"
      ? Array_.from(data, (v) => BigInt(v)) : Array_.from(data);
  } else if (!(data instanceof Array_)) {
    const got = data && data.constructor ? data.constructor.name : typeof data;
    throw new Error(`input '${name}': expected ${spec.dtype} data (${Array_.name}), got ${got}`);
  }
  if (shape === null) {
    // A bare array: its length gives the one symbolic dim (or it must be fully static).
    const fixed = spec.shape.filter((d) => typeof d === "number").reduce((a, b) => a * b, 1);
    const free = spec.shape.filter((d) => typeof d !== "number");
    if (free.length > 1) {
      throw new Error(`input '${name}': shape [${spec.shape}] has several variable dims; ` +
        "pass { data, shape }");
    }
    const size = free.length ? data.length / fixed : fixed;
    if (!Number.isInteger(size) || (!free.length && data.length !== fixed)) {
      throw new Error(`input '${name}': ${data.length} values do not fill shape [${spec.shape}]`);
    }
    shape = spec.shape.map((d) => (typeof d === "number" ? d : size));
  }
  if (shape.length !== spec.shape.length) {
    throw new Error(`input '${name}': expected rank ${spec.shape.length} (shape ` +
      `[${spec.shape}]), got shape [${shape}]`);
  }
  shape.forEach((d, axis) => {
    const want = spec.shape[axis];
    if (typeof want === "number" ? d !== want : (bound[want] ?? d) !== d) {
      const expected = typeof want === "number" ? want : `${want}=${bound[want]}`;
      throw new Error(`input '${name}': dim ${axis} is ${d}, expected ${expected} ` +
        `(shape [${spec.shape}])`);
    }
    if (typeof want !== "number") bound[want] = d;
  });
  const count = shape.reduce((a, b) => a * b, 1);
  if (data.length !== count) {
    throw new Error(`input '${name}': ${data.length} values for shape [${shape}] ` +
      `(${count} expected)`);
  }
  return { data, shape };
}

// float16 / bfloat16 inputs are raw bits: non-finite when every exponent bit is set
// (then NaN when a mantissa bit is set): [exponent mask, mantissa mask].
const HALF_BITS = { float16: [0x7c00, 0x03ff], bfloat16: [0x7f80, 0x007f] };

/** Throws, as the Python runtime does, when a floating input holds NaN or +/-inf. */
function checkFinite(spec, { data, shape }) {
  const [exponent, mantissa] = HALF_BITS[spec.dtype] || [0, 0];
  const float = spec.dtype === "float32" || spec.dtype === "float64";
  if (!float && !exponent) return;
  const bad = float ? (v) => !Number.isFinite(v) : (v) => (v & exponent) === exponent;
  let first = -1;
  let count = 0;
  for (let i = 0; i < data.length; i++) {
    if (bad(data[i])) {
      if (first < 0) first = i;
      count++;
    }
  }
  if (first < 0) return;
  const v = data[first];
  const what = float ? (Number.isNaN(v) ? "NaN" : v > 0 ? "+inf" : "-inf")
    : v & mantissa ? "NaN" : v & 0x8000 ? "-inf" : "+inf";
  const index = [];
  for (let axis = shape.length - 1, rest = first; axis >= 0; axis--) {
    index.unshift(rest % shape[axis]);
    rest = Math.floor(rest / shape[axis]);
  }
  const others = count > 1 ? ` (${count} non-finite values in all)` : "";
  throw new Error(`input '${spec.name}': ${what} at index [${index.join(", ")}]${others}; ` +
    "irkit refuses NaN and inf inputs by default; let them through with " +
    "load(source, { rejectNonfinite: false })");
}

const align64 = (n) => Math.ceil(n / 64) * 64;

// The per-run key of unseeded random ops (irkit.runtime.call_keys): the symbol CALL_KEY,
// key_n = base + n for the n-th run (0 first), base = splitmix64(seed) >> 2.
const CALL_KEY = "N64";
const MASK = (1n << 64n) - 1n;

function mix64(z) {
  z = ((z ^ (z >> 30n)) * 0xBF58476D1CE4E5B9n) & MASK;
  z = ((z ^ (z >> 27n)) * 0x94D049BB133111EBn) & MASK;
  return z ^ (z >> 31n);
}

function keyBase(seed) {
  if (seed === undefined || seed === null) {
    const word = new BigUint64Array(1);
    globalThis.crypto.getRandomValues(word);
    return mix64(word[0]) >> 2n;
  }
  const value = typeof seed === "bigint" ? seed
    : Number.isSafeInteger(seed) ? BigInt(seed) : -1n;
  if (value < 0n || value > MASK) {
    throw new Error(`irkit: options.randomSeed must be an integer between 0 and 2**64 - 1`);
  }
  return mix64(value) >> 2n;
}

class Model {
  constructor(exports, variant, weightBytes, rejectNonfinite, randomSeed) {
    this.variant = variant.name;
    this._keyBase = variant.symbols.includes(CALL_KEY) ? keyBase(randomSeed) : 0n;
    this._runs = 0n;
    /** Whether run() refuses floating inputs holding NaN or +/-inf (default true). */
    this.rejectNonfinite = rejectNonfinite;
    this.signature = signature;
    this._x = exports;
    this._v = variant;
    this._run = exports[variant.run];
    const alloc = exports[variant.alloc];
    this._weights = alloc(Math.max(weightBytes.length, 1));
    this._io = alloc(4 * variant.io.length);
    this._dims = alloc(8 * Math.max(variant.symbols.length, 1));
    if (!this._weights || !this._io || !this._dims) {
      throw new Error("irkit: the module could not allocate its memory");
    }
    this._bytes().set(weightBytes, this._weights);
    this._arena = 0;
    this._arenaBytes = 0;
  }

  _bytes() {
    return new Uint8Array(this._x.memory.buffer);
  }

  /** Run the model: inputs by name; returns { name: { data, shape, dtype } }. */
  run(inputs) {
    const v = this._v;
    if (!inputs || typeof inputs !== "object") {
      throw new Error("run() takes an object of inputs by name");
    }
    const known = MODEL.inputs.map((s) => s.name);
    for (const key of Object.keys(inputs)) {
      if (!known.includes(key)) {
        throw new Error(`input '${key}' is not an input of ${MODEL.name} (inputs: ` +
          `${known.join(", ")})`);
      }
    }
    const bound = {};
    const feeds = {};
    for (const spec of MODEL.inputs) {
      if (!(spec.name in inputs)) throw new Error(`input '${spec.name}' is missing`);
      feeds[spec.name] = checkedInput(spec, inputs[spec.name], bound);
      if (this.rejectNonfinite) checkFinite(spec, feeds[spec.name]);
    }
    const dims = {};
    for (const [symbol, [input, axis, a, b]] of Object.entries(v.sources)) {
      dims[symbol] = input ? (feeds[input].shape[axis] - b) / a : 1;
    }
    for (const [size, why] of v.constraints) {
      if (evalPoly(size, dims) < 0) {
        throw new Error(`inputs outside the shapes this model supports: ${why}`);
      }
    }
    const outputs = MODEL.outputs.map((spec) => {
      const shape = v.output_shapes[spec.name].map((d) => evalPoly(d, dims));
      return { spec, shape, count: shape.reduce((a, b) => a * b, 1) };
    });
    // One arena: every io buffer (64-byte aligned), then the workspace.
    const place = {};
    let offset = 0;
    for (const name of v.io) {
      const feed = feeds[name];
      const out = outputs.find((o) => o.spec.name === name);
      const bytes = feed ? feed.data.byteLength
        : out.count * ARRAYS[out.spec.dtype].BYTES_PER_ELEMENT;
      place[name] = offset;
      offset += align64(bytes);
    }
    const workspaceAt = offset;
    const need = offset + Math.max(evalPoly(v.workspace, dims), 0) + 64;
    if (need > this._arenaBytes) {
      if (this._arena) this._x[v.release](this._arena);
      this._arena = this._x[v.alloc](need);
      if (!this._arena) throw new Error(`irkit: out of memory (${need} bytes)`);
      this._arenaBytes = need;
    }
    const buffer = this._x.memory.buffer;
    const heap = new Uint8Array(buffer);
    const table = new Uint32Array(buffer, this._io, v.io.length);
    v.io.forEach((name, slot) => {
      table[slot] = this._arena + place[name];
    });
    for (const [name, feed] of Object.entries(feeds)) {
      const d = feed.data;
      heap.set(new Uint8Array(d.buffer, d.byteOffset, d.byteLength), this._arena + place[name]);
    }
    const dimWords = new BigInt64Array(buffer, this._dims, Math.max(v.symbols.length, 1));
    v.symbols.forEach((symbol, i) => {
      if (symbol === CALL_KEY) {  // unseeded random ops: a fresh key per run
        dimWords[i] = this._keyBase + this._runs;
        this._runs += 1n;
      } else {
        dimWords[i] = BigInt(dims[symbol]);
      }
    });
    this._run(this._io, this._weights, this._arena + workspaceAt, this._dims);
    const result = {};
    const after = this._x.memory.buffer; // unchanged: kernels do not grow memory
    for (const { spec, shape, count } of outputs) {
      const Array_ = ARRAYS[spec.dtype];
      const at = this._arena + place[spec.name];
      const data = new Array_(after.slice(at, at + count * Array_.BYTES_PER_ELEMENT));
      result[spec.name] = { data, shape, dtype: spec.dtype };
    }
    return result;
  }
}
