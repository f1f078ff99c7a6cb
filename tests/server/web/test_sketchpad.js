// The sketch pad (server/web/) in a real browser: Debian's Chromium driven by playwright-core against the real server.
'use strict';

/* Usage: node test_sketchpad.js (meson sets SKETCHGUIDE_BIN, SKETCHGUIDE_OUT, NODE_PATH, OPENBLAS_NUM_THREADS).
   Starts `sketchguide serve --port 0` on the bundled model, then drives the page: drawing with undo/redo/clear,
   a generation with live progress, the result PNG, the history, cancelling (queued and running), the error for an
   empty prompt, values kept across a reload, phone width, touch and pen, the keyboard, a server with a bearer token,
   and an accessibility audit (axe-core).
   Any console error, page error or Content-Security-Policy violation fails the test. Exits 1 on any failure. */

const {spawn} = require('child_process');
const fs = require('fs');
const path = require('path');

const ROOT = path.resolve(__dirname, '..', '..', '..');
const BIN = process.env.SKETCHGUIDE_BIN || path.join(ROOT, 'build', 'server', 'sketchguide');
const OUT = process.env.SKETCHGUIDE_OUT || path.join(ROOT, 'build', 'tests', 'server', 'web');
const CHROMIUM = process.env.SKETCHGUIDE_CHROMIUM || '/usr/bin/chromium';
const TOKEN = 'test-token-7f3a';
// The limit of any one wait (and Playwright's default for its actions): generations run on a CPU that other work may
// keep busy, so no wait assumes a speed; a wait that passes its limit fails the test.
const WAIT = 120000;

function loadPlaywright() {
  for (const where of ['playwright-core', path.join(ROOT, 'node_modules', 'playwright-core')]) {
    try { return require(where); } catch { /* try the next place */ }
  }
  throw new Failure('playwright-core is not installed: run `npm ci` in the project root (setup.sh does)');
}

/* ---- checks ---- */

const summary = [];

class Failure extends Error {}

function check(condition, what) {
  if (!condition) throw new Failure(what);
}

function passed(what) {
  summary.push(what);
  console.log(`ok   ${what}`);
}

/* The width and height from a PNG's IHDR; throws a Failure when `bytes` is not a PNG. */
function pngSize(bytes) {
  const b = Buffer.from(bytes);
  const SIGNATURE = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
  check(b.length >= 33, `a PNG has at least 33 bytes (got ${b.length})`);
  check(b.subarray(0, 8).equals(SIGNATURE), 'the PNG signature');
  check(b.readUInt32BE(8) === 13 && b.toString('latin1', 12, 16) === 'IHDR', 'the PNG starts with its IHDR chunk');
  return {width: b.readUInt32BE(16), height: b.readUInt32BE(20)};
}

/* The checkers can fail: a text file, a truncated PNG and a JPEG are refused; a real IHDR is read. */
function selfTest() {
  const refused = (bytes) => { try { pngSize(bytes); return false; } catch (e) { return e instanceof Failure; } };
  check(refused(Buffer.from('not a png at all, just some text here')), 'pngSize refuses text');
  check(refused(Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0, 0])), 'pngSize refuses a truncated PNG');
  check(refused(Buffer.concat([Buffer.from([0xff, 0xd8, 0xff, 0xe0]), Buffer.alloc(40)])), 'pngSize refuses a JPEG');
  const ihdr = Buffer.alloc(33);
  Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]).copy(ihdr);
  ihdr.writeUInt32BE(13, 8);
  ihdr.write('IHDR', 12, 'latin1');
  ihdr.writeUInt32BE(64, 16);
  ihdr.writeUInt32BE(48, 20);
  const size = pngSize(ihdr);
  check(size.width === 64 && size.height === 48, 'pngSize reads IHDR');
  passed('the checkers refuse a non-PNG, a truncated PNG and a JPEG, and read a real IHDR');
}

/* ---- the server ---- */

const servers = new Set();
process.on('exit', () => { for (const proc of servers) proc.kill('SIGKILL'); });   // never leave one behind

/* Starts `sketchguide serve` on a free port; resolves to {url, stop()} once it prints "ready". */
function startServer(extraEnv = {}) {
  return new Promise((resolve, reject) => {
    const env = {...process.env, OPENBLAS_NUM_THREADS: '1', ...extraEnv};
    // --max-steps 999 (the sampler's most): the job that keeps the worker busy, and the one cancelled while it runs,
    // last far longer than the page's steps around them, however fast the machine
    // SG_TEST_MAX_BATCH=8 (docs/batching.md): the server batches that many jobs
    const batch = process.env.SG_TEST_MAX_BATCH ? ['--max-batch', process.env.SG_TEST_MAX_BATCH] : [];
    const proc = spawn(BIN, ['serve', '--port', '0', '--threads', '1', '--max-steps', '999', ...batch],
      {env, stdio: ['ignore', 'pipe', 'pipe']});
    servers.add(proc);
    proc.on('exit', () => servers.delete(proc));
    let url = null;
    let log = '';
    const timer = setTimeout(() => {
      proc.kill('SIGKILL');
      reject(new Failure(`the server was not ready in ${WAIT / 1000} s:\n${log}`));
    }, WAIT);
    const onData = (chunk) => {
      log += chunk;
      const m = /listening on (http:\/\/\S+)/.exec(log);
      if (m) url = m[1].replace(/\/$/, '');
      if (url && /^ready/m.test(log)) {
        clearTimeout(timer);
        resolve({
          url,
          log: () => log,
          stop: () => new Promise((done) => {
            if (proc.exitCode !== null) return done();
            proc.once('exit', done);
            proc.kill('SIGTERM');
            setTimeout(() => proc.kill('SIGKILL'), 10000).unref();
          }),
        });
      }
    };
    proc.stdout.setEncoding('utf8').on('data', onData);
    proc.stderr.setEncoding('utf8').on('data', onData);
    proc.on('error', (e) => { clearTimeout(timer); reject(new Failure(`cannot start ${BIN}: ${e.message}`)); });
    proc.on('exit', (code) => {
      if (!url) { clearTimeout(timer); reject(new Failure(`the server exited (${code}) before it was ready:\n${log}`)); }
    });
  });
}

/* ---- the page ---- */

/* Opens a page that records console errors, page errors and CSP violations into `problems`. HTTP errors the test
   provokes on purpose (`expect.http`: statuses) are allowed on API URLs only. */
async function openPage(context, problems, expect) {
  const page = await context.newPage();
  page.on('console', (m) => {
    if (m.type() !== 'error' && m.type() !== 'warning') return;
    const text = m.text();
    const status = /the server responded with a status of (\d+)/.exec(text);
    const where = (m.location() && m.location().url) || '';
    if (status && expect.http.has(Number(status[1])) && /\/v1\//.test(where)) return;
    if (m.type() === 'warning' && !/Content Security Policy|Refused/i.test(text)) return;
    problems.push(`console ${m.type()}: ${text} (${where})`);
  });
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  await page.addInitScript(() => {
    document.addEventListener('securitypolicyviolation', (e) => {
      window.__csp = window.__csp || [];
      window.__csp.push(`${e.violatedDirective} blocked ${e.blockedURI}`);
    });
    // The browser does not give the test a multipart body holding a Blob, so the forms the page posts are kept.
    window.__posted = [];
    const fetch = window.fetch;
    window.fetch = function (input, init) {
      if (init && init.body instanceof FormData) window.__posted.push({url: String(input), form: init.body});
      return fetch.apply(this, arguments);
    };
  });
  return page;
}

async function cspViolations(page) {
  return page.evaluate(() => window.__csp || []);
}

/* Dark pixels on the sketch canvas (its working resolution). */
function darkPixels(page) {
  return page.evaluate(() => {
    const c = document.querySelector('#pad');
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    let n = 0;
    for (let i = 0; i < d.length; i += 4) if (d[i] + d[i + 1] + d[i + 2] < 384) n++;
    return n;
  });
}

/* Drags the mouse across the canvas through points given as fractions of its size. */
async function stroke(page, points) {
  const box = await page.locator('#pad').boundingBox();
  const at = ([x, y]) => [box.x + x * box.width, box.y + y * box.height];
  await page.mouse.move(...at(points[0]));
  await page.mouse.down();
  for (const p of points.slice(1)) await page.mouse.move(...at(p), {steps: 6});
  await page.mouse.up();
}

/* Records every value the <progress> takes from now on (window.__progress: [value, max] pairs). A page slowed down
   can read several events in one go and set the bar several times before the observer runs: each record's old value,
   then the attribute's current one, give every value it took, in order. */
function recordProgress(page) {
  return page.evaluate(() => {
    const bar = document.querySelector('#progress');
    window.__progress = [];
    window.__progressObserver?.disconnect();
    const state = {value: bar.getAttribute('value'), max: bar.getAttribute('max')};
    window.__progressObserver = new MutationObserver((records) => {
      records.forEach((r, i) => {
        const next = records.slice(i + 1).find((q) => q.attributeName === r.attributeName);
        state[r.attributeName] = next ? next.oldValue : bar.getAttribute(r.attributeName);
        window.__progress.push([Number(state.value), Number(state.max)]);
      });
    });
    window.__progressObserver.observe(bar, {attributes: true, attributeOldValue: true, attributeFilter: ['value', 'max']});
  });
}

/* The progress recorder can see: five values set in one task (one observer callback) are all recorded, in order. */
async function progressRecorder(page) {
  await recordProgress(page);
  const seen = await page.evaluate(() => new Promise((resolve) => {
    const bar = document.querySelector('#progress');
    const before = {value: bar.getAttribute('value'), max: bar.getAttribute('max')};
    bar.max = 5;
    for (let v = 1; v <= 5; v++) bar.value = v;
    setTimeout(() => {        // after the observer's callback (a microtask)
      const got = window.__progress.slice();
      window.__progressObserver.disconnect();
      for (const [k, v] of Object.entries(before)) if (v === null) bar.removeAttribute(k); else bar.setAttribute(k, v);
      resolve(got);
    }, 0);
  }));
  const values = seen.map(([v]) => v).slice(1);
  check(values.join() === '1,2,3,4,5' && seen.every(([, max]) => max === 5),
    `the progress recorder sees every value set in one task (${JSON.stringify(seen)})`);
  passed('the progress recorder sees every value the bar takes, several in one task included');
}

/* Submits a job of the most steps and images the service allows, which keeps its only worker busy until release():
   the page's next job waits in the queue meanwhile (batching false: at any max_batch). Resolves to the job's id. */
function occupyWorker(page, info, token) {
  return page.evaluate(async ([steps, n, t]) => {
    const form = new FormData();
    form.append('prompt', 'a blue circle');
    form.append('steps', steps);
    form.append('n', n);
    form.append('batching', 'false');
    const c = document.createElement('canvas');
    c.width = c.height = 16;
    const ctx = c.getContext('2d');
    ctx.fillStyle = '#fff';
    ctx.fillRect(0, 0, 16, 16);
    form.append('sketch', await new Promise((r) => c.toBlob(r, 'image/png')), 's.png');
    const r = await fetch('v1/generate', {method: 'POST', body: form,
      headers: {Prefer: 'respond-async', ...(t ? {Authorization: 'Bearer ' + t} : {})}});
    return (await r.json()).id;
  }, [String(info.limits.max_steps), String(info.limits.max_images), token || '']);
}

/* Cancels the job occupyWorker() submitted; resolves to the DELETE's status. */
function release(page, id, token) {
  return page.evaluate(async ([i, t]) => (await fetch(`v1/jobs/${i}`, {method: 'DELETE',
    headers: t ? {Authorization: 'Bearer ' + t} : {}})).status, [id, token || '']);
}

/* A promise of the page's next event stream (its response headers: the job is watched from then on). */
function eventStream(page) {
  const p = page.waitForResponse((r) => /\/v1\/jobs\/[0-9a-f]{32}\/events$/.test(r.url()), {timeout: WAIT});
  p.catch(() => {});    // awaited later; a failure before then must not end the process unreported
  return p;
}

const text = (page, sel) => page.locator(sel).innerText();
const historyCount = (page) => page.locator('#history > li').count();
const apiJSON = (page, url, token) => page.evaluate(async ([u, t]) => {
  const r = await fetch(u, {headers: t ? {Authorization: 'Bearer ' + t} : {}});
  return {status: r.status, body: await r.json()};
}, [url, token || '']);

async function waitForStatus(page, pattern, timeout = WAIT) {
  try {
    await page.waitForFunction((src) => new RegExp(src, 'i').test(document.querySelector('#status').textContent),
      pattern.source, {timeout});
  } catch {
    throw new Failure(`the status line did not match ${pattern} (it says "${await text(page, '#status')}", ` +
      `error "${await text(page, '#error')}")`);
  }
}

async function setRange(page, sel, value) {
  await page.locator(sel).evaluate((el, v) => {
    el.value = v;
    el.dispatchEvent(new Event('input', {bubbles: true}));
  }, String(value));
}

/* ---- the scenarios ---- */

async function drawing(page) {
  check(await darkPixels(page) === 0, 'a new page starts with a blank sketch');
  check(await page.locator('#undo').isDisabled(), 'Undo is disabled on a blank new sketch');
  await stroke(page, [[0.2, 0.2], [0.8, 0.2], [0.8, 0.8]]);
  const one = await darkPixels(page);
  check(one > 500, `a stroke draws on the canvas (${one} dark pixels)`);
  await stroke(page, [[0.2, 0.8], [0.5, 0.4], [0.2, 0.3]]);
  const two = await darkPixels(page);
  check(two > one, `a second stroke adds to it (${two} > ${one})`);
  await page.click('#undo');
  check(await darkPixels(page) === one, 'Undo removes the last stroke');
  check(await page.locator('#redo').isEnabled(), 'Redo is enabled after Undo');
  await page.click('#redo');
  check(await darkPixels(page) === two, 'Redo brings it back');
  await page.locator('#pad').focus();
  await page.keyboard.press('Control+z');
  check(await darkPixels(page) === one, 'Ctrl+Z undoes');
  await page.keyboard.press('Control+Shift+z');
  check(await darkPixels(page) === two, 'Ctrl+Shift+Z redoes');
  await page.click('#tool-eraser');
  check(await page.locator('#tool-eraser').getAttribute('aria-pressed') === 'true', 'the eraser is pressed');
  await setRange(page, '#width', 30);
  await stroke(page, [[0.15, 0.2], [0.85, 0.2]]);
  const erased = await darkPixels(page);
  check(erased < two, `the eraser removes ink (${erased} < ${two})`);
  await page.keyboard.press('Control+y');
  check(await darkPixels(page) === erased, 'Ctrl+Y with nothing to redo changes nothing');
  await page.click('#undo');
  check(await darkPixels(page) === two, 'Undo restores what the eraser removed');
  await page.click('#tool-pen');
  await setRange(page, '#width', 8);
  await page.click('#clear');
  check(await darkPixels(page) === 0, 'Clear blanks the canvas');
  await page.click('#undo');
  check(await darkPixels(page) === two, 'Undo after Clear restores the sketch');
  passed(`drawing: strokes (${one}, then ${two} dark pixels), undo, redo, Ctrl+Z, Ctrl+Shift+Z, eraser, clear`);
}

async function generation(page, info, srv) {
  const size = info.model.image_size;
  await page.fill('#prompt', 'a red star on a plain blue background');
  await page.fill('#steps', '24');
  await page.fill('#seed', '');
  // Another job holds the worker until the page follows its own job's events: every step's progress reaches the page,
  // however slowly the browser runs beside the server.
  const blocker = await occupyWorker(page, info);
  await recordProgress(page);
  const stream = eventStream(page);
  const posted = page.waitForRequest((r) => r.url().endsWith('/v1/generate') && r.method() === 'POST');
  const imageResponse = page.waitForResponse((r) => /\/v1\/jobs\/[0-9a-f]{32}\/images\/0$/.test(r.url()));
  posted.catch(() => {});        // awaited below; a failure before then must not end the process unreported
  imageResponse.catch(() => {});
  await page.click('#generate');

  const req = await posted;
  check(req.headers()['prefer'] === 'respond-async', 'the page asks for an asynchronous job (Prefer: respond-async)');
  check(/^multipart\/form-data; boundary=/.test(req.headers()['content-type']), 'the page posts multipart/form-data');
  const parts = await page.evaluate(async () => {
    const {url, form} = window.__posted[window.__posted.length - 1];
    const out = {url};
    for (const [k, v] of form.entries()) {
      out[k] = typeof v === 'string' ? v : {name: v.name, type: v.type, bytes: [...new Uint8Array(await v.arrayBuffer())]};
    }
    return out;
  });
  check(parts.url === 'v1/generate', `the page posts to the relative URL v1/generate (got ${parts.url})`);
  check(parts.prompt === 'a red star on a plain blue background', 'the prompt is sent as typed');
  check(parts.steps === '24', 'steps are sent');
  check(parts.beta === '1.6' && parts.stop === '0.5', `beta and stop are sent (${parts.beta}, ${parts.stop})`);
  check(!('seed' in parts), 'an empty seed is not sent (the service picks one)');
  check(parts.sketch && parts.sketch.type === 'image/png', 'a PNG sketch part is sent');
  const sketchBytes = Buffer.from(parts.sketch.bytes);
  const sent = pngSize(sketchBytes);
  check(sent.width === size && sent.height === size,
    `the sketch is sent at the model's resolution ${size}x${size} (got ${sent.width}x${sent.height})`);
  const ink = await page.evaluate(async (bytes) => {
    const bitmap = await createImageBitmap(new Blob([new Uint8Array(bytes)], {type: 'image/png'}));
    const c = document.createElement('canvas');
    c.width = bitmap.width;
    c.height = bitmap.height;
    const ctx = c.getContext('2d');
    ctx.drawImage(bitmap, 0, 0);
    const d = ctx.getImageData(0, 0, c.width, c.height).data;
    let dark = 0, light = 0;
    for (let i = 0; i < d.length; i += 4) if (d[i] < 128) dark++; else if (d[i] > 200) light++;
    return {dark, light};
  }, [...sketchBytes]);
  check(ink.dark > 20 && ink.light > ink.dark, `the sent sketch is dark strokes on white (${ink.dark} dark, ${ink.light} light)`);
  await stream;
  const released = await release(page, blocker);
  check(released === 200 || released === 202, `the job that held the worker is cancelled (${released})`);

  try {
    await page.waitForSelector('#history > li', {timeout: WAIT});
  } catch {
    throw new Failure(`no result within ${WAIT / 1000} s (status "${await text(page, '#status')}", error "${await text(page, '#error')}")`);
  }
  check(await text(page, '#error') === '', 'no error is shown after a generation');
  const seen = await page.evaluate(() => window.__progress);
  const steps = seen.map(([v]) => v);
  const middle = [...new Set(steps.filter((v) => v > 0 && v < 24))];
  check(middle.length > 0, `the progress bar showed intermediate steps (values seen: ${steps.join(',')})`);
  check(seen.every(([, max]) => max === 24 || max === 1), `the progress bar's max is the steps (${seen.map(([, m]) => m)})`);
  check(await page.locator('#progress').evaluate((b) => b.value === b.max && b.max === 24), 'the progress bar is full');
  check(/Step 24 of 24/.test(await text(page, '#step')), 'the step text says "Step 24 of 24"');
  await waitForStatus(page, /^Done/);

  const img = page.locator('#result img');
  check(await img.count() === 1 && await img.isVisible(), 'the result image is shown');
  const natural = await img.evaluate((el) => ({w: el.naturalWidth, h: el.naturalHeight, complete: el.complete}));
  check(natural.complete && natural.w === size && natural.h === size,
    `the shown image decodes at ${size}x${size} (got ${natural.w}x${natural.h})`);
  const bytes = await (await imageResponse).body();
  const got = pngSize(bytes);
  check(got.width === size && got.height === size, `the result PNG's IHDR is ${size}x${size} (got ${got.width}x${got.height})`);
  const shown = await img.evaluate(async (el) => {
    const c = document.createElement('canvas');
    c.width = el.naturalWidth;
    c.height = el.naturalHeight;
    c.getContext('2d').drawImage(el, 0, 0);
    return Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data);
  });
  const {width, height} = {width: size, height: size};
  const diverse = new Set();
  for (let i = 0; i < shown.length; i += 4 * 7) diverse.add(shown.slice(i, i + 3).join());
  check(shown.length === width * height * 4 && diverse.size > 4, `the shown image has content (${diverse.size} colours sampled)`);

  const link = page.locator('#downloads a[download]');
  check(await link.count() === 1, 'one download link');
  const seed = (await link.getAttribute('download')).match(/^sketchguide-(\d+)\.png$/);
  check(seed, `the download is named sketchguide-SEED.png (got ${await link.getAttribute('download')})`);
  check(await link.getAttribute('href') === await img.getAttribute('src'), 'the download link is the shown image');
  const jobId = await page.locator('#job').getAttribute('data-job-id');
  const job = await apiJSON(page, `${srv.url}/v1/jobs/${jobId}`);
  check(job.status === 200 && job.body.status === 'succeeded' && String(job.body.seed) === seed[1],
    `the job succeeded with the seed in the file name (${job.body.status}, ${job.body.seed})`);
  passed(`generation: sketch sent as a ${size}x${size} PNG; progress went through ${middle.length} intermediate steps to ` +
    `24/24; the result PNG is ${size}x${size}; download sketchguide-${seed[1]}.png`);
  return seed[1];
}

async function history(page, seed) {
  check(await historyCount(page) === 1, 'one history entry');
  const entry = page.locator('#history > li').first();
  const words = await entry.innerText();
  for (const w of ['a red star on a plain blue background', 'β', '1.6', 'stop', '0.5', 'steps', '24', 'cfg', 'seed',
    seed, 'sampler']) {
    check(words.includes(w), `the history entry shows "${w}" (it shows: ${words.replace(/\s+/g, ' ')})`);
  }
  const thumbs = await entry.locator('img').evaluateAll((imgs) => imgs.map((i) => i.complete && i.naturalWidth > 0));
  check(thumbs.length === 2 && thumbs.every(Boolean), 'the history entry shows the result and the sketch');
  await page.fill('#steps', '33');
  await setRange(page, '#beta', 3.2);
  await page.fill('#prompt', 'something else');
  await entry.locator('.use-settings').click();
  check(await page.inputValue('#steps') === '24', 'Use these settings restores the steps');
  check(Number(await page.inputValue('#beta')) === 1.6, 'Use these settings restores beta');
  check(await page.inputValue('#seed') === seed, 'Use these settings restores the seed');
  check(await page.inputValue('#prompt') === 'a red star on a plain blue background', 'Use these settings restores the prompt');
  const before = await darkPixels(page);
  await page.click('#clear');
  await entry.locator('.use-sketch').click();
  await page.waitForFunction(() => /Sketch of result 1 restored/.test(document.querySelector('#status').textContent));
  const restored = await darkPixels(page);
  check(Math.abs(restored - before) <= before * 0.02, `Use this sketch restores the sketch (${restored} vs ${before} dark pixels)`);
  passed('history: the entry shows prompt, beta, stop, steps, cfg, seed, sampler; "Use these settings" and "Use this sketch" restore them');
}

async function cancelling(page, info, srv) {
  const max = String(info.limits.max_steps);
  await page.fill('#seed', '');
  // A job submitted by someone else keeps the only worker busy, so the page's job waits in the queue.
  const other = await occupyWorker(page, info);
  await page.fill('#steps', max);
  await page.click('#generate');
  await waitForStatus(page, /waiting/);
  const queuedId = await page.locator('#job').getAttribute('data-job-id');
  await page.click('#cancel');
  await waitForStatus(page, /^cancelled/);
  const queued = await apiJSON(page, `${srv.url}/v1/jobs/${queuedId}`);
  check(queued.body.status === 'cancelled' && queued.body.started_at === null,
    `the queued job is cancelled before it started (status ${queued.body.status})`);
  const del = await release(page, other);
  check(del === 200 || del === 202, `the other job is cancelled (${del})`);
  passed(`cancel while queued: the page says "${await text(page, '#status')}", the API says cancelled`);

  await recordProgress(page);
  await page.click('#generate');
  await page.waitForFunction(() => document.querySelector('#progress').value >= 2, null, {timeout: WAIT});
  const runningId = await page.locator('#job').getAttribute('data-job-id');
  check(runningId && runningId !== queuedId, 'a new job runs');
  check(await page.locator('#cancel').isVisible(), 'the Cancel button is shown while a job runs');
  await page.keyboard.press('Escape');
  await waitForStatus(page, /^cancelled at step \d+ of \d+/);
  const running = await apiJSON(page, `${srv.url}/v1/jobs/${runningId}`);
  check(running.body.status === 'cancelled', `the running job's status is cancelled (${running.body.status})`);
  check(running.body.progress.step < Number(max), `it stopped early (step ${running.body.progress.step} of ${max})`);
  check(await text(page, '#error') === '', 'a cancel is not shown as an error');
  check(await page.locator('#cancel').isHidden(), 'the Cancel button goes away');
  check(await historyCount(page) === 1, 'a cancelled job adds no history entry');
  passed(`cancel while running (Esc): "${await text(page, '#status')}", the API says cancelled at step ` +
    `${running.body.progress.step} of ${max}`);
}

async function errors(page, info, expect) {
  expect.http.add(422);
  await page.fill('#prompt', '');
  await page.fill('#steps', '5');
  await page.click('#generate');
  await page.waitForFunction(() => document.querySelector('#error').textContent.trim() !== '', null, {timeout: WAIT});
  const message = await text(page, '#error');
  check(/^Prompt\b/.test(message) && /empty/i.test(message), `the error names the prompt in words (got "${message}")`);
  check(await page.locator('#error').getAttribute('role') === 'alert' && await page.locator('#error').isVisible(),
    'the error is in a visible role="alert" area');
  check(await page.getAttribute('#prompt', 'aria-invalid') === 'true', 'the prompt field is marked invalid');
  check(await page.evaluate(() => document.activeElement.id) === 'prompt', 'the focus moves to the prompt');
  await page.fill('#prompt', 'a red star');
  await page.fill('#steps', String(info.limits.max_steps + 1));
  await page.click('#generate');
  await page.waitForFunction(() => /^Steps/.test(document.querySelector('#error').textContent), null, {timeout: WAIT});
  const steps = await text(page, '#error');
  check(/^Steps: must be between 1 and \d+/.test(steps), `a bad steps value is named (got "${steps}")`);
  expect.http.delete(422);
  passed(`errors: "${message}"; "${steps}"`);
}

async function persistence(page, info) {
  await page.fill('#prompt', 'a green heart on a striped white background');
  await page.fill('#negative_prompt', 'blurry');
  await setRange(page, '#beta', 2.3);
  await setRange(page, '#stop', 0.7);
  await page.fill('#steps', '12');
  await page.fill('#cfg', '6.5');
  await page.fill('#seed', '1234');
  await page.selectOption('#sampler', 'euler_a');
  await page.fill('#n', '2');
  await page.click('#tool-eraser');
  const ink = await darkPixels(page);
  check(ink > 0, 'there is a sketch to keep');
  await page.reload();
  await page.waitForFunction(() => /×/.test(document.querySelector('#model-info').textContent));
  await page.waitForFunction((n) => {
    const c = document.querySelector('#pad');
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    let k = 0;
    for (let i = 0; i < d.length; i += 4) if (d[i] + d[i + 1] + d[i + 2] < 384) k++;
    return k === n;
  }, ink, {timeout: WAIT}).catch(() => {});     // the check below says what was found
  const kept = {
    prompt: await page.inputValue('#prompt'), negative_prompt: await page.inputValue('#negative_prompt'),
    beta: await page.inputValue('#beta'), stop: await page.inputValue('#stop'), steps: await page.inputValue('#steps'),
    cfg: await page.inputValue('#cfg'), seed: await page.inputValue('#seed'), sampler: await page.inputValue('#sampler'),
    n: await page.inputValue('#n'),
  };
  const want = {prompt: 'a green heart on a striped white background', negative_prompt: 'blurry', beta: '2.3',
    stop: '0.7', steps: '12', cfg: '6.5', seed: '1234', sampler: 'euler_a', n: '2'};
  for (const [k, v] of Object.entries(want)) check(kept[k] === v, `${k} is kept across a reload (${kept[k]} != ${v})`);
  check(await darkPixels(page) === ink, `the sketch is kept across a reload (${await darkPixels(page)} vs ${ink})`);
  check(await page.getAttribute('#tool-eraser', 'aria-pressed') === 'true', 'the tool is kept across a reload');
  check(/2\.3/.test(await text(page, '#beta-out')), 'the beta read-out shows the kept value');
  await page.click('#reset');
  const d = info.defaults;
  check(Number(await page.inputValue('#beta')) === d.beta && Number(await page.inputValue('#stop')) === d.stop &&
    Number(await page.inputValue('#steps')) === d.steps && Number(await page.inputValue('#cfg')) === d.cfg &&
    await page.inputValue('#sampler') === d.sampler && await page.inputValue('#seed') === '' &&
    await page.inputValue('#n') === '1', 'Reset to defaults restores the model defaults');
  check(await page.inputValue('#prompt') === want.prompt, 'Reset to defaults keeps the prompt');
  const marks = await page.evaluate(() => [...document.querySelectorAll('.default-mark')].map((m) => m.textContent));
  check(marks.join('|') === 'paper 1.6|paper 0.5', `the sliders mark the paper's defaults (${marks})`);
  await page.click('#tool-pen');
  passed('persistence: prompt, negative prompt, beta, stop, steps, cfg, seed, sampler, images, tool and the sketch ' +
    'survive a reload; Reset to defaults; sliders marked "paper 1.6" and "paper 0.5"');
}

async function keyboard(page) {
  await page.evaluate(() => { document.activeElement?.blur(); window.scrollTo(0, 0); });
  await page.click('h1');        // Tab starts from the top of the page
  const visited = [];
  let found = false;
  for (let i = 0; i < 80 && !found; i++) {
    await page.keyboard.press('Tab');
    const el = await page.evaluate(() => {
      const a = document.activeElement;
      const s = getComputedStyle(a);
      const named = a.labels?.[0]?.textContent || a.getAttribute('aria-label') || a.textContent || a.id;
      return {id: a.id, tag: a.tagName, named: named.trim(), outline: s.outlineStyle !== 'none' && parseFloat(s.outlineWidth) > 0};
    });
    visited.push(el.id || el.tag);
    check(el.named, `every control reached by Tab has a name (${el.tag}#${el.id})`);
    check(el.outline, `the focused ${el.tag}#${el.id} shows a focus outline`);
    found = el.id === 'generate';
  }
  check(found, `Tab reaches the Generate button (visited: ${visited.join(' ')})`);
  for (const id of ['tool-pen', 'width', 'clear', 'upload', 'prompt', 'beta', 'stop', 'steps', 'seed', 'sampler']) {
    check(visited.includes(id), `Tab reaches #${id} before Generate (visited: ${visited.join(' ')})`);
  }
  const before = await historyCount(page);
  await page.fill('#steps', '6');
  await page.fill('#n', '1');
  await page.focus('#prompt');
  await page.keyboard.press('Control+Enter');
  await page.waitForFunction((n) => document.querySelectorAll('#history > li').length === n + 1, before, {timeout: WAIT})
    .catch(async () => { throw new Failure(`Ctrl+Enter did not generate (status "${await text(page, '#status')}", error "${await text(page, '#error')}")`); });
  passed(`keyboard: Tab reaches Generate after ${visited.length} stops, all named with a visible focus; Ctrl+Enter generates`);
}

async function phone(page) {
  await page.setViewportSize({width: 360, height: 740});
  await page.waitForFunction(() => window.innerWidth === 360);     // then reading the layout lays the page out
  const width = await page.evaluate(() => document.scrollingElement.scrollWidth);
  check(width <= 360, `no horizontal scroll at 360 px (scrollWidth ${width})`);
  const columns = await page.evaluate(() => {
    const xs = ['.sketch', '.controls', '.result', '.history'].map((s) => document.querySelector(s).getBoundingClientRect());
    return xs.map((r) => [Math.round(r.left), Math.round(r.width)]);
  });
  check(columns.every(([l]) => l === columns[0][0]), `one column at 360 px (${JSON.stringify(columns)})`);
  const canvas = await page.locator('#pad').boundingBox();
  check(canvas.width <= 360 && canvas.width > 250, `the canvas scales to the width (${canvas.width} px)`);
  await page.screenshot({path: path.join(OUT, 'sketchpad-phone.png'), fullPage: true});
  passed(`phone: 360 px wide without horizontal scroll, one column, canvas ${Math.round(canvas.width)} px`);
}

/* Touch and pen through the DevTools protocol's input events (what a phone or a tablet with a stylus sends): a touch
   drag draws a stroke, the page sees pointerType touch and pen, and a pen's pressure sets the line's width. */
async function touchAndPen(page) {
  const cdp = await page.context().newCDPSession(page);
  await page.evaluate(() => {
    window.__pointerTypes = new Set();
    document.querySelector('#pad').addEventListener('pointerdown', (e) => window.__pointerTypes.add(e.pointerType));
  });
  const box = await page.locator('#pad').boundingBox();
  const at = (x, y) => ({x: box.x + x * box.width, y: box.y + y * box.height});
  await page.click('#clear');
  const before = await darkPixels(page);
  await cdp.send('Input.dispatchTouchEvent', {type: 'touchStart', touchPoints: [at(0.2, 0.5)]});
  for (let k = 1; k <= 8; k++) await cdp.send('Input.dispatchTouchEvent', {type: 'touchMove', touchPoints: [at(0.2 + 0.075 * k, 0.5)]});
  await cdp.send('Input.dispatchTouchEvent', {type: 'touchEnd', touchPoints: []});
  const touched = await darkPixels(page);
  check(touched > before + 200, `a touch drag draws (${before} -> ${touched} dark pixels)`);
  const scrolled = await page.evaluate(() => document.scrollingElement.scrollTop);
  const penStroke = async (force) => {
    await page.click('#clear');
    const base = {button: 'left', clickCount: 1, pointerType: 'pen', force};
    await cdp.send('Input.dispatchMouseEvent', {...base, type: 'mousePressed', ...at(0.2, 0.5)});
    for (let k = 1; k <= 8; k++) await cdp.send('Input.dispatchMouseEvent', {...base, type: 'mouseMoved', ...at(0.2 + 0.075 * k, 0.5)});
    await cdp.send('Input.dispatchMouseEvent', {...base, type: 'mouseReleased', ...at(0.8, 0.5)});
    return darkPixels(page);
  };
  const light = await penStroke(0.1);
  const heavy = await penStroke(1.0);
  check(light > 0 && heavy > light * 1.5, `a pen's pressure sets the width (${light} dark pixels at 0.1, ${heavy} at 1.0)`);
  const types = await page.evaluate(() => [...window.__pointerTypes].sort());
  check(types.includes('touch') && types.includes('pen'), `the pad got touch and pen pointer events (${types})`);
  check(await page.evaluate(() => document.scrollingElement.scrollTop) === scrolled, 'a touch drag on the pad does not scroll the page');
  await cdp.detach();
  passed(`touch and pen: a touch drag draws (${touched - before} dark pixels); pen pressure 0.1 -> ${light}, 1.0 -> ${heavy}`);
}

/* An accessibility audit by axe-core (node_modules/axe-core): WCAG 2.0 and 2.1 A and AA rules plus axe's best
   practices (labels, names, roles, landmarks, contrast), light and dark, desktop and phone width, with a result and
   a history entry on the page. axe is injected as a script, which the page's own policy forbids: this context
   bypasses the CSP (the other scenarios check it). */
async function accessibility(browser, srv, problems) {
  const axePath = require.resolve('axe-core/axe.min.js', {paths: [ROOT, path.join(ROOT, 'node_modules')]});
  const rules = ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'best-practice'];
  let audited = 0;
  for (const colorScheme of ['light', 'dark']) {
    const context = await browser.newContext({viewport: {width: 1280, height: 900}, colorScheme, bypassCSP: true});
    context.setDefaultTimeout(WAIT);
    const page = await openPage(context, problems, {http: new Set()});
    await page.goto(srv.url + '/');
    await page.waitForFunction(() => /×/.test(document.querySelector('#model-info').textContent), null, {timeout: WAIT});
    await stroke(page, [[0.2, 0.2], [0.8, 0.2], [0.8, 0.8]]);
    await page.fill('#prompt', 'a red star on a plain blue background');
    await page.fill('#steps', '2');
    await page.click('#generate');
    await page.locator('#history > li').first().waitFor({timeout: WAIT});
    await page.addScriptTag({path: axePath});
    for (const width of [1280, 360]) {
      await page.setViewportSize({width, height: 900});
      const r = await page.evaluate((tags) => window.axe.run(document, {runOnly: {type: 'tag', values: tags}}), rules);
      const found = r.violations.map((v) => `${v.impact} ${v.id} (${v.help}): ${v.nodes.map((n) => n.target.join(' ')).join(', ')}`);
      check(found.length === 0, `axe finds no violation (${colorScheme}, ${width} px):\n  ${found.join('\n  ')}`);
      check(r.passes.length >= 30, `axe ran its rules (${r.passes.length} passed, ${colorScheme}, ${width} px)`);
      audited = r.passes.length;
    }
    await context.close();
  }
  passed(`accessibility: axe-core finds no WCAG 2.1 A/AA or best-practice violation (${audited} rules passed; light and dark, 1280 and 360 px, with a result shown)`);
}

async function withToken(browser, problems) {
  const srv = await startServer({SKETCHGUIDE_TOKEN: TOKEN});
  const expect = {http: new Set([401])};
  const context = await browser.newContext({viewport: {width: 1280, height: 900}});
  context.setDefaultTimeout(WAIT);
  try {
    const page = await openPage(context, problems, expect);
    await page.goto(srv.url + '/');
    await page.waitForSelector('#auth:not([hidden])', {timeout: WAIT});
    const message = await text(page, '#error');
    check(/token/i.test(message), `without a token the page asks for one (error "${message}")`);
    await page.fill('#token', 'wrong-token');
    await page.click('#auth-form button[type=submit]');
    await page.waitForFunction(() => /token/i.test(document.querySelector('#model-info').textContent));
    check(await page.locator('#auth').isVisible(), 'a wrong token keeps the token box open');
    await page.fill('#token', TOKEN);
    await page.click('#auth-form button[type=submit]');
    await page.waitForSelector('#auth', {state: 'hidden', timeout: WAIT});
    await page.waitForFunction(() => /×/.test(document.querySelector('#model-info').textContent));
    expect.http.clear();
    await stroke(page, [[0.3, 0.3], [0.7, 0.7]]);
    await page.fill('#prompt', 'a yellow square');
    await page.fill('#steps', '16');
    const info = (await apiJSON(page, `${srv.url}/v1/info`, TOKEN)).body;
    const blocker = await occupyWorker(page, info, TOKEN);     // as in generation(): every step reaches the page
    await recordProgress(page);
    const stream = eventStream(page);
    await page.click('#generate');
    await stream;
    const released = await release(page, blocker, TOKEN);
    check(released === 200 || released === 202, `the job that held the worker is cancelled (${released})`);
    await page.waitForSelector('#history > li', {timeout: WAIT}).catch(async () => {
      throw new Failure(`no result with a token (status "${await text(page, '#status')}", error "${await text(page, '#error')}")`);
    });
    const steps = [...new Set((await page.evaluate(() => window.__progress)).map(([v]) => v).filter((v) => v > 0 && v < 16))];
    check(steps.length > 0, 'live progress with a token (the event stream carries the Authorization header)');
    check(await page.locator('#result img').evaluate((i) => i.naturalWidth > 0), 'the result image loads with a token');
    check(await page.evaluate(() => localStorage.getItem('sketchguide.token')) === TOKEN, 'the token is kept in localStorage');
    check((await cspViolations(page)).length === 0, `no CSP violation with a token (${await cspViolations(page)})`);
    passed(`token: the page asks for it on 401, refuses a wrong one, then generates with live progress (${steps.length} intermediate steps)`);
  } finally {
    await context.close();
    await srv.stop();
  }
}

async function main() {
  const started = Date.now();
  fs.mkdirSync(OUT, {recursive: true});
  selfTest();
  const {chromium} = loadPlaywright();
  check(fs.existsSync(CHROMIUM), `no browser at ${CHROMIUM}: install Debian's chromium (setup.sh does)`);
  check(fs.existsSync(BIN), `no server binary at ${BIN}: build it first (ninja -C build)`);
  const srv = await startServer();
  let browser = null;
  const problems = [];
  try {
    browser = await chromium.launch({executablePath: CHROMIUM, args: ['--no-sandbox']});
    const context = await browser.newContext({viewport: {width: 1400, height: 1000}});
    context.setDefaultTimeout(WAIT);
    const expect = {http: new Set()};
    const page = await openPage(context, problems, expect);
    const home = await page.goto(srv.url + '/');
    check(home.ok(), `GET / answers ${home.status()}`);
    const csp = home.headers()['content-security-policy'] || '';
    check(/default-src 'none'/.test(csp), `the page is served with a strict Content-Security-Policy (${csp})`);
    const info = (await apiJSON(page, `${srv.url}/v1/info`)).body;
    check(info.model && info.model.image_size > 0, 'v1/info describes the model');
    await page.waitForFunction(() => /×/.test(document.querySelector('#model-info').textContent), null, {timeout: WAIT});
    check(await page.title() !== '' && await page.locator('h1').count() === 1, 'the page has a title and one h1');
    passed(`page: / loads with its CSP; model ${info.model.name}, ${info.model.image_size}x${info.model.image_size}`);

    await progressRecorder(page);
    await drawing(page);
    const seed = await generation(page, info, srv);
    await history(page, seed);
    await cancelling(page, info, srv);
    await errors(page, info, expect);
    await persistence(page, info);
    await keyboard(page);
    await page.screenshot({path: path.join(OUT, 'sketchpad.png'), fullPage: true});
    await phone(page);
    await touchAndPen(page);
    const violations = await cspViolations(page);
    check(violations.length === 0, `no Content-Security-Policy violation (${violations.join('; ')})`);
    await context.close();
    await withToken(browser, problems);
    await accessibility(browser, srv, problems);
    check(problems.length === 0, `no console errors, page errors or CSP reports:\n  ${problems.join('\n  ')}`);
    passed('no console error, page error or CSP violation');
  } catch (err) {
    if (problems.length) console.error(`also seen in the browser:\n  ${problems.join('\n  ')}`);
    throw err;
  } finally {
    if (browser) await browser.close();
    await srv.stop();
  }
  console.log(`\nsketch pad: ${summary.length} groups of checks passed in ${((Date.now() - started) / 1000).toFixed(1)} s; ` +
    `screenshots in ${OUT} (sketchpad.png, sketchpad-phone.png)`);
}

main().catch((err) => {
  console.error(`\nFAIL: ${err instanceof Failure ? err.message : err.stack || err}`);
  process.exit(1);
});
