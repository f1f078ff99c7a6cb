// The generation controls: reading and setting them, defaults from v1/info, and keeping them across reloads.

const STORE_KEY = 'sketchguide.settings';

/* The paper's values (Voynov et al. 2023), marked on the sliders whatever the model's defaults are. */
export const PAPER = {beta: 1.6, stop: 0.5};

/* Used until v1/info answers (the bundled model's defaults). */
export const FALLBACK_DEFAULTS = {
  prompt: '', negative_prompt: '', beta: 1.6, stop: 0.5, steps: 50, cfg: 8, seed: '', sampler: 'ddim', n: 1,
};

const FIELDS = Object.keys(FALLBACK_DEFAULTS);

export class Controls {
  /* form: the <form> holding one element per field, each with the field's name as its id. */
  constructor(form) {
    this.form = form;
    this.el = Object.fromEntries(FIELDS.map((f) => [f, form.querySelector('#' + f)]));
    this.defaults = {...FALLBACK_DEFAULTS};
    this.form.addEventListener('input', (e) => {
      e.target.removeAttribute('aria-invalid');
      this.showValues();
      this.save();
    });
    this.form.addEventListener('change', () => this.save());
  }

  /* Applies v1/info: the model's defaults, the limits and the samplers; keeps the values already chosen. */
  applyInfo(info) {
    const d = info.defaults || {};
    for (const k of ['beta', 'stop', 'steps', 'cfg', 'sampler']) if (d[k] !== undefined) this.defaults[k] = d[k];
    const lim = info.limits || {};
    if (lim.max_steps) this.el.steps.max = lim.max_steps;
    if (lim.max_images) this.el.n.max = lim.max_images;
    if (Array.isArray(info.samplers) && info.samplers.length) {
      const current = this.el.sampler.value;
      this.el.sampler.replaceChildren(...info.samplers.map((s) => new Option(s, s)));
      this.el.sampler.value = info.samplers.includes(current) ? current : this.defaults.sampler;
    }
  }

  /* The current values, as strings the way the form holds them. */
  values() {
    return Object.fromEntries(FIELDS.map((f) => [f, this.el[f].value]));
  }

  /* Sets the given fields (others are left alone), then shows and saves them. */
  set(values) {
    for (const [k, v] of Object.entries(values)) {
      const el = this.el[k];
      if (!el || v === undefined || v === null) continue;
      if (el.tagName === 'SELECT' && ![...el.options].some((o) => o.value === String(v))) continue;
      el.value = String(v);
      el.removeAttribute('aria-invalid');
    }
    this.showValues();
    this.save();
  }

  /* Back to the model's defaults, keeping the prompt and the negative prompt. */
  reset() {
    const {prompt, negative_prompt, ...rest} = this.defaults;
    this.set(rest);
  }

  resetOne(name) { this.set({[name]: PAPER[name]}); }

  /* The slider read-outs, and "k of N steps" for stop. */
  showValues() {
    const v = this.values();
    const out = (id, text) => { const o = this.form.querySelector('#' + id); if (o) o.value = o.textContent = text; };
    out('beta-out', Number(v.beta).toFixed(1));
    const steps = Math.max(1, Math.round(Number(v.steps)) || 1);
    out('stop-out', `${Number(v.stop).toFixed(2)} · ${Math.round(Number(v.stop) * steps)} of ${steps} steps`);
  }

  /* Places the "paper default" marks under the sliders (their left edge at the default's fraction). */
  markDefaults() {
    for (const name of ['beta', 'stop']) {
      const input = this.el[name];
      const mark = this.form.querySelector(`#${name}-mark`);
      const frac = (PAPER[name] - Number(input.min)) / (Number(input.max) - Number(input.min));
      mark.style.setProperty('--at', String(frac));
      mark.textContent = `paper ${PAPER[name]}`;
    }
  }

  save() {
    try { localStorage.setItem(STORE_KEY, JSON.stringify(this.values())); } catch { /* storage disabled */ }
  }

  /* Restores the saved values; returns whether there were any. */
  load() {
    let saved = null;
    try { saved = JSON.parse(localStorage.getItem(STORE_KEY) || 'null'); } catch { saved = null; }
    if (saved && typeof saved === 'object') {
      this.set(Object.fromEntries(FIELDS.filter((f) => typeof saved[f] === 'string').map((f) => [f, saved[f]])));
    }
    this.showValues();
    return !!saved;
  }

  /* Marks a field invalid (aria-invalid) and moves the focus to it; returns whether the field exists. */
  flag(param) {
    const el = this.el[param];
    if (!el) return false;
    el.setAttribute('aria-invalid', 'true');
    el.focus();
    return true;
  }
}
