// The sketchguide HTTP API from the page: relative URLs, the bearer token, errors in plain words, a job's events.

const TOKEN_KEY = 'sketchguide.token';

/* What the page calls each request parameter (the API's `param` names). */
export const LABELS = {
  prompt: 'Prompt', negative_prompt: 'Negative prompt', sketch: 'Sketch', beta: 'Sketch strength (beta)',
  stop: 'Guided part (stop)', stop_step: 'Guided steps', steps: 'Steps', cfg: 'Guidance scale (cfg)', seed: 'Seed',
  sampler: 'Sampler', n: 'Images', eta: 'Eta', invert: 'Invert', timeout_ms: 'Timeout',
};

/* An API failure: `message` is for people; status 0 means the service could not be reached. */
export class ApiError extends Error {
  constructor(message, {status = 0, code = 'network', param = null, retryAfter = null} = {}) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.code = code;
    this.param = param;
    this.retryAfter = retryAfter;
  }
}

export function getToken() {
  try { return localStorage.getItem(TOKEN_KEY) || ''; } catch { return ''; }
}

export function setToken(token) {
  try {
    if (token) localStorage.setItem(TOKEN_KEY, token); else localStorage.removeItem(TOKEN_KEY);
  } catch { /* storage disabled: the token lasts until the page is closed */ }
}

/* s as a sentence: a capital first letter and a closing full stop. */
export function sentence(s) {
  s = String(s ?? '').trim();
  if (!s) return s;
  s = s[0].toUpperCase() + s.slice(1);
  return /[.!?]$/.test(s) ? s : s + '.';
}

function seconds(retryAfter, fallback) {
  const n = Number.parseInt(retryAfter, 10);
  return Number.isFinite(n) && n >= 0 ? n : fallback;
}

/* The plain-words message for an error answer: status, the body's {code, message, param}, Retry-After. */
export function describeError(status, code, message, param, retryAfter) {
  const label = param && LABELS[param] ? LABELS[param] : param;
  let detail = message || '';
  if (param && detail.startsWith(param + ':')) detail = detail.slice(param.length + 1).trim();
  switch (status) {
    case 400:
    case 422:
      return label ? `${label}: ${detail.replace(/\.?$/, '.')}` : sentence(detail || 'The request was not accepted');
    case 401:
      return 'This service needs an access token: enter it in the Access token box above.';
    case 404:
    case 410:
      return 'That job is no longer on the service (finished jobs are kept for a while only).';
    case 413:
      return 'The sketch is too large to send. Try a smaller image.';
    case 415:
      return param === 'sketch' ? 'Sketch: the image must be a PNG or JPEG file.' : sentence(detail);
    case 429:
      return `The service is busy: too many jobs are waiting. Try again in ${seconds(retryAfter, 5)} s.`;
    case 503:
      return code === 'draining'
        ? `The service is shutting down. Try again in ${seconds(retryAfter, 30)} s.`
        : `The model is still loading. Try again in ${seconds(retryAfter, 5)} s.`;
    case 504:
      return 'The job took too long and was stopped (timeout).';
    case 500:
      return `The service failed: ${sentence(detail || 'internal error')}`;
    default:
      return sentence(detail || `The service answered ${status}`);
  }
}

async function toError(res) {
  let body = null;
  try { body = await res.json(); } catch { /* not JSON: described by its status alone */ }
  const e = (body && body.error) || {};
  const retryAfter = res.headers.get('Retry-After');
  return new ApiError(describeError(res.status, e.code, e.message, e.param, retryAfter),
    {status: res.status, code: e.code || 'http_' + res.status, param: e.param || null, retryAfter});
}

/* fetch() with the token; resolves to the Response when it is 2xx, else rejects with an ApiError.
   An abort (signal) rejects with the AbortError itself. */
export async function request(url, {method = 'GET', body, headers = {}, signal} = {}) {
  const h = new Headers(headers);
  const token = getToken();
  if (token) h.set('Authorization', 'Bearer ' + token);
  let res;
  try {
    res = await fetch(url, {method, body, headers: h, signal, cache: 'no-store'});
  } catch (err) {
    if (err.name === 'AbortError') throw err;
    throw new ApiError('Could not reach the service. Check that it is running and that you are online, then try again.');
  }
  if (!res.ok) throw await toError(res);
  return res;
}

export async function getJSON(url, opts) {
  return (await request(url, opts)).json();
}

export const jobUrl = (id) => `v1/jobs/${encodeURIComponent(id)}`;
export const imageUrl = (id, i) => `${jobUrl(id)}/images/${i}`;

const FINAL = new Set(['succeeded', 'failed', 'cancelled']);

/* Splits text/event-stream text into events; returns [events, rest] where rest is an unfinished event. */
export function parseEvents(text) {
  const events = [];
  const blocks = text.replace(/\r\n?/g, '\n').split('\n\n');
  const rest = blocks.pop();
  for (const block of blocks) {
    let name = 'message';
    const data = [];
    for (const line of block.split('\n')) {
      if (line.startsWith('event:')) name = line.slice(6).trim();
      else if (line.startsWith('data:')) data.push(line.slice(5).replace(/^ /, ''));
    }
    if (data.length) {
      try { events.push({name, data: JSON.parse(data.join('\n'))}); } catch { /* not JSON: not one of ours */ }
    }
  }
  return [events, rest];
}

/* Follows job `id` until it ends, calling onEvent(name, data) for 'status' and 'progress'; resolves to the
   final state {status, step, total, error}. It reads the event stream with fetch() rather than EventSource so
   that the bearer token goes along; if the stream breaks it polls the job's status instead. */
export async function followJob(id, onEvent, signal) {
  try {
    const res = await request(`${jobUrl(id)}/events`, {headers: {Accept: 'text/event-stream'}, signal});
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = '';
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      let events;
      [events, buffer] = parseEvents(buffer + value);
      for (const ev of events) {
        if (ev.name === 'end') {
          reader.cancel().catch(() => {});
          return ev.data;
        }
        onEvent(ev.name, ev.data);
      }
    }
  } catch (err) {
    if (err.name === 'AbortError' || (err instanceof ApiError && err.status !== 0)) throw err;
  }
  return pollJob(id, onEvent, signal);
}

const sleep = (ms, signal) => new Promise((resolve, reject) => {
  const t = setTimeout(resolve, ms);
  signal?.addEventListener('abort', () => { clearTimeout(t); reject(new DOMException('aborted', 'AbortError')); },
    {once: true});
});

/* Polls GET v1/jobs/{id} until the job ends; same contract as followJob. */
export async function pollJob(id, onEvent, signal) {
  let failures = 0;
  for (;;) {
    let job;
    try {
      job = await getJSON(jobUrl(id), {signal});
      failures = 0;
    } catch (err) {
      if (err.name === 'AbortError' || err.status !== 0 || ++failures > 10) throw err;
      await sleep(1000, signal);
      continue;
    }
    if (FINAL.has(job.status)) {
      return {status: job.status, step: job.progress.step, total: job.progress.total, error: job.error};
    }
    onEvent(job.status === 'running' ? 'progress' : 'status', {...job, ...job.progress});
    await sleep(250, signal);
  }
}
