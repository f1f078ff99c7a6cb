/* sketchguide train-lgp: trains a model's Latent Guidance Predictor on a directory of (image, caption) pairs, or on
 * images the model generates from prompts, resumably. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
#include "edges.h"
#include "generate.h"
#include "image.h"
#include "lgp_train.h"
#include "mem.h"
#include "model.h"
#include "train_prompts.h"

static const char HELP[] =
    "usage: sketchguide train-lgp (--data DIR | --prompts FILE|builtin) (--out MODEL_DIR | --output FILE)\n"
    "                             [--model DIR] [OPTIONS]\n\n"
    "Trains the Latent Guidance Predictor (METHOD.md) of a model: DIR holds NAME.png or NAME.jpg images with\n"
    "NAME.txt captions and, optionally, NAME.edges.png edge maps (white edges on black; without one the built-in\n"
    "detector's edges are used, as `sketchguide edges` shows). With --prompts instead, no data set is needed: the\n"
    "model generates the training images itself from the prompts (FILE: one per line, blank lines and # comments\n"
    "skipped; `builtin`: a built-in list of varied everyday prompts, see --print-prompts; a file called builtin is\n"
    "./builtin), into a work folder that a later run reuses, and the edge detector's options for generated images\n"
    "give the edge maps (docs/train-lgp-prompts.md). It writes only where it is told: --out names a\n"
    "model directory (the --model directory itself, to replace its predictor, or a new folder, which becomes a\n"
    "copy of the model with the new predictor); --output writes the predictor alone, outside the model\n"
    "directory. Interrupted (Ctrl-C) or killed, it resumes from its checkpoint when run again.\n\n"
    "options:\n"
    "  --model DIR          model directory (default: $SKETCHGUIDE_MODEL, else the bundled model); read only,\n"
    "                       unless --out names it\n"
    "  --data DIR           training pairs\n"
    "  --out DIR            write DIR/lgp.pt and DIR/model.json's lgp section: DIR is the model directory, or a\n"
    "                       folder that does not exist yet (or is empty, or holds an earlier copy of the same\n"
    "                       model), made a copy of it first\n"
    "  --held-out DIR       pairs for the held-out loss report at t = 50, 250, 500, 750, 950\n"
    "  --steps N            training steps (default 3000)\n"
    "  --batch N            images per step (default 16)\n"
    "  --lr X               Adam's learning rate (default 1e-4)\n"
    "  --seed N             initial weights and batches (default 0)\n"
    "  --time-dim N         size of the time encoding (default 32)\n"
    "  --output FILE        write the predictor alone to FILE (not into the model directory; model.json unchanged)\n"
    "  --checkpoint FILE    resumable state (default: the predictor's path + .ckpt)\n"
    "  --checkpoint-every N steps between checkpoints (default 500)\n"
    "  --no-resume          start afresh even when the checkpoint exists\n"
    "  --device DEV         cpu (default), cuda, cuda:N\n"
    "  --threads N          CPU threads (default: the CPU cores this process may use that other processes are\n"
    "                       not keeping busy)\n"
    "  --quiet              no progress output (otherwise the encoding's count and time left, then the steps)\n\n"
    "with --prompts (image j, 0 <= j < N, is made from prompt j / ceil(N / prompts) with seed --gen-seed + j, in\n"
    "batches of up to --gen-batch images of one prompt; the same settings give the same images and predictor):\n"
    "  --images N           training images to generate (default 1000)\n"
    "  --work DIR           where the images (NNNNNN.png, NNNNNN.txt, NNNNNN.edges.png) and work.json go; images\n"
    "                       already there are reused (default: the --out folder or --output file + .work)\n"
    "  --gen-steps N        sampler steps per image (default: the model's, at most 50)\n"
    "  --gen-cfg X          classifier-free guidance scale (default: the model's)\n"
    "  --gen-batch N        images per generation call (default 8)\n"
    "  --gen-seed N         the first image's seed (default 0)\n"
    "  --edge-sigma X       smoothing before the gradient: 0 = the 3x3 blur of --data, else a Gaussian of X\n"
    "                       pixels (default: half a latent pixel, %g on a model with 4-pixel latents)\n"
    "  --edge-low X, --edge-high X  hysteresis thresholds on the gradient of [0, 1] images (default %g, %g)\n"
    "  --edge-thin 0|1      thin the edges to one-pixel lines (default %d)\n"
    "  --edge-min-length N  drop edge groups of fewer pixels (default: two latent pixels, %d)\n"
    "  --print-prompts      print the built-in prompts and exit\n";

static volatile sig_atomic_t interrupted = 0;

static void on_signal(int sig) {
  (void)sig;
  interrupted = 1;
}

typedef struct {
  cli_progress bar, enc;
  int quiet;
  sg_lgp_phase phase; /* the last reported */
  double run_loss;
  int32_t run_n;
} train_ui;

static int on_progress(void *user, const sg_lgp_progress *p) {
  train_ui *ui = user;
  ui->phase = p->phase;
  switch (p->phase) {
  case SG_LGP_PHASE_PREPARE:
    if (p->done == 0) {
      if (!ui->quiet)
        fprintf(stderr, "encoding the data: %d inputs (images, edge maps and distinct captions)\n", p->total);
      cli_progress_init(&ui->enc, "encoding", p->total, ui->quiet, 0);
    }
    cli_progress_update(&ui->enc, p->done);
    if (p->done == p->total) {
      cli_progress_end(&ui->enc);
      ui->bar.start = cli_now(); /* the steps' time left counts from here */
    }
    break;
  case SG_LGP_PHASE_STEP:
    ui->run_loss += p->loss;
    ui->run_n++;
    if (ui->bar.total != p->steps) ui->bar.total = p->steps;
    cli_progress_update(&ui->bar, p->step);
    if (!ui->quiet && (p->step % 100 == 0 || p->step == p->steps)) {
      if (ui->bar.enabled) fputs("\r\033[K", stderr);
      double left = p->step ? (cli_now() - ui->bar.start) / p->step * (p->steps - p->step) : 0;
      fprintf(stderr, "step %d/%d loss %.4f (%.0f s left)\n", p->step, p->steps, ui->run_loss / ui->run_n, left);
      ui->run_loss = 0;
      ui->run_n = 0;
    }
    break;
  case SG_LGP_PHASE_CHECKPOINT:
    break;
  case SG_LGP_PHASE_HELD_OUT:
    if (!ui->quiet) fprintf(stderr, "held-out loss at t=%d: %.5f\n", p->t, p->loss);
    break;
  case SG_LGP_PHASE_SAVED:
    break;
  }
  return interrupted != 0;
}

/* Whether paths a and b name the same existing file or folder. */
static int same_file(const char *a, const char *b) {
  struct stat sa, sb;
  return stat(a, &sa) == 0 && stat(b, &sb) == 0 && sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

/* Whether path's folder is dir. */
static int in_dir(const char *path, const char *dir) {
  char parent[4200];
  const char *slash = strrchr(path, '/');
  if (!slash) snprintf(parent, sizeof parent, ".");
  else if (slash == path) snprintf(parent, sizeof parent, "/");
  else snprintf(parent, sizeof parent, "%.*s", (int)(slash - path), path);
  return same_file(parent, dir);
}

/* Whether files a and b hold the same bytes. */
static int same_bytes(const char *a, const char *b) {
  FILE *fa = fopen(a, "rb"), *fb = fopen(b, "rb");
  int same = fa && fb;
  char x[65536], y[65536];
  while (same) {
    size_t na = fread(x, 1, sizeof x, fa), nb = fread(y, 1, sizeof y, fb);
    if (na != nb || memcmp(x, y, na)) same = 0;
    else if (na == 0) break;
  }
  if (fa) fclose(fa);
  if (fb) fclose(fb);
  return same;
}

/* Whether folder out holds the same model as model_dir: every module and tokenizer file that model_dir's
 * model.json names, byte for byte. Else reports which file differs (naming --out) and returns 0. */
static int same_model(const char *model_dir, const char *out) {
  char path[4200], other[4200];
  snprintf(path, sizeof path, "%s/model.json", model_dir);
  json_error_t jerr;
  json_t *root = json_load_file(path, 0, &jerr), *v;
  const char *k, *bad = NULL;
  if (!root) {
    cli_error("train-lgp", "--model %s: %s", model_dir, jerr.text);
    return 0;
  }
  json_t *groups[2] = {json_object_get(root, "modules"), json_object_get(root, "tokenizer")};
  for (int g = 0; g < 2 && !bad; g++) json_object_foreach(groups[g], k, v) {
      if (bad || !json_is_string(v) || (g == 1 && strcmp(k, "merges") && strcmp(k, "vocab"))) continue;
      snprintf(path, sizeof path, "%s/%s", model_dir, json_string_value(v));
      snprintf(other, sizeof other, "%s/%s", out, json_string_value(v));
      if (!same_bytes(path, other)) bad = json_string_value(v);
    }
  if (bad)
    cli_error("train-lgp", "--out %s: holds another model (its %s differs from %s's, or is missing); give the "
              "model directory itself or a new folder", out, bad, model_dir);
  json_decref(root);
  return bad == NULL;
}

/* Copies file src to dst (created, 0644). Returns 0, or -1 with errno set. */
static int copy_file(const char *src, const char *dst) {
  int in = open(src, O_RDONLY | O_CLOEXEC);
  if (in < 0) return -1;
  int out = open(dst, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (out < 0) {
    int e = errno;
    close(in);
    errno = e;
    return -1;
  }
  char buf[65536];
  ssize_t n;
  int rc = 0;
  while (rc == 0 && (n = read(in, buf, sizeof buf)) != 0) {
    if (n < 0) {
      if (errno != EINTR) rc = -1;
      continue;
    }
    for (ssize_t o = 0; o < n && rc == 0;) {
      ssize_t w = write(out, buf + o, (size_t)(n - o));
      if (w < 0 && errno != EINTR) rc = -1;
      else if (w > 0) o += w;
    }
  }
  int e = errno;
  if (close(out) && rc == 0) rc = -1, e = errno;
  close(in);
  errno = e;
  return rc;
}

/* Makes dst a copy of the model directory src: its regular files (not checkpoints or temporary files), into
 * dst.partial first, renamed to dst when complete (dst absent), or straight into dst (an empty folder). Returns
 * 0, or -1 after reporting (nothing left behind). */
static int copy_model(const char *src, const char *dst, int dst_exists) {
  char tmp[4200], from[4600], to[4600];
  snprintf(tmp, sizeof tmp, dst_exists ? "%s" : "%s.partial", dst);
  if (!dst_exists && mkdir(tmp, 0755)) {
    cli_error("train-lgp", "--out %s: cannot create %s: %s", dst, tmp, strerror(errno));
    return -1;
  }
  DIR *d = opendir(src);
  if (!d) {
    cli_error("train-lgp", "--model %s: %s", src, strerror(errno));
    if (!dst_exists) rmdir(tmp);
    return -1;
  }
  int rc = 0;
  struct dirent *e;
  while (rc == 0 && (e = readdir(d))) {
    size_t n = strlen(e->d_name);
    struct stat st;
    snprintf(from, sizeof from, "%s/%s", src, e->d_name);
    if (e->d_name[0] == '.' || stat(from, &st) || !S_ISREG(st.st_mode) ||
        (n > 5 && !strcmp(e->d_name + n - 5, ".ckpt")) || (n > 4 && !strcmp(e->d_name + n - 4, ".tmp")))
      continue;
    snprintf(to, sizeof to, "%s/%s", tmp, e->d_name);
    if (copy_file(from, to)) {
      cli_error("train-lgp", "--out %s: copying %s: %s", dst, from, strerror(errno));
      rc = -1;
    }
  }
  closedir(d);
  if (rc == 0 && !dst_exists && rename(tmp, dst)) {
    cli_error("train-lgp", "--out %s: %s", dst, strerror(errno));
    rc = -1;
  }
  if (rc) { /* remove what was copied */
    if ((d = opendir(tmp))) {
      while ((e = readdir(d)))
        if (e->d_name[0] != '.') {
          snprintf(to, sizeof to, "%s/%s", tmp, e->d_name);
          unlink(to);
        }
      closedir(d);
    }
    if (!dst_exists) rmdir(tmp);
  }
  return rc;
}

/* Whether folder path exists and holds nothing but dot files. */
static int is_empty_dir(const char *path) {
  DIR *d = opendir(path);
  if (!d) return 0;
  struct dirent *e;
  int empty = 1;
  while (empty && (e = readdir(d))) empty = e->d_name[0] == '.';
  closedir(d);
  return empty;
}

/* ---- --prompts: the model makes the training images ---- */

typedef struct {
  train_prompts *prompts;
  const char *source; /* the --prompts argument */
  int64_t images, steps, batch, seed;
  double cfg;
  char work[4096];
  sg_edges_params edges;
  int quiet;
} gen_opts;

/* Mixes the bytes of file path into the FNV-1a 64-bit hash *h. Returns 0, or -1 with errno set. */
static int hash_file(const char *path, uint64_t *h) {
  FILE *f = fopen(path, "rb");
  if (!f) return -1;
  unsigned char buf[1 << 16];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, f)) > 0)
    for (size_t i = 0; i < n; i++) *h = (*h ^ buf[i]) * 1099511628211ULL;
  int bad = ferror(f);
  fclose(f);
  return bad ? -1 : 0;
}

/* The identity of the model that generates: a hash of the modules that make an image (text encoder, U-Net, VAE
 * decoder) named by model_dir's model.json, as 16 hex digits in out. Returns 0, or -1 after reporting. */
static int model_identity(const char *model_dir, char out[17]) {
  char path[4200];
  snprintf(path, sizeof path, "%s/model.json", model_dir);
  json_error_t jerr;
  json_t *root = json_load_file(path, 0, &jerr);
  if (!root) {
    cli_error("train-lgp", "--model %s: %s", model_dir, jerr.text);
    return -1;
  }
  uint64_t h = 1469598103934665603ULL;
  static const char *const parts[] = {"text_encoder", "unet", "vae_decoder"};
  int rc = 0;
  for (int i = 0; i < 3 && rc == 0; i++) {
    const char *f = json_string_value(json_object_get(json_object_get(root, "modules"), parts[i]));
    snprintf(path, sizeof path, "%s/%s", model_dir, f ? f : "");
    if (!f || hash_file(path, &h)) {
      cli_error("train-lgp", "--model %s: cannot read its %s (%s)", model_dir, parts[i], f ? strerror(errno) : "not in model.json");
      rc = -1;
    }
  }
  json_decref(root);
  snprintf(out, 17, "%016llx", (unsigned long long)h);
  return rc;
}

/* Writes data (len bytes) to path through path.tmp and a rename, so that a killed run never leaves half a file.
 * Returns 0, or -1 with errno set. */
static int write_file_atomic(const char *path, const void *data, size_t len) {
  char tmp[4200];
  snprintf(tmp, sizeof tmp, "%s.tmp", path);
  FILE *f = fopen(tmp, "wb");
  if (!f) return -1;
  int ok = fwrite(data, 1, len, f) == len;
  ok = (fflush(f) == 0) && ok;
  ok = (fsync(fileno(f)) == 0) && ok;
  int e = errno;
  ok = (fclose(f) == 0) && ok;
  if (ok && rename(tmp, path) == 0) return 0;
  e = errno ? errno : e;
  unlink(tmp);
  errno = e;
  return -1;
}

/* Encodes pixels (channels 3 or 1) as PNG with text chunks and writes it atomically to path. Returns 0, or -1
 * with a message in err. */
static int save_png_atomic(const char *path, const uint8_t *px, int32_t size, int32_t channels,
                           const sg_png_text *text, int32_t n_text, char *err, size_t errlen) {
  uint8_t *png = NULL;
  size_t len = 0;
  if (sg_png_encode(px, size, size, channels, text, n_text, &png, &len, err, errlen)) return -1;
  int rc = write_file_atomic(path, png, len);
  if (rc) snprintf(err, errlen, "%s: %s", path, strerror(errno));
  free(png);
  return rc;
}

static void image_path(const gen_opts *o, int64_t j, const char *ext, char *buf, size_t len) {
  snprintf(buf, len, "%s/%06lld%s", o->work, (long long)j, ext);
}

/* Whether image j is in the work folder (its PNG and caption). */
static int have_image(const gen_opts *o, int64_t j) {
  char path[4200];
  struct stat st;
  image_path(o, j, ".png", path, sizeof path);
  if (stat(path, &st) || !S_ISREG(st.st_mode)) return 0;
  image_path(o, j, ".txt", path, sizeof path);
  return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* Images per prompt: prompt q makes images q K .. q K + K - 1 (the last prompts may make fewer, or none). */
static int64_t per_prompt(const gen_opts *o) { return (o->images + o->prompts->n - 1) / o->prompts->n; }

/* Checks the work folder's work.json against these settings (the same model, prompts, images, sampler, seeds and
 * batches make the same images), or writes it in a new or empty folder. Returns 0, or -1 after reporting. */
static int check_work(const gen_opts *o, const char *model_dir, const sg_model_info *info) {
  char ident[17], path[4200], hash[17];
  if (model_identity(model_dir, ident)) return -1;
  snprintf(hash, sizeof hash, "%016llx", (unsigned long long)train_prompts_hash(o->prompts));
  json_t *want = json_pack("{s:s, s:i, s:s, s:s, s:s, s:I, s:I, s:I, s:I, s:f, s:i, s:f, s:I, s:I, s:i}",
                           "format", "sketchguide-train-lgp-prompts", "version", 1, "model", info->name,
                           "model_hash", ident, "prompts_hash", hash, "prompts_count", (json_int_t)o->prompts->n,
                           "images", (json_int_t)o->images, "per_prompt", (json_int_t)per_prompt(o),
                           "steps", (json_int_t)o->steps, "cfg", o->cfg, "sampler", (int)info->defaults.sampler,
                           "eta", info->defaults.eta, "seed", (json_int_t)o->seed, "batch", (json_int_t)o->batch,
                           "image_size", (int)info->image_size);
  if (!want) {
    cli_error("train-lgp", "out of memory");
    return -1;
  }
  snprintf(path, sizeof path, "%s/work.json", o->work);
  int rc = 0;
  struct stat st;
  if (stat(path, &st) == 0) {
    json_error_t jerr;
    json_t *have = json_load_file(path, 0, &jerr), *v;
    const char *k;
    if (!have) {
      cli_error("train-lgp", "--work %s: its work.json is unreadable (%s); give another --work", o->work, jerr.text);
      rc = -1;
    }
    json_object_foreach(want, k, v) {
      json_t *hv = have ? json_object_get(have, k) : NULL;
      if (rc || json_equal(hv, v)) continue;
      char *a = hv ? json_dumps(hv, JSON_ENCODE_ANY) : NULL, *b = json_dumps(v, JSON_ENCODE_ANY);
      cli_error("train-lgp", "--work %s: its images were made with other settings (%s %s there, %s now); give "
                "the same settings to reuse them, or another --work", o->work, k, a ? a : "absent", b ? b : "?");
      sg_mem_json_free(a), sg_mem_json_free(b);
      rc = -1;
    }
    json_decref(have);
  } else if (stat(o->work, &st) == 0 && !is_empty_dir(o->work)) {
    cli_error("train-lgp", "--work %s: holds files but no work.json, so not images of train-lgp --prompts; give an "
              "empty or new folder", o->work);
    rc = -1;
  } else {
    if (mkdir(o->work, 0755) && errno != EEXIST) {
      cli_error("train-lgp", "--work %s: %s", o->work, strerror(errno));
      rc = -1;
    }
    char *text = rc ? NULL : json_dumps(want, JSON_INDENT(2) | JSON_SORT_KEYS);
    if (!rc && (!text || write_file_atomic(path, text, strlen(text)))) {
      cli_error("train-lgp", "--work %s: cannot write work.json: %s", o->work, strerror(errno));
      rc = -1;
    }
    sg_mem_json_free(text);
  }
  json_decref(want);
  return rc;
}

typedef struct {
  cli_progress bar;
  int64_t base, chunk;
} gen_ui;

static int on_gen_step(void *user, int32_t step, int32_t total) {
  gen_ui *g = user;
  (void)total;
  cli_progress_update(&g->bar, g->base + (int64_t)step * g->chunk);
  return interrupted != 0;
}

/* Generates the images the work folder lacks, a chunk at a time: prompt q's images in runs of up to o->batch from
 * the first (so that a chunk always holds the same images, whatever was made before), image j with seed
 * o->seed + j. *made counts the images written. Returns 0, 1 when interrupted (the finished chunks are kept), or
 * -1 after reporting. */
static int generate_images(sg_model *m, const gen_opts *o, int64_t *made) {
  int64_t N = o->images, K = per_prompt(o), missing = 0, units = 0;
  for (int64_t j = 0; j < N; j++) missing += !have_image(o, j);
  *made = 0;
  for (int pass = 0; pass < 2; pass++) { /* pass 0 counts the work (image-steps), pass 1 does it */
    gen_ui g;
    if (pass == 1) {
      if (!missing) break;
      if (!o->quiet)
        fprintf(stderr, "generating %lld of %lld images into %s (%lld there already), %lld steps each, cfg %g, "
                "batches of up to %lld\n", (long long)missing, (long long)N, o->work, (long long)(N - missing),
                (long long)o->steps, o->cfg, (long long)o->batch);
      memset(&g, 0, sizeof g);
      cli_progress_init(&g.bar, "generating: image-steps", units, o->quiet, 0);
    }
    for (int64_t c0 = 0; c0 < N;) {
      int64_t q = c0 / K, end = (q + 1) * K < N ? (q + 1) * K : N;
      int64_t c1 = c0 + o->batch < end ? c0 + o->batch : end, need = 0;
      for (int64_t j = c0; j < c1; j++) need += !have_image(o, j);
      if (need && pass == 0) units += (c1 - c0) * o->steps;
      if (need && pass == 1) {
        sg_generate_params gp = sg_generate_default_params(m);
        gp.prompt = o->prompts->text[q];
        gp.negative_prompt = "";
        gp.sketch = NULL;
        gp.beta = 0;
        gp.steps = (int32_t)o->steps;
        gp.cfg = o->cfg;
        gp.seed = o->seed + c0;
        gp.n_images = (int32_t)(c1 - c0);
        g.chunk = c1 - c0;
        gp.progress = on_gen_step;
        gp.progress_user = &g;
        sg_result r;
        char err[1024] = "";
        int rc = sg_generate(m, &gp, &r, err, sizeof err);
        if (rc == SG_GENERATE_ECANCEL) {
          cli_progress_end(&g.bar);
          return 1;
        }
        if (rc) {
          cli_progress_end(&g.bar);
          cli_error("train-lgp", "generating image %lld (prompt '%s'): %s", (long long)c0, gp.prompt, err);
          return -1;
        }
        for (int64_t j = c0; j < c1 && rc == 0; j++) {
          if (have_image(o, j)) continue;
          char path[4200], seed_s[32], steps_s[32], cfg_s[32];
          snprintf(seed_s, sizeof seed_s, "%lld", (long long)r.seeds[j - c0]);
          snprintf(steps_s, sizeof steps_s, "%lld", (long long)o->steps);
          snprintf(cfg_s, sizeof cfg_s, "%g", o->cfg);
          sg_png_text text[] = {{"prompt", gp.prompt}, {"seed", seed_s}, {"steps", steps_s}, {"cfg", cfg_s}};
          image_path(o, j, ".txt", path, sizeof path);
          if (write_file_atomic(path, gp.prompt, strlen(gp.prompt))) {
            cli_error("train-lgp", "--work %s: %s", path, strerror(errno));
            rc = -1;
            break;
          }
          image_path(o, j, ".png", path, sizeof path);
          size_t px = (size_t)r.width * r.height * 3;
          if (save_png_atomic(path, r.pixels + (size_t)(j - c0) * px, r.width, 3, text, 4, err, sizeof err)) {
            cli_error("train-lgp", "--work %s", err);
            rc = -1;
            break;
          }
          (*made)++;
        }
        sg_result_free(&r);
        if (rc) {
          cli_progress_end(&g.bar);
          return -1;
        }
        g.base += (c1 - c0) * o->steps;
        cli_progress_update(&g.bar, g.base);
        if (interrupted) { /* after the last step: this chunk is kept */
          cli_progress_end(&g.bar);
          return 1;
        }
      }
      c0 = c1;
    }
    if (pass == 1) cli_progress_end(&g.bar);
  }
  return 0;
}

/* Reads the work folder's images as training pairs: each image, its edges by the options o->edges (also written
 * as NNNNNN.edges.png, for a look or a later --data run) and its prompt. Returns the set, or NULL after reporting. */
static sg_lgp_data *load_generated(const gen_opts *o, int32_t size) {
  char err[1024] = "", path[4200];
  sg_lgp_data *d = sg_lgp_data_new(size, err, sizeof err);
  uint8_t *edges = malloc((size_t)size * size);
  int64_t K = per_prompt(o);
  int ok = d && edges;
  if (!ok) cli_error("train-lgp", "out of memory");
  for (int64_t j = 0; ok && j < o->images; j++) {
    sg_image im = {0}, rgb = {0};
    image_path(o, j, ".png", path, sizeof path);
    if (sg_image_load(path, sg_image_default_params(), &im, err, sizeof err) ||
        sg_image_to_rgb(&im, &rgb, err, sizeof err)) {
      cli_error("train-lgp", "--work %s: %s (remove it to make it again)", path, err);
      ok = 0;
    } else if (rgb.width != size || rgb.height != size) {
      cli_error("train-lgp", "--work %s: %dx%d, not the model's %dx%d (remove it to make it again)", path,
                (int)rgb.width, (int)rgb.height, (int)size, (int)size);
      ok = 0;
    } else if (sg_edges_detect_params(rgb.pixels, size, size, 3, o->edges, edges, err, sizeof err)) {
      cli_error("train-lgp", "edges of %s: %s", path, err);
      ok = 0;
    } else {
      image_path(o, j, ".edges.png", path, sizeof path);
      if (save_png_atomic(path, edges, size, 1, NULL, 0, err, sizeof err)) {
        cli_error("train-lgp", "--work %s", err);
        ok = 0;
      } else if (sg_lgp_data_add(d, rgb.pixels, size, size, edges, o->prompts->text[j / K], err, sizeof err)) {
        cli_error("train-lgp", "%s", err);
        ok = 0;
      }
    }
    sg_image_free(&im);
    sg_image_free(&rgb);
  }
  free(edges);
  if (!ok) {
    sg_lgp_data_free(d);
    return NULL;
  }
  return d;
}

int cmd_train_lgp(int argc, char **argv) {
  cli_args a = {"train-lgp", argc, argv, 1, 0};
  const char *model_dir = cli_default_model(), *data_dir = NULL, *held_dir = NULL, *out = NULL, *ckpt = NULL;
  const char *out_dir = NULL;
  const char *device = "cpu", *v;
  const char *steps_s = NULL, *batch_s = NULL, *lr_s = NULL, *seed_s = NULL, *td_s = NULL, *every_s = NULL,
             *threads_s = NULL;
  const char *prompts_s = NULL, *images_s = NULL, *work_dir = NULL, *gsteps_s = NULL, *gcfg_s = NULL,
             *gbatch_s = NULL, *gseed_s = NULL, *esigma_s = NULL, *elow_s = NULL, *ehigh_s = NULL, *ethin_s = NULL,
             *emin_s = NULL;
  int quiet = 0, no_resume = 0;
  while (a.i < argc && !a.failed) {
    if (cli_flag(&a, "--help") || cli_flag(&a, "-h")) {
      sg_edges_params g = sg_edges_generated_params(4);
      printf(HELP, g.sigma, g.low, g.high, (int)g.thin, (int)g.min_length);
      return CLI_OK;
    }
    if (cli_flag(&a, "--print-prompts")) {
      train_prompts *bp = train_prompts_builtin();
      for (int32_t i = 0; bp && i < bp->n; i++) puts(bp->text[i]);
      train_prompts_free(bp);
      return CLI_OK;
    }
    if (cli_value(&a, "--model", &v)) model_dir = v;
    else if (cli_value(&a, "--data", &v)) data_dir = v;
    else if (cli_value(&a, "--prompts", &v)) prompts_s = v;
    else if (cli_value(&a, "--images", &v)) images_s = v;
    else if (cli_value(&a, "--work", &v)) work_dir = v;
    else if (cli_value(&a, "--gen-steps", &v)) gsteps_s = v;
    else if (cli_value(&a, "--gen-cfg", &v)) gcfg_s = v;
    else if (cli_value(&a, "--gen-batch", &v)) gbatch_s = v;
    else if (cli_value(&a, "--gen-seed", &v)) gseed_s = v;
    else if (cli_value(&a, "--edge-sigma", &v)) esigma_s = v;
    else if (cli_value(&a, "--edge-low", &v)) elow_s = v;
    else if (cli_value(&a, "--edge-high", &v)) ehigh_s = v;
    else if (cli_value(&a, "--edge-thin", &v)) ethin_s = v;
    else if (cli_value(&a, "--edge-min-length", &v)) emin_s = v;
    else if (cli_value(&a, "--held-out", &v)) held_dir = v;
    else if (cli_value(&a, "--steps", &v)) steps_s = v;
    else if (cli_value(&a, "--batch", &v)) batch_s = v;
    else if (cli_value(&a, "--lr", &v)) lr_s = v;
    else if (cli_value(&a, "--seed", &v)) seed_s = v;
    else if (cli_value(&a, "--time-dim", &v)) td_s = v;
    else if (cli_value(&a, "--output", &v) || cli_value(&a, "-o", &v)) out = v;
    else if (cli_value(&a, "--out", &v)) out_dir = v;
    else if (cli_value(&a, "--checkpoint-every", &v)) every_s = v;
    else if (cli_value(&a, "--checkpoint", &v)) ckpt = v;
    else if (cli_value(&a, "--device", &v)) device = v;
    else if (cli_value(&a, "--threads", &v)) threads_s = v;
    else if (cli_flag(&a, "--no-resume")) no_resume = 1;
    else if (cli_flag(&a, "--quiet") || cli_flag(&a, "-q")) quiet = 1;
    else cli_unknown(&a);
  }
  if (a.failed) return CLI_USAGE;
  if (!data_dir && !prompts_s) {
    cli_error("train-lgp", "give --data DIR (images with captions) or --prompts FILE|builtin (the model makes the "
              "images; see sketchguide train-lgp --help)");
    return CLI_USAGE;
  }
  if (data_dir && prompts_s) {
    cli_error("train-lgp", "--data and --prompts: give one of them");
    return CLI_USAGE;
  }
  const char *gen_only[] = {images_s, work_dir, gsteps_s, gcfg_s, gbatch_s, gseed_s, esigma_s, elow_s, ehigh_s,
                            ethin_s, emin_s};
  static const char *const gen_names[] = {"--images", "--work", "--gen-steps", "--gen-cfg", "--gen-batch",
                                          "--gen-seed", "--edge-sigma", "--edge-low", "--edge-high", "--edge-thin",
                                          "--edge-min-length"};
  for (size_t k = 0; data_dir && k < sizeof gen_only / sizeof *gen_only; k++)
    if (gen_only[k]) {
      cli_error("train-lgp", "%s goes with --prompts, not --data", gen_names[k]);
      return CLI_USAGE;
    }
  if (cli_check_model_dir("train-lgp", "--model", model_dir)) return CLI_USAGE;
  if (!out_dir && !out) {
    cli_error("train-lgp", "say where to write: --out DIR (the model directory, or a new folder for a copy of the "
              "model) or --output FILE (the predictor alone); nothing is written into a model directory unasked");
    return CLI_USAGE;
  }
  if (out_dir && out) {
    cli_error("train-lgp", "--out and --output: give one of them");
    return CLI_USAGE;
  }
  sg_lgp_train_params p = sg_lgp_train_default_params();
  int64_t steps = p.steps, batch = p.batch, seed = p.seed, td = p.time_dim, every = p.checkpoint_every,
          threads = cli_free_cpus();
  double lr = p.lr;
  if ((steps_s && cli_parse_int("train-lgp", "--steps", steps_s, 0, 100000000, &steps)) ||
      (batch_s && cli_parse_int("train-lgp", "--batch", batch_s, 1, 4096, &batch)) ||
      (lr_s && cli_parse_double("train-lgp", "--lr", lr_s, 1e-12, 10, &lr)) ||
      (seed_s && cli_parse_int("train-lgp", "--seed", seed_s, 0, INT32_MAX, &seed)) ||
      (td_s && cli_parse_int("train-lgp", "--time-dim", td_s, 2, 4096, &td)) ||
      (every_s && cli_parse_int("train-lgp", "--checkpoint-every", every_s, 1, 100000000, &every)) ||
      (threads_s && cli_parse_int("train-lgp", "--threads", threads_s, 1, 1024, &threads)))
    return CLI_USAGE;
  if (td % 2) {
    cli_error("train-lgp", "--time-dim: %lld is odd (cos and sin halves need an even size)", (long long)td);
    return CLI_USAGE;
  }
  gen_opts go;
  memset(&go, 0, sizeof go);
  go.images = 1000, go.steps = 0, go.batch = 8, go.seed = 0, go.cfg = -1;
  go.edges = sg_edges_generated_params(4); /* the scale-dependent ones are set from the model below */
  go.quiet = quiet;
  go.source = prompts_s;
  int64_t ethin = go.edges.thin, emin = go.edges.min_length;
  if ((images_s && cli_parse_int("train-lgp", "--images", images_s, 1, 10000000, &go.images)) ||
      (gsteps_s && cli_parse_int("train-lgp", "--gen-steps", gsteps_s, 1, 1000, &go.steps)) ||
      (gcfg_s && cli_parse_double("train-lgp", "--gen-cfg", gcfg_s, 0, 100, &go.cfg)) ||
      (gbatch_s && cli_parse_int("train-lgp", "--gen-batch", gbatch_s, 1, 64, &go.batch)) ||
      (gseed_s && cli_parse_int("train-lgp", "--gen-seed", gseed_s, 0, INT32_MAX, &go.seed)) ||
      (esigma_s && cli_parse_double("train-lgp", "--edge-sigma", esigma_s, 0, 16, &go.edges.sigma)) ||
      (elow_s && cli_parse_double("train-lgp", "--edge-low", elow_s, 0, 10, &go.edges.low)) ||
      (ehigh_s && cli_parse_double("train-lgp", "--edge-high", ehigh_s, 0, 10, &go.edges.high)) ||
      (ethin_s && cli_parse_int("train-lgp", "--edge-thin", ethin_s, 0, 1, &ethin)) ||
      (emin_s && cli_parse_int("train-lgp", "--edge-min-length", emin_s, 0, 1000000, &emin)))
    return CLI_USAGE;
  go.edges.thin = (int32_t)ethin, go.edges.min_length = (int32_t)emin;
  /* where it will write, checked before any work: into a model directory only through --out */
  int out_is_model = 0, out_exists = 0, copy = 0;
  struct stat st;
  if (out_dir) {
    out_is_model = same_file(out_dir, model_dir);
    out_exists = stat(out_dir, &st) == 0;
    if (out_exists && !S_ISDIR(st.st_mode)) {
      cli_error("train-lgp", "--out %s: not a folder", out_dir);
      return CLI_USAGE;
    }
    if (!out_exists) {
      if (cli_check_output("train-lgp", "--out", out_dir)) return CLI_USAGE;
      copy = 1;
    } else if (!out_is_model && is_empty_dir(out_dir)) {
      copy = 1;
    } else if (!out_is_model && !same_model(model_dir, out_dir)) {
      return CLI_USAGE;
    }
    if (out_exists && access(out_dir, W_OK | X_OK)) {
      cli_error("train-lgp", "--out %s: not writable (%s)", out_dir, strerror(errno));
      return CLI_USAGE;
    }
  } else {
    if (cli_check_output("train-lgp", "--output", out)) return CLI_USAGE;
    if (in_dir(out, model_dir)) {
      cli_error("train-lgp", "--output %s: inside the model directory %s, which changes only through --out %s",
                out, model_dir, model_dir);
      return CLI_USAGE;
    }
  }
  if (ckpt && *ckpt) {
    if (cli_check_output("train-lgp", "--checkpoint", ckpt)) return CLI_USAGE;
    if (!out_is_model && in_dir(ckpt, model_dir)) {
      cli_error("train-lgp", "--checkpoint %s: inside the model directory %s, which changes only through --out %s",
                ckpt, model_dir, model_dir);
      return CLI_USAGE;
    }
  }
  char err[1024] = "";
  if (prompts_s) { /* the prompts and the work folder, checked before the model loads */
    if (!strcmp(prompts_s, "builtin")) {
      go.prompts = train_prompts_builtin();
      if (!go.prompts) {
        cli_error("train-lgp", "out of memory");
        return CLI_FAIL;
      }
    } else {
      sg_tokenizer *tok = sg_model_load_tokenizer(model_dir, err, sizeof err);
      if (!tok) {
        cli_error("train-lgp", "--model %s: %s", model_dir, err);
        return CLI_USAGE;
      }
      go.prompts = train_prompts_read(prompts_s, tok, err, sizeof err);
      sg_tokenizer_free(tok);
      if (!go.prompts) {
        cli_error("train-lgp", "--prompts %s: %s", prompts_s, err);
        return CLI_USAGE;
      }
    }
    const char *base = out_dir ? out_dir : out;
    size_t bl = strlen(base);
    while (bl > 1 && base[bl - 1] == '/') bl--;
    if (work_dir) snprintf(go.work, sizeof go.work, "%s", work_dir);
    else snprintf(go.work, sizeof go.work, "%.*s.work", (int)bl, base);
    int bad = 0;
    if (same_file(go.work, model_dir) || in_dir(go.work, model_dir)) {
      cli_error("train-lgp", "--work %s: inside the model directory %s; the generated images go elsewhere",
                go.work, model_dir);
      bad = 1;
    } else if (stat(go.work, &st) == 0) {
      if (!S_ISDIR(st.st_mode)) cli_error("train-lgp", "--work %s: not a folder", go.work), bad = 1;
      else if (access(go.work, W_OK | X_OK))
        cli_error("train-lgp", "--work %s: not writable (%s)", go.work, strerror(errno)), bad = 1;
    } else if (cli_check_output("train-lgp", "--work", go.work)) {
      bad = 1;
    }
    if (bad) {
      train_prompts_free(go.prompts);
      return CLI_USAGE;
    }
  }
  sg_model_params mp = sg_model_default_params();
  mp.device = device;
  mp.threads = (int32_t)threads;
  sg_model *m = sg_model_load(model_dir, mp, err, sizeof err);
  if (!m) {
    cli_error("train-lgp", "--model %s: %s", model_dir, err);
    train_prompts_free(go.prompts);
    return CLI_USAGE;
  }
  const sg_model_info *info = sg_model_get_info(m);
  int32_t size = info->image_size;
  int rc = CLI_USAGE;
  sg_lgp_data *train = NULL, *held = NULL;
  char desc[4096 + 512];
  if (prompts_s) {
    if (!go.steps) go.steps = info->defaults.steps < 50 ? info->defaults.steps : 50;
    sg_edges_params ge = sg_edges_generated_params(info->downscale);
    if (!esigma_s) go.edges.sigma = ge.sigma;
    if (!emin_s) go.edges.min_length = ge.min_length;
    if (go.cfg < 0) go.cfg = info->defaults.cfg;
    if (check_work(&go, model_dir, info)) goto done;
    struct sigaction sa, old_int, old_term;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    int64_t made = 0;
    double t0 = cli_now();
    int grc = generate_images(m, &go, &made);
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    if (grc) {
      if (grc > 0) {
        int64_t have = 0;
        for (int64_t j = 0; j < go.images; j++) have += have_image(&go, j);
        cli_error("train-lgp", "interrupted while generating: %lld of %lld images are in %s; run the same command "
                  "to continue", (long long)have, (long long)go.images, go.work);
      }
      rc = CLI_FAIL;
      goto done;
    }
    if (!quiet && made)
      fprintf(stderr, "generated %lld images in %.0f s (%.2f s each)\n", (long long)made, cli_now() - t0,
              (cli_now() - t0) / (double)made);
    if (!(train = load_generated(&go, size))) {
      rc = CLI_FAIL;
      goto done;
    }
    snprintf(desc, sizeof desc, "prompts %s: %d prompts, %lld images (train-lgp --prompts: %lld %s steps, cfg %g, "
             "seeds %lld..%lld; edges sigma %g, thresholds %g/%g, thin %d, min length %d)", prompts_s,
             (int)go.prompts->n, (long long)go.images, (long long)go.steps,
             sg_sampler_kind_name(info->defaults.sampler), go.cfg, (long long)go.seed,
             (long long)(go.seed + go.images - 1), go.edges.sigma, go.edges.low, go.edges.high, (int)go.edges.thin,
             (int)go.edges.min_length);
    data_dir = desc;
  } else if (!(train = sg_lgp_data_load_dir(data_dir, size, err, sizeof err))) {
    cli_error("train-lgp", "--data %s: %s", data_dir, err);
    goto done;
  }
  if (held_dir && !(held = sg_lgp_data_load_dir(held_dir, size, err, sizeof err))) {
    cli_error("train-lgp", "--held-out %s: %s", held_dir, err);
    goto done;
  }
  if (copy) {
    if (copy_model(model_dir, out_dir, out_exists)) {
      rc = CLI_FAIL;
      goto done;
    }
    if (!quiet) fprintf(stderr, "copied the model %s to %s\n", model_dir, out_dir);
  }
  if (!quiet)
    fprintf(stderr, "%d training pairs%s from %s; %lld steps at batch %lld, lr %g\n", sg_lgp_data_count(train),
            held ? " (and held-out pairs)" : "", prompts_s ? go.work : data_dir, (long long)steps, (long long)batch,
            lr);
  p.steps = (int32_t)steps;
  p.batch = (int32_t)batch;
  p.lr = lr;
  p.seed = seed;
  p.time_dim = (int32_t)td;
  p.checkpoint_every = (int32_t)every;
  p.out = out_dir ? NULL : out;      /* --out: DIR/lgp.pt, and DIR/model.json is updated */
  p.update_manifest = out_dir != NULL; /* --output: never model.json */
  p.checkpoint = ckpt;
  p.resume = !no_resume;
  p.data_desc = data_dir;
  train_ui ui;
  memset(&ui, 0, sizeof ui);
  ui.quiet = quiet;
  cli_progress_init(&ui.bar, "train-lgp", steps, quiet, -1); /* lines: the loss lines below */
  p.progress = on_progress;
  p.progress_user = &ui;
  struct sigaction sa, old_int, old_term;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sigaction(SIGINT, &sa, &old_int);
  sigaction(SIGTERM, &sa, &old_term);
  sg_lgp_train_result res;
  int trc = sg_lgp_train(m, out_dir ? out_dir : model_dir, train, held, p, &res, err, sizeof err);
  sigaction(SIGINT, &old_int, NULL);
  sigaction(SIGTERM, &old_term, NULL);
  if (ui.bar.enabled) fputs("\r\033[K", stderr);
  if (trc == SG_LGP_ECANCEL && ui.phase == SG_LGP_PHASE_PREPARE) {
    cli_error("train-lgp", "interrupted while encoding the data; no step was trained");
    rc = CLI_FAIL;
    goto done;
  }
  if (trc == SG_LGP_ECANCEL) {
    cli_error("train-lgp", "interrupted at step %d; the checkpoint is saved: run the same command to resume",
              res.step);
    rc = CLI_FAIL;
    goto done;
  }
  if (trc) {
    cli_error("train-lgp", "%s", err);
    rc = trc == SG_LGP_EINVAL || trc == SG_LGP_EDATA ? CLI_USAGE : CLI_FAIL;
    goto done;
  }
  printf("wrote %s (%d steps%s, %.3f s per step%s)\n", res.out, res.step,
         res.resumed_at ? ", resumed" : "", res.seconds_per_step, res.manifest_updated ? "; model.json updated" : "");
  if (res.n_held_out) {
    printf("held-out loss by t:");
    for (int i = 0; i < res.n_held_out; i++) printf(" %d: %.5f", res.held_out_t[i], res.held_out_loss[i]);
    printf("\n");
  }
  rc = CLI_OK;
done:
  sg_lgp_data_free(train);
  sg_lgp_data_free(held);
  sg_model_free(m);
  train_prompts_free(go.prompts);
  return rc;
}
