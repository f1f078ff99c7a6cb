// The sketch pad page: wires the drawing pad, the controls and the API (generate, live progress, cancel, history).
import {SketchPad, loadImage} from './pad.js';
import {Controls} from './controls.js';
import {ApiError, request, getJSON, followJob, jobUrl, imageUrl, getToken, setToken, sentence} from './api.js';

const $ = (selector) => document.querySelector(selector);
const SKETCH_KEY = 'sketchguide.sketch';
const TOOL_KEY = 'sketchguide.tool';
const PHONE = window.matchMedia('(max-width: 699px)');

const state = {
  size: 64,     // the side of the model's images, the resolution the sketch is sent at (v1/info)
  job: null,    // the job being run: {id, seed, params, sketchURL, cancelRequested, started}
  results: 0,   // results so far, to number the history
};

const pad = new SketchPad($('#pad'), {onChange: sketchChanged});
const controls = new Controls($('#controls'));

/* ---- messages ---- */

function showError(err) {
  const box = $('#error');
  box.textContent = err instanceof Error ? err.message : String(err);
  if (err instanceof ApiError) {
    if (err.param) controls.flag(err.param);
    if (err.status === 401) showAuth();
  }
}

function clearError() { $('#error').textContent = ''; }

/* The aria-live status line: phases only (queued, generating, done), not every step. */
function setStatus(text) { $('#status').textContent = text; }

function setProgress(step, total) {
  const bar = $('#progress');
  bar.max = Math.max(1, total);
  bar.value = Math.min(step, bar.max);
  $('#step').textContent = `Step ${step} of ${total}`;
}

/* ---- the sketch ---- */

let saveTimer = 0;

function updateHistoryButtons() {
  $('#undo').disabled = !pad.canUndo;
  $('#redo').disabled = !pad.canRedo;
}

function saveSketch() {
  clearTimeout(saveTimer);
  saveTimer = 0;
  try { localStorage.setItem(SKETCH_KEY, pad.toDataURL()); } catch { /* full or disabled: not kept */ }
}

/* Keeps the sketch across reloads: saved shortly after each change, and at once when the page is left. */
function sketchChanged() {
  updateHistoryButtons();
  clearTimeout(saveTimer);
  saveTimer = setTimeout(saveSketch, 300);
}

async function restoreSketch() {
  let url = null;
  try { url = localStorage.getItem(SKETCH_KEY); } catch { url = null; }
  if (!url || !url.startsWith('data:image/')) return;
  try { pad.setImage(await loadImage(url), {restore: true}); } catch { /* a broken saved sketch: start blank */ }
}

function setTool(tool) {
  pad.tool = tool;
  $('#tool-pen').setAttribute('aria-pressed', String(tool === 'pen'));
  $('#tool-eraser').setAttribute('aria-pressed', String(tool === 'eraser'));
  $('#pad').dataset.tool = tool;
  saveTool();
}

function setWidth(width) {
  const input = $('#width');
  width = Math.max(Number(input.min), Math.min(Number(input.max), Math.round(width)));
  input.value = String(width);
  $('#width-out').textContent = String(width);
  pad.width = width;
  saveTool();
}

function saveTool() {
  try { localStorage.setItem(TOOL_KEY, JSON.stringify({tool: pad.tool, width: pad.width})); } catch { /* fine */ }
}

function restoreTool() {
  let saved = null;
  try { saved = JSON.parse(localStorage.getItem(TOOL_KEY) || 'null'); } catch { saved = null; }
  setWidth(saved && Number.isFinite(saved.width) ? saved.width : Number($('#width').value));
  setTool(saved && saved.tool === 'eraser' ? 'eraser' : 'pen');
}

async function openImageFile(file) {
  if (!file) return;
  const url = URL.createObjectURL(file);
  try {
    pad.setImage(await loadImage(url));
    clearError();
  } catch {
    showError(new Error(`Sketch: “${file.name}” is not an image this browser can read.`));
  } finally {
    URL.revokeObjectURL(url);
  }
}

/* ---- the service ---- */

function showAuth() {
  const box = $('#auth');
  if (box.hidden) {
    box.hidden = false;
    $('#token').value = getToken();
    $('#token').focus();
  }
}

/* Reads v1/info: the model's size, defaults, limits and samplers. `first`: a first visit takes the defaults. */
async function loadInfo(first) {
  let info;
  try {
    info = await getJSON('v1/info');
  } catch (err) {
    $('#model-info').textContent = err.status === 401 ? 'Needs an access token.' : 'Not connected.';
    showError(err);
    return;
  }
  $('#auth').hidden = true;
  controls.applyInfo(info);
  if (first) controls.reset();
  if (!info.model) {
    $('#model-info').textContent = 'The model is loading…';
    setTimeout(() => loadInfo(first), 2000);
    return;
  }
  const m = info.model;
  state.size = m.image_size;
  $('#model-info').textContent =
    `Model ${m.name} · ${m.image_size} × ${m.image_size} px · ${m.devices}` + (m.has_lgp ? '' : ' · no sketch guidance');
  $('#sketch-size').textContent = `sent as a ${m.image_size} × ${m.image_size} black-on-white PNG`;
}

/* ---- generating ---- */

function setBusy(busy) {
  const gen = $('#generate');
  gen.setAttribute('aria-disabled', String(busy));
  gen.textContent = busy ? 'Generating…' : 'Generate';
  $('#cancel').hidden = !busy;
  $('#cancel').disabled = false;
  document.body.classList.toggle('busy', busy);
}

function addSeed(seed, i) {
  try { return (BigInt(seed) + BigInt(i)).toString(); } catch { return String(seed); }
}

function jobErrorText(error) {
  const msg = error && error.message;
  switch (error && error.code) {
    case 'timeout': return 'The job took too long and was stopped (timeout).';
    case 'out_of_memory': return 'The service ran out of memory. Try fewer images.';
    case 'shutdown': return 'The service shut down before the job finished. Try again in a minute.';
    case 'invalid': return `The model refused the settings: ${sentence(msg)}`;
    default: return `The generation failed: ${sentence(msg || 'unknown error')}`;
  }
}

async function generate() {
  if (state.job) return;
  clearError();
  const params = controls.values();
  const form = new FormData();
  form.append('prompt', params.prompt);
  if (params.negative_prompt) form.append('negative_prompt', params.negative_prompt);
  for (const k of ['beta', 'stop', 'steps', 'cfg', 'sampler', 'n']) form.append(k, params[k].trim());
  if (params.seed.trim()) form.append('seed', params.seed.trim());

  const job = {id: null, seed: null, params, sketchURL: pad.toDataURL(), cancelRequested: false,
    started: performance.now()};
  state.job = job;
  setBusy(true);
  setProgress(0, Number(params.steps) || 0);
  setStatus('Sending the sketch…');
  if (PHONE.matches) $('.result').scrollIntoView({behavior: 'smooth', block: 'start'});
  try {
    form.append('sketch', await pad.toBlob(state.size), 'sketch.png');
    const res = await request('v1/generate', {method: 'POST', body: form, headers: {Prefer: 'respond-async'}});
    const accepted = await res.json();
    job.id = accepted.id;
    job.seed = res.headers.get('X-Seed') || String(accepted.seed);
    $('#job').dataset.jobId = job.id;
    setStatus('Queued…');
    if (job.cancelRequested) await sendCancel(job);
    const end = await followJob(job.id, (name, data) => onJobEvent(job, name, data));
    await finish(job, end);
  } catch (err) {
    setStatus(err.status === 401 ? 'Needs an access token.' : 'Not generated.');
    $('#step').textContent = 'Idle';
    showError(err);
  } finally {
    state.job = null;
    setBusy(false);
  }
}

function onJobEvent(job, name, data) {
  const total = data.total ?? data.progress?.total;
  const step = data.step ?? data.progress?.step ?? 0;
  if (total) setProgress(step, total);
  if (job.cancelRequested) return;
  if (data.status === 'queued') {
    const ahead = data.queue_position;
    setStatus(ahead > 0 ? `Waiting in line: ${ahead} job${ahead > 1 ? 's' : ''} ahead…` : 'Waiting for a worker…');
  } else if (data.status === 'running' && $('#status').textContent !== 'Generating…') {
    setStatus('Generating…');
  }
}

/* Shows the end of a job: its images (fetched as blobs, so the token goes along), or why it did not finish. */
async function finish(job, end) {
  setProgress(end.step, end.total);
  if (end.status === 'cancelled') {
    setStatus(sentence(end.error?.message || 'cancelled'));
    if (end.error?.code === 'shutdown') showError(new Error(jobErrorText(end.error)));
    return;
  }
  if (end.status !== 'succeeded') {
    setStatus('Failed.');
    showError(new Error(jobErrorText(end.error)));
    return;
  }
  const count = Array.isArray(end.images) ? end.images.length : Number(job.params.n) || 1;
  const images = [];
  for (let i = 0; i < count; i++) {
    const blob = await (await request(imageUrl(job.id, i))).blob();
    images.push({url: URL.createObjectURL(blob), seed: addSeed(job.seed, i)});
  }
  const secs = ((performance.now() - job.started) / 1000).toFixed(1);
  showResult(job, images, secs);
  addHistory(job, images);
  setStatus(`Done in ${secs} s: ${count > 1 ? count + ' images, seeds from' : 'seed'} ${job.seed}.`);
}

function downloadLink(image, text) {
  const a = document.createElement('a');
  a.className = 'button';
  a.href = image.url;
  a.download = `sketchguide-${image.seed}.png`;
  a.textContent = text;
  return a;
}

function showResult(job, images, secs) {
  const frame = $('#result');
  frame.dataset.count = String(images.length);
  frame.replaceChildren(...images.map((im) => {
    const img = document.createElement('img');
    img.src = im.url;
    img.width = img.height = state.size;
    img.alt = `Result for “${job.params.prompt}”, seed ${im.seed}`;
    img.className = 'result-image';
    return img;
  }));
  $('#downloads').replaceChildren(...images.map((im) =>
    downloadLink(im, images.length > 1 ? `Download seed ${im.seed}` : `Download PNG (seed ${im.seed})`)));
  $('#result-meta').textContent = `${state.size} × ${state.size} px · ${secs} s`;
}

async function sendCancel(job) {
  try {
    await request(jobUrl(job.id), {method: 'DELETE'});
  } catch (err) {
    if (err.status !== 409) showError(err);    // 409: it had just finished
  }
}

/* Cancels the running job: at once if it is known, else as soon as the service has named it. */
async function cancel() {
  const job = state.job;
  if (!job || job.cancelRequested) return;
  job.cancelRequested = true;
  $('#cancel').disabled = true;
  setStatus('Cancelling…');
  if (job.id) await sendCancel(job);
}

/* ---- history ---- */

function param(dl, name, value) {
  const pair = document.createElement('div');
  const dt = document.createElement('dt');
  const dd = document.createElement('dd');
  dt.textContent = name;
  dd.textContent = value;
  pair.append(dt, dd);
  dl.append(pair);
}

function addHistory(job, images) {
  const number = ++state.results;
  const p = job.params;
  const li = $('#history-item').content.firstElementChild.cloneNode(true);
  li.dataset.jobId = job.id;
  const thumb = li.querySelector('.result-thumb');
  thumb.src = images[0].url;
  thumb.alt = `Result ${number}`;
  const sketch = li.querySelector('.sketch-thumb');
  sketch.src = job.sketchURL;
  sketch.alt = `Sketch of result ${number}`;
  li.querySelector('.entry-prompt').textContent = p.prompt;
  li.querySelector('.entry-negative').textContent = p.negative_prompt ? `not: ${p.negative_prompt}` : '';
  const dl = li.querySelector('.params');
  param(dl, 'β', p.beta);
  param(dl, 'stop', p.stop);
  param(dl, 'steps', p.steps);
  param(dl, 'cfg', p.cfg);
  param(dl, 'seed', images.length > 1 ? `${images[0].seed}…${images[images.length - 1].seed}` : images[0].seed);
  param(dl, 'sampler', p.sampler);
  if (images.length > 1) param(dl, 'images', images.length);
  const use = li.querySelector('.use-settings');
  use.setAttribute('aria-label', `Use these settings (result ${number})`);
  use.addEventListener('click', () => {
    controls.set({...p, seed: job.seed});
    clearError();
    setStatus(`Settings of result ${number} restored (seed ${job.seed}).`);
  });
  const useSketch = li.querySelector('.use-sketch');
  useSketch.setAttribute('aria-label', `Use this sketch (result ${number})`);
  useSketch.addEventListener('click', async () => {
    pad.setImage(await loadImage(job.sketchURL));
    setStatus(`Sketch of result ${number} restored (Undo brings yours back).`);
  });
  const dlink = li.querySelector('.download');
  dlink.href = images[0].url;
  dlink.download = `sketchguide-${images[0].seed}.png`;
  dlink.setAttribute('aria-label', `Download result ${number} (seed ${images[0].seed})`);
  $('#history').prepend(li);
  $('#history-empty').hidden = true;
}

/* ---- wiring ---- */

function isTyping(target) {
  if (!(target instanceof Element)) return false;
  if (target.closest('textarea, select, [contenteditable="true"]')) return true;
  return target.tagName === 'INPUT' && !['range', 'checkbox', 'radio', 'button', 'file'].includes(target.type);
}

function onKey(e) {
  const ctrl = e.ctrlKey || e.metaKey;
  const key = e.key.toLowerCase();
  if (ctrl && e.key === 'Enter') {
    e.preventDefault();
    generate();
  } else if (ctrl && !e.altKey && key === 'z' && !isTyping(e.target)) {
    e.preventDefault();
    if (e.shiftKey) pad.redo(); else pad.undo();
  } else if (ctrl && !e.altKey && key === 'y' && !isTyping(e.target)) {
    e.preventDefault();
    pad.redo();
  } else if (e.key === 'Escape' && state.job) {
    cancel();
  } else if (!ctrl && !e.altKey && !isTyping(e.target)) {
    if (key === 'p') setTool('pen');
    else if (key === 'e') setTool('eraser');
    else if (e.key === '[') setWidth(pad.width - 1);
    else if (e.key === ']') setWidth(pad.width + 1);
  }
}

function wire() {
  $('#tool-pen').addEventListener('click', () => setTool('pen'));
  $('#tool-eraser').addEventListener('click', () => setTool('eraser'));
  $('#width').addEventListener('input', (e) => setWidth(Number(e.target.value)));
  $('#undo').addEventListener('click', () => pad.undo());
  $('#redo').addEventListener('click', () => pad.redo());
  $('#clear').addEventListener('click', () => pad.clear());
  $('#upload').addEventListener('click', () => $('#upload-file').click());
  $('#upload-file').addEventListener('change', (e) => {
    openImageFile(e.target.files[0]);
    e.target.value = '';
  });
  const frame = $('.canvas-frame');
  frame.addEventListener('dragover', (e) => { e.preventDefault(); frame.classList.add('drop'); });
  frame.addEventListener('dragleave', () => frame.classList.remove('drop'));
  frame.addEventListener('drop', (e) => {
    e.preventDefault();
    frame.classList.remove('drop');
    openImageFile(e.dataTransfer.files[0]);
  });

  $('#controls').addEventListener('submit', (e) => { e.preventDefault(); generate(); });
  $('#cancel').addEventListener('click', cancel);
  $('#reset').addEventListener('click', () => { controls.reset(); clearError(); });
  $('#beta-reset').addEventListener('click', () => controls.resetOne('beta'));
  $('#stop-reset').addEventListener('click', () => controls.resetOne('stop'));
  $('#seed-random').addEventListener('click', () => {
    const r = new Uint32Array(1);
    crypto.getRandomValues(r);
    controls.set({seed: String(r[0])});
  });

  $('#auth-form').addEventListener('submit', (e) => {
    e.preventDefault();
    setToken($('#token').value.trim());
    clearError();
    loadInfo(false);
  });
  $('#token-forget').addEventListener('click', () => {
    setToken('');
    $('#token').value = '';
    $('#token').focus();
  });
  document.addEventListener('keydown', onKey);
  window.addEventListener('pagehide', () => { if (saveTimer) saveSketch(); });
}

wire();
controls.markDefaults();
const hadSettings = controls.load();
restoreTool();
updateHistoryButtons();
restoreSketch();
loadInfo(!hadSettings);
