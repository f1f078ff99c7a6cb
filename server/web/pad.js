// The drawing surface: strokes kept as actions (for undo and redo), drawn on a square canvas, exported at any size.

const PAPER = '#ffffff';
const INK = '#000000';

/* A sketch pad on a square <canvas>. Its pixel size is the working resolution; the page scales it with CSS.
   Actions: {type: 'stroke', tool, width, points: [[x, y, w], ...]}, {type: 'image', image} (replaces the sketch,
   scaled to fit) and {type: 'clear'}. `base` is what lies under them (a restored sketch), not undoable. */
export class SketchPad {
  constructor(canvas, {onChange = () => {}} = {}) {
    this.canvas = canvas;
    this.ctx = canvas.getContext('2d');
    this.size = canvas.width;
    this.onChange = onChange;
    this.base = null;
    this.actions = [];
    this.undone = [];
    this.current = null;
    this.tool = 'pen';
    this.width = 8;
    this.render();
    this.listen();
  }

  get canUndo() { return this.actions.length > 0; }
  get canRedo() { return this.undone.length > 0; }

  /* Pointer Events: one stroke per pointer down..up, from mouse, pen (with pressure) or touch. */
  listen() {
    const c = this.canvas;
    c.addEventListener('pointerdown', (e) => {
      if (this.current || (e.pointerType === 'mouse' && e.button !== 0)) return;
      e.preventDefault();
      c.setPointerCapture(e.pointerId);
      const p = this.point(e);
      this.current = {type: 'stroke', tool: this.tool, width: this.width, points: [p], pointerId: e.pointerId};
      this.drawDot(this.current, p);
    });
    c.addEventListener('pointermove', (e) => {
      const s = this.current;
      if (!s || e.pointerId !== s.pointerId) return;
      const events = e.getCoalescedEvents ? e.getCoalescedEvents() : [];
      for (const ev of events.length ? events : [e]) {
        const p = this.point(ev);
        const q = s.points[s.points.length - 1];
        if (Math.hypot(p[0] - q[0], p[1] - q[1]) < 0.5) continue;
        s.points.push(p);
        this.drawSegment(s, q, p);
      }
    });
    const end = (e) => {
      const s = this.current;
      if (!s || e.pointerId !== s.pointerId) return;
      this.current = null;
      delete s.pointerId;
      this.push(s);
    };
    c.addEventListener('pointerup', end);
    c.addEventListener('pointercancel', end);
    c.addEventListener('lostpointercapture', end);
  }

  /* The event's position in canvas pixels, with the line width there (a pen's pressure thickens it). */
  point(e) {
    const r = this.canvas.getBoundingClientRect();
    const x = (e.clientX - r.left) * this.size / r.width;
    const y = (e.clientY - r.top) * this.size / r.height;
    const scale = e.pointerType === 'pen' && e.pressure > 0 ? 0.4 + 1.2 * e.pressure : 1;
    return [Math.round(x * 10) / 10, Math.round(y * 10) / 10, scale];
  }

  style(stroke) {
    this.ctx.strokeStyle = this.ctx.fillStyle = stroke.tool === 'eraser' ? PAPER : INK;
    this.ctx.lineCap = 'round';
    this.ctx.lineJoin = 'round';
  }

  drawDot(stroke, p) {
    this.style(stroke);
    this.ctx.beginPath();
    this.ctx.arc(p[0], p[1], stroke.width * p[2] / 2, 0, 2 * Math.PI);
    this.ctx.fill();
  }

  drawSegment(stroke, a, b) {
    this.style(stroke);
    this.ctx.lineWidth = stroke.width * (a[2] + b[2]) / 2;
    this.ctx.beginPath();
    this.ctx.moveTo(a[0], a[1]);
    this.ctx.lineTo(b[0], b[1]);
    this.ctx.stroke();
  }

  /* Draws an image over the whole canvas on white paper, scaled to fit and centred. */
  drawImageFit(image) {
    const w = image.naturalWidth || image.width, h = image.naturalHeight || image.height;
    const k = Math.min(this.size / w, this.size / h);
    this.ctx.fillStyle = PAPER;
    this.ctx.fillRect(0, 0, this.size, this.size);
    this.ctx.imageSmoothingQuality = 'high';
    this.ctx.drawImage(image, (this.size - w * k) / 2, (this.size - h * k) / 2, w * k, h * k);
  }

  /* Redraws everything from the base and the actions. */
  render() {
    this.ctx.fillStyle = PAPER;
    this.ctx.fillRect(0, 0, this.size, this.size);
    if (this.base) this.drawImageFit(this.base);
    for (const a of this.actions) this.apply(a);
  }

  apply(a) {
    if (a.type === 'clear') {
      this.ctx.fillStyle = PAPER;
      this.ctx.fillRect(0, 0, this.size, this.size);
    } else if (a.type === 'image') {
      this.drawImageFit(a.image);
    } else {
      const pts = a.points;
      this.drawDot(a, pts[0]);
      for (let i = 1; i < pts.length; i++) this.drawSegment(a, pts[i - 1], pts[i]);
    }
  }

  push(action) {
    this.actions.push(action);
    this.undone = [];
    if (action.type !== 'stroke') this.apply(action);
    this.onChange();
  }

  undo() {
    if (!this.canUndo) return;
    this.undone.push(this.actions.pop());
    this.render();
    this.onChange();
  }

  redo() {
    if (!this.canRedo) return;
    const a = this.undone.pop();
    this.actions.push(a);
    this.apply(a);
    this.onChange();
  }

  clear() { this.push({type: 'clear'}); }

  /* Replaces the sketch with an image (an undoable action); `restore` makes it the base instead, with no history. */
  setImage(image, {restore = false} = {}) {
    if (restore) {
      this.base = image;
      this.actions = [];
      this.undone = [];
      this.render();
      this.onChange();
    } else {
      this.push({type: 'image', image});
    }
  }

  /* The sketch as a data URL at the working resolution (to keep it across reloads). */
  toDataURL() { return this.canvas.toDataURL('image/png'); }

  /* The sketch as a PNG Blob of size x size pixels, black strokes on white; resolves to the Blob. */
  toBlob(size) {
    const out = document.createElement('canvas');
    out.width = out.height = size;
    const ctx = out.getContext('2d');
    ctx.fillStyle = PAPER;
    ctx.fillRect(0, 0, size, size);
    ctx.imageSmoothingEnabled = true;
    ctx.imageSmoothingQuality = 'high';
    ctx.drawImage(this.canvas, 0, 0, size, size);
    return new Promise((resolve, reject) =>
      out.toBlob((b) => (b ? resolve(b) : reject(new Error('the sketch could not be encoded as PNG'))), 'image/png'));
  }
}

/* Loads an image from a URL (a data: or blob: URL); resolves to the decoded HTMLImageElement. */
export function loadImage(url) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error('not an image this browser can read'));
    img.src = url;
  });
}
