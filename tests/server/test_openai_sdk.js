'use strict';

/* The OpenAI routes driven by the official `openai` npm package (node_modules/, unmodified): images.edit with a
   file, images.generate, both response formats, the SDK's extra fields (steps, seed, beta, ...), the url result
   fetched, and errors surfaced as the SDK's typed errors (AuthenticationError, BadRequestError, NotFoundError,
   UnprocessableEntityError, RateLimitError). Usage: node test_openai_sdk.js (meson sets SKETCHGUIDE_BIN,
   NODE_PATH, OPENBLAS_NUM_THREADS). Starts `sketchguide serve --port 0` on the bundled model with a token. */

const {spawn} = require('child_process');
const fs = require('fs');
const path = require('path');
const test = require('node:test');
const assert = require('node:assert/strict');

const ROOT = path.resolve(__dirname, '..', '..');
const BIN = process.env.SKETCHGUIDE_BIN || path.join(ROOT, 'build', 'server', 'sketchguide');
const STAR = path.join(ROOT, 'docs', 'examples', 'star.png');
const TOKEN = 'sdk-token-51c2';
const PROMPT = 'a red star on a plain blue background';

function loadOpenAI() {
  for (const where of ['openai', path.join(ROOT, 'node_modules', 'openai')]) {
    try { return require(where); } catch { /* the next place */ }
  }
  throw new Error('the openai package is not installed: run `npm ci` in the project root (setup.sh does)');
}
// Node 18 (Debian 12's) has no global File, which the SDK's uploads need; its own message says to set this
if (typeof File === 'undefined') globalThis.File = require('node:buffer').File;
const OpenAIModule = loadOpenAI();
const OpenAI = OpenAIModule.OpenAI || OpenAIModule.default;
const {toFile} = OpenAIModule;

/* The text chunks (tEXt) of a PNG as {key: value}; fails when bytes are not a PNG. */
function pngText(bytes) {
  const b = Buffer.from(bytes);
  assert.ok(b.length > 33 && b.subarray(0, 8).equals(Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a])),
            'a PNG');
  const out = {width: b.readUInt32BE(16), height: b.readUInt32BE(20)};
  for (let off = 8; off + 8 <= b.length;) {
    const len = b.readUInt32BE(off), type = b.toString('latin1', off + 4, off + 8);
    if (type === 'tEXt') {
      const data = b.subarray(off + 8, off + 8 + len), nul = data.indexOf(0);
      out[data.toString('latin1', 0, nul)] = data.toString('latin1', nul + 1);
    }
    off += 12 + len;
  }
  return out;
}

/* ---- the server ---- */

let server, base, output = '';

function waitFor(re, what, ms = 120000) {
  return new Promise((resolve, reject) => {
    const t0 = Date.now();
    const poll = () => {
      const m = output.match(re);
      if (m) return resolve(m);
      if (server.exitCode !== null) return reject(new Error(`the server exited before ${what}:\n${output}`));
      if (Date.now() - t0 > ms) return reject(new Error(`timed out waiting for ${what}:\n${output}`));
      setTimeout(poll, 50);
    };
    poll();
  });
}

test.before(async () => {
  // SG_TEST_MAX_BATCH=8 (docs/batching.md): the server batches that many jobs
  const batch = process.env.SG_TEST_MAX_BATCH ? ['--max-batch', process.env.SG_TEST_MAX_BATCH] : [];
  server = spawn(BIN, ['serve', '--port', '0', '--threads', '1', '--max-queue', '1', '--warmup-steps', '1',
                       '--max-steps', '999', '--log-level', 'debug', ...batch],
                 {env: {...process.env, SKETCHGUIDE_TOKEN: TOKEN, OPENBLAS_NUM_THREADS: '1'}, stdio: ['ignore', 'pipe', 'pipe']});
  server.stdout.on('data', (d) => { output += d; });
  server.stderr.on('data', (d) => { output += d; });
  const m = await waitFor(/^listening on http:\/\/\S+:(\d+)$/m, 'the port');
  base = `http://127.0.0.1:${m[1]}`;
  await waitFor(/^ready/m, 'the model');
});

test.after(async () => {
  if (server && server.exitCode === null) {
    server.kill('SIGTERM');
    await new Promise((r) => server.once('exit', r));
  }
});

const client = (key = TOKEN) => new OpenAI({apiKey: key, baseURL: `${base}/v1`, maxRetries: 0, timeout: 300000});
const star = () => toFile(fs.readFileSync(STAR), 'star.png', {type: 'image/png'});

/* Expects promise to reject with the SDK's error class cls, status and error code; returns the error. */
async function rejects(promise, cls, status, code) {
  let err = null;
  try { await promise; } catch (e) { err = e; }
  assert.ok(err, `expected ${cls.name}, the request succeeded`);
  assert.ok(err instanceof cls, `expected ${cls.name}, got ${err && err.constructor.name}: ${err && err.message}`);
  assert.equal(err.status, status);
  assert.equal(err.code, code);
  assert.equal(typeof err.type, 'string');
  return err;
}

async function submitted() {
  const r = await fetch(`${base}/metrics`);
  const m = (await r.text()).match(/^sketchguide_jobs_submitted_total (\d+)$/m);
  assert.ok(m, 'the submitted counter in /metrics');
  return Number(m[1]);
}

/* ---- the tests ---- */

test('images.edit with a file: guided, n images, the extra fields reach the job', async () => {
  const r = await client().images.edit({image: await star(), prompt: PROMPT, n: 2, size: '64x64',
                                        response_format: 'b64_json', model: 'shapes', user: 'sdk-test',
                                        steps: 2, seed: 5, beta: 1.5, stop: 0.5, negative_prompt: 'blurry',
                                        sampler: 'ddim'});
  assert.ok(Number.isInteger(r.created) && Math.abs(r.created - Date.now() / 1000) < 3600, 'created');
  assert.equal(r.data.length, 2);
  const texts = r.data.map((d) => pngText(Buffer.from(d.b64_json, 'base64')));
  assert.deepEqual(texts.map((t) => [t.width, t.height, t.seed, t.steps, t.beta, t.negative_prompt, t.sampler]),
                   [[64, 64, '5', '2', '1.5', 'blurry', 'ddim'], [64, 64, '6', '2', '1.5', 'blurry', 'ddim']]);
  assert.equal(texts[0].prompt, PROMPT);
});

test('images.edit takes the SDK array form (image[]) and follows the sketch: not the unguided image', async () => {
  const params = {prompt: PROMPT, steps: 2, seed: 77};
  const guided = await client().images.edit({...params, image: [await star()], beta: 2});
  const free = await client().images.generate({...params});
  const g = Buffer.from(guided.data[0].b64_json, 'base64'), f = Buffer.from(free.data[0].b64_json, 'base64');
  assert.equal(pngText(g).beta, '2');
  assert.equal(pngText(f).beta, '0');
  assert.equal(pngText(f).seed, '77');
  assert.ok(!g.equals(f), 'the guided image differs from the unguided one of the same seed');
});

test('images.generate: url results served by the service, open, then unknown keys 404', async () => {
  const r = await client().images.generate({prompt: PROMPT, n: 2, response_format: 'url', steps: 2, seed: 9});
  assert.equal(r.data.length, 2);
  for (const [i, d] of r.data.entries()) {
    assert.equal(d.b64_json, undefined);
    assert.match(d.url, new RegExp(`^${base.replace('127.0.0.1', '[^/]+')}/v1/images/files/[0-9a-f]{32}$`));
    const res = await fetch(d.url); // no token: the key is the credential
    assert.equal(res.status, 200);
    assert.equal(res.headers.get('content-type'), 'image/png');
    assert.equal(pngText(await res.arrayBuffer()).seed, String(9 + i));
  }
  const res = await fetch(`${base}/v1/images/files/${'0'.repeat(32)}`);
  assert.equal(res.status, 404);
});

test('images.generate with a sketch as an extra field (a data URL) is guided', async () => {
  const sketch = 'data:image/png;base64,' + fs.readFileSync(STAR).toString('base64');
  const r = await client().images.generate({prompt: PROMPT, steps: 2, seed: 3, sketch, beta: 1});
  assert.equal(pngText(Buffer.from(r.data[0].b64_json, 'base64')).beta, '1');
});

test('errors are the SDK typed errors, with OpenAI error bodies, and run nothing', async () => {
  const before = await submitted();
  const OA = OpenAI;
  let e = await rejects(client('wrong-key').images.generate({prompt: PROMPT}), OA.AuthenticationError, 401,
                        'invalid_api_key');
  assert.equal(e.type, 'authentication_error');
  e = await rejects(client().images.generate({prompt: PROMPT, model: 'dall-e-3'}), OA.NotFoundError, 404,
                    'model_not_found');
  assert.equal(e.param, 'model');
  assert.match(e.message, /'shapes'/);
  e = await rejects(client().images.generate({prompt: PROMPT, size: '1024x1024'}), OA.UnprocessableEntityError, 422,
                    'invalid_parameter');
  assert.equal(e.param, 'size');
  assert.match(e.message, /64x64/);
  e = await rejects(client().images.edit({image: await star(), prompt: PROMPT, n: 50}), OA.UnprocessableEntityError,
                    422, 'invalid_parameter');
  assert.equal(e.param, 'n');
  e = await rejects(client().images.edit({prompt: PROMPT}), OA.BadRequestError, 400, 'bad_request');
  assert.equal(e.param, 'image');
  e = await rejects(client().images.generate({prompt: PROMPT, sketch: '!!!'}), OA.BadRequestError, 400,
                    'bad_request');
  assert.equal(e.param, 'sketch');
  e = await rejects(client().images.generate({prompt: PROMPT, response_format: 'gif'}), OA.UnprocessableEntityError,
                    422, 'invalid_parameter');
  assert.equal(e.param, 'response_format');
  e = await rejects(client().images.generate({prompt: PROMPT, steps: 'many'}), OA.BadRequestError, 400, 'bad_request');
  assert.equal(e.param, 'steps');
  e = await rejects(client().images.edit({image: await toFile(Buffer.from('not an image'), 'x.png'), prompt: PROMPT}),
                    OA.APIError, 415, 'unsupported_media_type');
  assert.equal(e.param, 'image');
  assert.equal(await submitted(), before, 'refused requests submitted no job');
});

test('a full queue is the SDK RateLimitError (429, Retry-After)', async () => {
  const auth = {Authorization: `Bearer ${TOKEN}`, 'Content-Type': 'application/json'};
  const sketch = fs.readFileSync(STAR).toString('base64');
  const submit = async (steps, batching = true) => {
    const r = await fetch(`${base}/v1/generate`, {method: 'POST', headers: {...auth, Prefer: 'respond-async'},
                                                  body: JSON.stringify({prompt: PROMPT, sketch, steps, batching})});
    assert.equal(r.status, 202);
    return (await r.json()).id;
  };
  const running = await submit(999, false); // alone: the next one waits at any max_batch
  for (let t0 = Date.now(); ;) { // until it runs, so that the next one waits in the queue
    const st = await (await fetch(`${base}/v1/jobs/${running}`, {headers: auth})).json();
    if (st.status === 'running') break;
    assert.ok(Date.now() - t0 < 120000, 'the long job to start');
    await new Promise((r) => setTimeout(r, 50));
  }
  const queued = await submit(2);
  try {
    const e = await rejects(client().images.generate({prompt: PROMPT, steps: 2}), OpenAI.RateLimitError, 429,
                            'queue_full');
    assert.equal(e.type, 'rate_limit_error');
    assert.ok(Number(e.headers.get('retry-after')) >= 1);
  } finally {
    for (const id of [queued, running]) await fetch(`${base}/v1/jobs/${id}`, {method: 'DELETE', headers: auth});
  }
});
