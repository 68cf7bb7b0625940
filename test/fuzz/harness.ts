/**
 * The in-process fuzz loop shared by `npm run fuzz` (test/fuzz/run.ts) and the
 * bounded CI pass (test/unit/fuzz-short.test.ts).
 *
 * A target turns a seeded PRNG (and its corpus) into a case, a plain value
 * that serialises to JSON, and executes it against the code under test,
 * returning an outcome key (which error code, which branch). Guidance: a case
 * whose outcome key was never seen joins the corpus, and later cases are often
 * mutations of corpus entries, so rare paths get explored further. (No
 * coverage instrumentation: Jazzer.js's prebuilt libFuzzer needs glibc 2.38,
 * this machine has 2.36; see bench/results/fuzz.md.)
 *
 * A whole run is a function of its seed: case `i` is generated from
 * caseSeed(seed, i) and the corpus so far, which is itself determined by
 * cases 0..i-1. A failure is therefore replayed by `--seed S --inputs i+1`,
 * and its crash file also holds the case itself (`--replay FILE`).
 *
 * Failures come in three kinds: `crash` (an exception other than the
 * target's named errors, or a broken property), `hang` (an async case that
 * did not settle; a synchronous loop is caught by the watchdog thread of
 * run.ts), and `oob` (guest memory changed outside what the device may write:
 * guard bytes around regions, device-readable buffers, rings).
 */
import { caseSeed, Prng } from './prng.js';

/** What went wrong in a failing case. */
export type FailureKind = 'crash' | 'hang' | 'oob';

/** A broken property found by a target's own checks. */
export class FuzzFailure extends Error {
  constructor(
    readonly kind: FailureKind,
    message: string,
  ) {
    super(message);
    this.name = 'FuzzFailure';
  }
}

/** Throws a `crash` failure unless `ok`. */
export function check(ok: boolean, message: string | (() => string)): asserts ok {
  if (!ok) throw new FuzzFailure('crash', typeof message === 'string' ? message : message());
}

/** One fuzz target: generation, execution and (de)serialisation of its cases. */
export interface FuzzTarget<Case = unknown> {
  readonly name: string;
  /** One line for `--help` and the report. */
  readonly description: string;
  /** A new case: fresh from the grammar, or a mutation of a corpus entry. */
  generate(rng: Prng, corpus: readonly Case[]): Case;
  /** Runs one case; returns its outcome key. Throws on a failure (see the module comment). */
  execute(c: Case): string | Promise<string>;
  /** The case as JSON (crash files) and back (replay). */
  toJson(c: Case): unknown;
  fromJson(json: unknown): Case;
  /** Checks over many cases (fd counts); called every {@link BATCH} cases and at the end. */
  checkBatch?(): void;
  /** Releases what the target holds (fds, buffers). */
  close?(): void;
}

/** Cases between two `checkBatch` calls and two clock reads. */
export const BATCH = 1024;
const CORPUS_MAX = 512;

/** Options of one {@link fuzzTarget} run. */
export interface RunOptions {
  seed: number;
  /** Stop after this many cases (Infinity: only the clock stops the run). */
  inputs: number;
  /** Stop after this many seconds (Infinity: only the count stops the run). */
  seconds: number;
  /** Called with the case index before each case (the watchdog's heartbeat). */
  onCase?: (index: number) => void;
  /** Called every BATCH cases with the count so far. */
  onProgress?: (inputs: number, elapsedSeconds: number) => void;
}

/** One failing case, enough to replay it. */
export interface FailureRecord {
  target: string;
  kind: FailureKind;
  message: string;
  stack: string;
  seed: number;
  index: number;
  caseSeed: number;
  case: unknown;
}

/** What a run did. */
export interface RunResult {
  target: string;
  seed: number;
  inputs: number;
  seconds: number;
  inputsPerSecond: number;
  crashes: number;
  hangs: number;
  oob: number;
  /** Outcome keys and how many cases ended in each. */
  outcomes: Map<string, number>;
  corpus: number;
  failure: FailureRecord | null;
}

/** Runs `target` until the count or the clock says stop, or the first failure. */
export async function fuzzTarget<Case>(
  target: FuzzTarget<Case>,
  options: RunOptions,
): Promise<RunResult> {
  const corpus: Case[] = [];
  const outcomes = new Map<string, number>();
  const start = performance.now();
  const deadline = start + options.seconds * 1000;
  let failure: FailureRecord | null = null;
  let i = 0;
  for (; i < options.inputs; i++) {
    if ((i & (BATCH - 1)) === 0 && i > 0) {
      failure = batchCheck(target, options.seed, i);
      options.onProgress?.(i, (performance.now() - start) / 1000);
      if (failure !== null || performance.now() >= deadline) break;
    }
    options.onCase?.(i);
    const seed = caseSeed(options.seed, i);
    const rng = new Prng(seed);
    const c = target.generate(rng, corpus);
    let key: string;
    try {
      key = await runCase(target, c);
    } catch (err) {
      failure = record(target, await withStack(target, c, err), options.seed, i, seed, c);
      i++;
      break;
    }
    const seen = outcomes.get(key);
    outcomes.set(key, (seen ?? 0) + 1);
    if (seen === undefined) addToCorpus(corpus, c, rng);
  }
  if (failure === null) failure = batchCheck(target, options.seed, i);
  const seconds = (performance.now() - start) / 1000;
  const kind = failure?.kind;
  return {
    target: target.name,
    seed: options.seed,
    inputs: i,
    seconds,
    inputsPerSecond: i / Math.max(seconds, 1e-9),
    crashes: kind === 'crash' ? 1 : 0,
    hangs: kind === 'hang' ? 1 : 0,
    oob: kind === 'oob' ? 1 : 0,
    outcomes,
    corpus: corpus.length,
    failure,
  };
}

/** Runs one stored case again (replay); returns its outcome key or throws its failure. */
export async function replayCase<Case>(target: FuzzTarget<Case>, json: unknown): Promise<string> {
  return runCase(target, target.fromJson(json));
}

async function runCase<Case>(target: FuzzTarget<Case>, c: Case): Promise<string> {
  const result = target.execute(c);
  return typeof result === 'string' ? result : settleBeforeNextMacrotask(result);
}

/**
 * The targets' fakes resolve every promise at once, so a case must settle
 * within the microtasks that follow it: one that is still pending when the
 * next macrotask runs awaits something that will never come.
 */
async function settleBeforeNextMacrotask(p: Promise<string>): Promise<string> {
  let state: 'pending' | 'ok' | 'error' = 'pending';
  let value = '';
  let error: unknown;
  p.then(
    (v) => {
      state = 'ok';
      value = v;
    },
    (e: unknown) => {
      state = 'error';
      error = e;
    },
  );
  await new Promise((resolve) => setImmediate(resolve));
  if (state === 'pending') {
    throw new FuzzFailure('hang', 'the case did not settle: a promise it awaits never resolves');
  }
  if (state === 'error') throw error;
  return value;
}

/**
 * The loop may run with Error.stackTraceLimit 0 (errors are the code under
 * test's business and cost a stack each): a failure is run again with stacks.
 */
async function withStack<Case>(target: FuzzTarget<Case>, c: Case, err: unknown): Promise<unknown> {
  if (Error.stackTraceLimit !== 0) return err;
  Error.stackTraceLimit = 30;
  try {
    await runCase(target, c);
    return err;
  } catch (again) {
    return again;
  } finally {
    Error.stackTraceLimit = 0;
  }
}

function batchCheck<Case>(target: FuzzTarget<Case>, seed: number, index: number) {
  try {
    target.checkBatch?.();
    return null;
  } catch (err) {
    return record(target, err, seed, index, 0, null);
  }
}

function addToCorpus<Case>(corpus: Case[], c: Case, rng: Prng): void {
  if (corpus.length < CORPUS_MAX) corpus.push(c);
  else corpus[rng.below(CORPUS_MAX)] = c;
}

function record<Case>(
  target: FuzzTarget<Case>,
  err: unknown,
  seed: number,
  index: number,
  caseSeedValue: number,
  c: Case | null,
): FailureRecord {
  const e = err instanceof Error ? err : new Error(String(err));
  return {
    target: target.name,
    kind: err instanceof FuzzFailure ? err.kind : 'crash',
    message: `${e.name}: ${e.message}`,
    stack: e.stack ?? '',
    seed,
    index,
    caseSeed: caseSeedValue,
    case: c === null ? null : target.toJson(c),
  };
}

/** Uint8Array ⇄ hex for case JSON. */
export function toHex(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('hex');
}

/** Parses {@link toHex}'s output. */
export function fromHex(hex: string): Uint8Array {
  return new Uint8Array(Buffer.from(hex, 'hex'));
}
