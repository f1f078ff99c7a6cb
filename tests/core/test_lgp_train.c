/* Tests of core/lgp_train on the bundled model (argument 1): the same per-step losses and held-out figures as the
 * Python trainer on the pairs in argument 2 (reference from tools/gen_lgp_train_vectors.py, argument 3); a short
 * training run lowers the loss and writes the predictor, its description and the manifest; an interrupted run
 * resumes to the same weights as an uninterrupted one; the directory loader reads pairs as train_lgp.py's
 * load_dir; bad inputs give clear errors. Other data: small procedural discs and squares drawn here. */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "edges.h"
#include "image.h"
#include "lgp_train.h"

#include "check.h"

#define S 64

static const char *COLOURS[] = {"red", "green", "blue", "yellow", "purple", "white"};
static const uint8_t RGB[][3] = {{215, 35, 35}, {40, 160, 60}, {35, 80, 215}, {240, 215, 40}, {135, 55, 185},
                                 {240, 240, 240}};

static uint32_t lcg(uint32_t *s) { return (*s = *s * 1664525u + 1013904223u) >> 8; }

/* Image k: a disc or square of one colour on a plain background of another, its exact outline and caption. */
static void draw(int k, uint8_t *rgb, uint8_t *edges, char *caption, size_t caplen) {
  uint32_t s = 12345u + 7919u * (uint32_t)k;
  int fg = (int)(lcg(&s) % 6), bg = (fg + 1 + (int)(lcg(&s) % 5)) % 6, square = (int)(lcg(&s) % 2);
  double r = 9 + lcg(&s) % 10, cx = r + 2 + lcg(&s) % (unsigned)(S - 2 * r - 3), cy = r + 2 + lcg(&s) % (unsigned)(S - 2 * r - 3);
  for (int y = 0; y < S; y++)
    for (int x = 0; x < S; x++) {
      double dx = x + 0.5 - cx, dy = y + 0.5 - cy;
      double d = square ? fmax(fabs(dx), fabs(dy)) - r : sqrt(dx * dx + dy * dy) - r;
      memcpy(rgb + (y * S + x) * 3, RGB[d < 0 ? fg : bg], 3);
      edges[y * S + x] = fabs(d) < 0.75 ? 255 : 0;
    }
  snprintf(caption, caplen, "a %s %s on a plain %s background", COLOURS[fg], square ? "square" : "circle",
           COLOURS[bg]);
}

static sg_lgp_data *make_data(int first, int n) {
  sg_lgp_data *d = sg_lgp_data_new(S, NULL, 0);
  static uint8_t rgb[S * S * 3], edges[S * S];
  char cap[128], err[256] = "";
  for (int k = first; d && k < first + n; k++) {
    draw(k, rgb, edges, cap, sizeof cap);
    CHECK(sg_lgp_data_add(d, rgb, S, S, edges, cap, err, sizeof err) == 0, "add: %s", err);
  }
  return d;
}

typedef struct {
  int32_t n, stop_at;
  double loss[256];
  int checkpoints, held, saved;
} progress_log;

static int on_progress(void *user, const sg_lgp_progress *p) {
  progress_log *l = user;
  if (p->phase == SG_LGP_PHASE_STEP && l->n < 256) l->loss[l->n++] = p->loss;
  l->checkpoints += p->phase == SG_LGP_PHASE_CHECKPOINT;
  l->held += p->phase == SG_LGP_PHASE_HELD_OUT;
  l->saved += p->phase == SG_LGP_PHASE_SAVED;
  return p->phase == SG_LGP_PHASE_STEP && p->step == l->stop_at;
}

static char tmpdir[256];
static char path_buf[400];
static const char *tmp(const char *name) {
  snprintf(path_buf, sizeof path_buf, "%s/%s", tmpdir, name);
  return path_buf;
}

static sg_lgp_train_params small_params(progress_log *log) {
  sg_lgp_train_params p = sg_lgp_train_default_params();
  p.steps = 30;
  p.batch = 6;
  p.lr = 1e-3;
  p.seed = 3;
  p.checkpoint_every = 10;
  p.progress = on_progress;
  p.progress_user = log;
  return p;
}

/* The LGP in file path evaluated on fixed random taps (eval mode): a fingerprint of its weights. */
static int fingerprint(const sg_model *m, const char *path, float *out, size_t n) {
  const sg_model_info *in = sg_model_get_info(m);
  ts_module *l = ts_module_load(path, "cpu", TS_FLOAT32, 0);
  ts_rng *g = ts_rng_new(5);
  int64_t shape[4] = {2, in->tap_channels, in->latent_size, in->latent_size}, one = 2, t[2] = {10, 900};
  size_t len = (size_t)2 * in->tap_channels * in->latent_size * in->latent_size;
  float *x = malloc(len * sizeof *x);
  int rc = !l || !g || !x || ts_rng_randn(g, x, shape, 4);
  ts_tensor *xt = rc ? NULL : ts_tensor_from_host(x, TS_FLOAT32, shape, 4, "cpu");
  ts_tensor *tt = rc ? NULL : ts_tensor_from_host(t, TS_INT64, &one, 1, "cpu"), *p = NULL;
  if (!rc) p = ts_lgp_forward(l, &xt, 1, tt);
  rc = !p || ts_tensor_to_host(p, out, n * sizeof *out);
  ts_tensor_free(xt), ts_tensor_free(tt), ts_tensor_free(p);
  ts_rng_free(g);
  ts_module_free(l);
  free(x);
  return rc ? -1 : 0;
}

static double mean(const double *v, int n) {
  double s = 0;
  for (int i = 0; i < n; i++) s += v[i];
  return s / n;
}

/* The Python trainer's figures on the same pairs and settings, computed on this machine when the test is built
 * (tools/gen_lgp_train_vectors.py): bit for bit where both trainers pick the same kernels, hence the small tolerance. */
static void test_python_parity(sg_model *m, const char *model_dir, const char *pairs, const char *ref_path) {
  json_error_t jerr;
  json_t *ref = json_load_file(ref_path, 0, &jerr), *par = json_object_get(ref, "params");
  CHECK(ref, "%s: %s", ref_path, jerr.text);
  if (!ref) return;
  char err[1024] = "";
  sg_lgp_data *d = sg_lgp_data_load_dir(pairs, S, err, sizeof err);
  CHECK(d && sg_lgp_data_count(d) == json_integer_value(json_object_get(ref, "pairs")), "pairs: %s", err);
  progress_log log = {0, -1, {0}, 0, 0, 0};
  sg_lgp_train_params p = sg_lgp_train_default_params();
  p.steps = (int32_t)json_integer_value(json_object_get(par, "steps"));
  p.batch = (int32_t)json_integer_value(json_object_get(par, "batch"));
  p.lr = json_number_value(json_object_get(par, "lr"));
  p.seed = json_integer_value(json_object_get(par, "seed"));
  p.time_dim = (int32_t)json_integer_value(json_object_get(par, "time_dim"));
  p.out = tmp("parity.pt");
  p.checkpoint = "";
  p.progress = on_progress;
  p.progress_user = &log;
  sg_lgp_train_result r;
  int rc = d ? sg_lgp_train(m, model_dir, d, d, p, &r, err, sizeof err) : -1;
  CHECK(rc == 0 && log.n == p.steps, "train: %s", err);
  double worst = 0;
  int exact = 1;
  json_t *losses = json_object_get(ref, "losses"), *held = json_object_get(ref, "held_out_loss");
  for (int i = 0; rc == 0 && i < log.n; i++) {
    double want = json_number_value(json_array_get(losses, (size_t)i));
    exact &= log.loss[i] == want;
    worst = fmax(worst, fabs(log.loss[i] - want) / want);
  }
  for (int k = 0; rc == 0 && k < r.n_held_out; k++) {
    char key[16];
    snprintf(key, sizeof key, "%d", r.held_out_t[k]);
    double want = json_number_value(json_object_get(held, key));
    exact &= r.held_out_loss[k] == want;
    worst = fmax(worst, fabs(r.held_out_loss[k] - want) / want);
  }
  printf("Python parity (%d steps, held-out at 5 t): %s, largest relative difference %.3g\n", log.n,
         exact ? "bit for bit" : "not bit for bit", worst);
  CHECK(rc == 0 && worst <= 1e-3, "losses differ from the Python trainer's by up to %g (relative)", worst);
  sg_lgp_data_free(d);
  json_decref(ref);
}

/* Training lowers the loss and writes the predictor and its description; an interruption resumes exactly. */
static void test_train(sg_model *m, const char *model_dir) {
  sg_lgp_data *train = make_data(0, 24), *held = make_data(1000, 8);
  char err[1024] = "", out_a[512], out_b[512];
  progress_log la = {0, -1, {0}, 0, 0, 0};
  sg_lgp_train_params p = small_params(&la);
  snprintf(out_a, sizeof out_a, "%s", tmp("a.pt"));
  p.out = out_a;
  sg_lgp_train_result r;
  int rc = sg_lgp_train(m, model_dir, train, held, p, &r, err, sizeof err);
  CHECK(rc == 0, "train: %s", err);
  CHECK(r.step == 30 && r.resumed_at == 0 && la.n == 30 && la.checkpoints == 3 && la.held == 5 && la.saved == 1,
        "steps %d, resumed %d, callbacks %d/%d/%d/%d", r.step, r.resumed_at, la.n, la.checkpoints, la.held, la.saved);
  double first = mean(la.loss, 5), last = mean(la.loss + 25, 5);
  printf("training loss: first 5 steps %.4f, last 5 steps %.4f; %.3f s per step (batch %d), preparing %.2f s\n",
         first, last, r.seconds_per_step, p.batch, r.prepare_seconds);
  CHECK(last < 0.7 * first, "the loss did not fall: %g -> %g", first, last);
  CHECK(r.n_held_out == 5 && r.held_out_t[0] == 50 && r.held_out_t[4] == 950, "held-out timesteps");
  for (int k = 0; k < r.n_held_out; k++) {
    CHECK(isfinite(r.held_out_loss[k]) && r.held_out_loss[k] > 0, "held-out loss %g", r.held_out_loss[k]);
    printf("held-out loss at t=%d: %.5f\n", r.held_out_t[k], r.held_out_loss[k]);
  }
  CHECK(!r.manifest_updated, "a file outside the model directory updated the manifest");
  char *desc = ts_archive_extra(out_a, "lgp.json");
  json_error_t jerr;
  json_t *d = desc ? json_loads(desc, 0, &jerr) : NULL;
  json_t *tr = json_object_get(d, "trained");
  CHECK(d && json_integer_value(json_object_get(d, "in_channels")) == sg_model_get_info(m)->tap_channels &&
            json_array_size(json_object_get(d, "taps")) == (size_t)sg_model_get_info(m)->n_taps &&
            json_integer_value(json_object_get(json_object_get(d, "time_encoding"), "dim")) == 32 &&
            json_array_size(json_object_get(d, "hidden")) == 4,
        "description: %s", desc ? desc : "none");
  CHECK(!strcmp(json_string_value(json_object_get(tr, "by")) ? json_string_value(json_object_get(tr, "by")) : "",
                "sketchguide train-lgp") &&
            json_integer_value(json_object_get(tr, "steps")) == 30 && json_integer_value(json_object_get(tr, "batch")) == 6 &&
            json_real_value(json_object_get(tr, "lr")) == 1e-3 &&
            fabs(json_real_value(json_object_get(json_object_get(tr, "held_out_loss"), "500")) - r.held_out_loss[2]) <= 5e-6,
        "trained section: %s", desc ? desc : "none");
  CHECK(desc && strstr(desc, "\"by\": \"sketchguide train-lgp\""), "json.dumps layout: %s", desc ? desc : "none");
  json_decref(d);
  free(desc);

  /* interrupted at step 13 (a checkpoint is written then), resumed to 30: the same predictor */
  progress_log lb = {0, 13, {0}, 0, 0, 0};
  p = small_params(&lb);
  snprintf(out_b, sizeof out_b, "%s", tmp("b.pt"));
  p.out = out_b;
  rc = sg_lgp_train(m, model_dir, train, held, p, &r, err, sizeof err);
  CHECK(rc == SG_LGP_ECANCEL && strstr(err, "cancelled at step 13") && r.step == 13, "cancel: %d %s", rc, err);
  CHECK(access(out_b, F_OK) != 0, "a cancelled run wrote the predictor");
  sg_lgp_train_params q = p;
  q.batch = 5;
  rc = sg_lgp_train(m, model_dir, train, held, q, &r, err, sizeof err);
  CHECK(rc == SG_LGP_EINVAL && strstr(err, "other settings"), "resumed with another batch size: %d %s", rc, err);
  lb.stop_at = -1;
  rc = sg_lgp_train(m, model_dir, train, held, p, &r, err, sizeof err);
  CHECK(rc == 0 && r.resumed_at == 13 && r.step == 30, "resume: %d %s (at %d)", rc, err, r.resumed_at);
  CHECK(lb.n == 30, "%d steps reported in all", lb.n);
  for (int i = 0; i < 30 && i < lb.n; i++)
    CHECK(la.loss[i] == lb.loss[i], "step %d: loss %.9g uninterrupted, %.9g interrupted", i + 1, la.loss[i], lb.loss[i]);
  static float fa[2 * 4 * 64 * 64], fb[2 * 4 * 64 * 64];
  size_t nf = (size_t)2 * sg_model_get_info(m)->latent_channels * sg_model_get_info(m)->latent_size *
              sg_model_get_info(m)->latent_size;
  CHECK(nf <= sizeof fa / sizeof *fa && fingerprint(m, out_a, fa, nf) == 0 && fingerprint(m, out_b, fb, nf) == 0,
        "fingerprint: %s", ts_last_error());
  CHECK(memcmp(fa, fb, nf * sizeof *fa) == 0, "resumed training ended with other weights");
  sg_lgp_data_free(train), sg_lgp_data_free(held);
}

/* The default output is the model's own lgp.pt, and model.json's "lgp" section follows it. Runs on a copy of
 * the model directory (links to its modules). */
static void test_manifest(const char *model_dir) {
  char dir[512], src[4200], dst[4200], err[1024] = "";
  snprintf(dir, sizeof dir, "%s", tmp("model"));
  CHECK(mkdir(dir, 0755) == 0, "mkdir %s", dir);
  static const char *files[] = {"unet.pt", "text_encoder.pt", "vae_encoder.pt", "vae_decoder.pt", "lgp.pt",
                                "merges.txt", "vocab.json"};
  char abs_dir[4096];
  CHECK(realpath(model_dir, abs_dir) != NULL, "realpath");
  for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
    snprintf(src, sizeof src, "%s/%s", abs_dir, files[i]);
    snprintf(dst, sizeof dst, "%s/%s", dir, files[i]);
    CHECK(symlink(src, dst) == 0, "link %s", dst);
  }
  snprintf(src, sizeof src, "%s/model.json", model_dir);
  snprintf(dst, sizeof dst, "%s/model.json", dir);
  json_t *orig = json_load_file(src, 0, NULL);
  CHECK(orig && json_dump_file(orig, dst, JSON_INDENT(2)) == 0, "copy model.json");
  sg_model *m = sg_model_load(dir, sg_model_default_params(), err, sizeof err);
  CHECK(m, "load the copy: %s", err);
  if (!m) return;
  sg_lgp_data *train = make_data(0, 4);
  sg_lgp_train_params p = sg_lgp_train_default_params();
  p.steps = 2;
  p.batch = 2;
  p.data_desc = "four drawn shapes";
  sg_lgp_train_result r;
  int rc = sg_lgp_train(m, dir, train, NULL, p, &r, err, sizeof err);
  CHECK(rc == 0 && r.manifest_updated && r.n_held_out == 0, "train into the model: %d %s", rc, err);
  snprintf(src, sizeof src, "%s/lgp.pt.ckpt", dir);
  CHECK(access(src, F_OK) == 0, "no checkpoint beside the predictor");
  json_t *man = json_load_file(dst, 0, NULL), *sec = json_object_get(man, "lgp");
  json_t *tr = json_object_get(sec, "trained");
  CHECK(sec && !strcmp(json_string_value(json_object_get(sec, "file")), "lgp.pt") &&
            !strcmp(json_string_value(json_object_get(tr, "by")), "sketchguide train-lgp") &&
            !strcmp(json_string_value(json_object_get(tr, "data")), "four drawn shapes") &&
            json_is_null(json_object_get(tr, "held_out_loss")),
        "manifest's lgp section");
  json_object_del(man, "lgp"), json_object_del(orig, "lgp");
  CHECK(json_equal(man, orig), "model.json changed outside its lgp section");
  json_decref(man), json_decref(orig);
  sg_model_free(m);
  m = sg_model_load(dir, sg_model_default_params(), err, sizeof err);
  CHECK(m && sg_model_get_info(m)->has_lgp, "the updated model loads with its new LGP: %s", err);
  sg_model_free(m);
  sg_lgp_data_free(train);
}

/* load_dir: pairs in name order, captions stripped, NAME.edges.png used, the detector otherwise, resizing. */
static void test_load_dir(void) {
  char dir[512], err[1024] = "", path[1024];
  snprintf(dir, sizeof dir, "%s", tmp("data"));
  CHECK(mkdir(dir, 0755) == 0, "mkdir");
  static uint8_t rgb[S * S * 3], edges[S * S], small[32 * 32 * 3];
  char cap[128];
  const char *names[] = {"b", "a", "c.x"};
  for (int k = 0; k < 3; k++) {
    draw(k, rgb, edges, cap, sizeof cap);
    snprintf(path, sizeof path, "%s/%s.png", dir, names[k]);
    CHECK(sg_png_save(path, rgb, S, S, 3, NULL, 0, err, sizeof err) == 0, "png: %s", err);
    snprintf(path, sizeof path, "%s/%s.txt", dir, names[k]);
    FILE *f = fopen(path, "w");
    fprintf(f, "  %s\n\n", cap);
    fclose(f);
  }
  draw(1, rgb, edges, cap, sizeof cap); /* a.edges.png: the exact outline of image 1 */
  snprintf(path, sizeof path, "%s/a.edges.png", dir);
  CHECK(sg_png_save(path, edges, S, S, 1, NULL, 0, err, sizeof err) == 0, "edges png: %s", err);
  for (int i = 0; i < 32 * 32 * 3; i++) small[i] = (uint8_t)(i % 3 == 0 ? 200 : 30);
  snprintf(path, sizeof path, "%s/d.png", dir); /* 32x32: resized */
  CHECK(sg_png_save(path, small, 32, 32, 3, NULL, 0, err, sizeof err) == 0, "small png: %s", err);
  snprintf(path, sizeof path, "%s/d.txt", dir);
  FILE *f = fopen(path, "w");
  fputs("a red square", f);
  fclose(f);
  snprintf(path, sizeof path, "%s/e.png", dir); /* no caption: skipped */
  sg_png_save(path, small, 32, 32, 3, NULL, 0, err, sizeof err);
  snprintf(path, sizeof path, "%s/.h.png", dir); /* hidden: skipped */
  sg_png_save(path, small, 32, 32, 3, NULL, 0, err, sizeof err);
  snprintf(path, sizeof path, "%s/.h.txt", dir);
  fclose(fopen(path, "w"));
  snprintf(path, sizeof path, "%s/f.txt", dir); /* no image: skipped */
  fclose(fopen(path, "w"));

  sg_lgp_data *d = sg_lgp_data_load_dir(dir, S, err, sizeof err);
  CHECK(d && sg_lgp_data_count(d) == 4, "load_dir: %d pairs (%s)", sg_lgp_data_count(d), err);
  if (!d) return;
  char want[128];
  draw(1, rgb, edges, want, sizeof want);
  CHECK(!strcmp(sg_lgp_data_caption(d, 0), want), "first pair is a.png, caption stripped: \"%s\"",
        sg_lgp_data_caption(d, 0));
  CHECK(!memcmp(sg_lgp_data_image(d, 0), rgb, sizeof rgb), "a.png's pixels");
  CHECK(!memcmp(sg_lgp_data_edges(d, 0), edges, sizeof edges), "a.edges.png used as the edge map");
  draw(0, rgb, edges, want, sizeof want);
  uint8_t det[S * S];
  sg_edges_detect(rgb, S, S, 3, SG_EDGES_LOW, SG_EDGES_HIGH, det, NULL, 0);
  CHECK(!strcmp(sg_lgp_data_caption(d, 1), want) && !memcmp(sg_lgp_data_edges(d, 1), det, sizeof det),
        "b.png: caption and detected edges");
  draw(2, rgb, edges, want, sizeof want);
  CHECK(!strcmp(sg_lgp_data_caption(d, 2), want), "c.x.png: stem with a dot");
  const uint8_t *px = sg_lgp_data_image(d, 3);
  CHECK(!strcmp(sg_lgp_data_caption(d, 3), "a red square") && px[0] == 200 && px[1] == 30 && px[S * S * 3 - 1] == 30,
        "d.png resized from 32x32");
  CHECK(sg_lgp_data_image(d, 4) == NULL && sg_lgp_data_caption(d, -1) == NULL, "out of range");
  sg_lgp_data_free(d);
}

static int cancel_at_prepare(void *user, const sg_lgp_progress *p) {
  (void)user;
  return p->phase == SG_LGP_PHASE_PREPARE;
}

static void test_errors(sg_model *m, const char *model_dir) {
  char err[1024] = "";
  CHECK(sg_lgp_data_load_dir("/nonexistent/pairs", S, err, sizeof err) == NULL && strstr(err, "/nonexistent/pairs"),
        "missing directory: %s", err);
  char empty[512];
  snprintf(empty, sizeof empty, "%s", tmp("empty"));
  mkdir(empty, 0755);
  CHECK(sg_lgp_data_load_dir(empty, S, err, sizeof err) == NULL && strstr(err, "no (image, caption) pairs"),
        "empty directory: %s", err);
  char bad[512], path[1024];
  snprintf(bad, sizeof bad, "%s", tmp("bad"));
  mkdir(bad, 0755);
  snprintf(path, sizeof path, "%s/x.png", bad);
  FILE *f = fopen(path, "w");
  fputs("not a png", f);
  fclose(f);
  snprintf(path, sizeof path, "%s/x.txt", bad);
  fclose(fopen(path, "w"));
  CHECK(sg_lgp_data_load_dir(bad, S, err, sizeof err) == NULL && strstr(err, "x.png"), "undecodable image: %s", err);

  sg_lgp_data *d = sg_lgp_data_new(S, err, sizeof err);
  uint8_t px[32 * 32 * 3] = {0};
  CHECK(sg_lgp_data_add(d, px, 32, 32, NULL, "x", err, sizeof err) == SG_LGP_EDATA && strstr(err, "32x32"),
        "wrong image size: %s", err);
  CHECK(sg_lgp_data_add(d, px, S, S, NULL, NULL, err, sizeof err) == SG_LGP_EINVAL, "NULL caption");
  CHECK(sg_lgp_data_new(3, err, sizeof err) == NULL, "image size 3");
  sg_lgp_train_params p = sg_lgp_train_default_params();
  CHECK(sg_lgp_train(m, model_dir, d, NULL, p, NULL, err, sizeof err) == SG_LGP_EDATA && strstr(err, "no pairs"),
        "empty data: %s", err);
  sg_lgp_data *small = sg_lgp_data_new(32, err, sizeof err);
  sg_lgp_data_add(small, px, 32, 32, NULL, "x", err, sizeof err);
  CHECK(sg_lgp_train(m, model_dir, small, NULL, p, NULL, err, sizeof err) == SG_LGP_EDATA && strstr(err, "32x32"),
        "32x32 data for a 64x64 model: %s", err);
  sg_lgp_data_free(small);
  sg_lgp_data *one = make_data(0, 1);
  p.batch = 0;
  CHECK(sg_lgp_train(m, model_dir, one, NULL, p, NULL, err, sizeof err) == SG_LGP_EINVAL && strstr(err, "batch"),
        "batch 0: %s", err);
  p = sg_lgp_train_default_params();
  p.steps = -1;
  CHECK(sg_lgp_train(m, model_dir, one, NULL, p, NULL, err, sizeof err) == SG_LGP_EINVAL && strstr(err, "steps"),
        "steps -1: %s", err);
  p = sg_lgp_train_default_params();
  p.lr = 0;
  CHECK(sg_lgp_train(m, model_dir, one, NULL, p, NULL, err, sizeof err) == SG_LGP_EINVAL && strstr(err, "lr"),
        "lr 0: %s", err);
  p = sg_lgp_train_default_params();
  CHECK(sg_lgp_train(m, "/nonexistent/model", one, NULL, p, NULL, err, sizeof err) == SG_LGP_EIO &&
            strstr(err, "/nonexistent/model/model.json"),
        "missing model directory: %s", err);
  p.out = tmp("x.pt");
  p.checkpoint = tmp("not-a-state");
  f = fopen(p.checkpoint, "w");
  fputs("junk", f);
  fclose(f);
  CHECK(sg_lgp_train(m, model_dir, one, NULL, p, NULL, err, sizeof err) == SG_LGP_ERUNTIME &&
            strstr(err, "not-a-state"),
        "a junk checkpoint: %s", err);
  p.checkpoint = "";
  p.progress = cancel_at_prepare;
  CHECK(sg_lgp_train(m, model_dir, one, NULL, p, NULL, err, sizeof err) == SG_LGP_ECANCEL && strstr(err, "cancelled"),
        "cancel before training: %s", err);
  sg_lgp_data_free(one);
  sg_lgp_data_free(d);
}

int main(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: %s MODEL_DIR PAIRS_DIR REFERENCE.json\n", argv[0]);
    return 2;
  }
  snprintf(tmpdir, sizeof tmpdir, "/tmp/sg_lgp_train_XXXXXX");
  if (!mkdtemp(tmpdir)) return 2;
  ts_set_threads(1); /* one thread: the step time stays steady on a busy machine */
  char err[1024] = "";
  sg_model *m = sg_model_load(argv[1], sg_model_default_params(), err, sizeof err);
  CHECK(m, "load %s: %s", argv[1], err);
  if (m) {
    test_errors(m, argv[1]);
    test_load_dir();
    test_python_parity(m, argv[1], argv[2], argv[3]);
    test_train(m, argv[1]);
    test_manifest(argv[1]);
    sg_model_free(m);
  }
  char cmd[512];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
  if (!failures && system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmpdir);
  printf("%d failed\n", failures);
  return failures ? 1 : 0;
}
