/* sketchguide train-lgp: trains a model's Latent Guidance Predictor on a directory of (image, caption) pairs, resumably. */
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
#include "lgp_train.h"
#include "model.h"

static const char HELP[] =
    "usage: sketchguide train-lgp --data DIR (--out MODEL_DIR | --output FILE) [--model DIR] [OPTIONS]\n\n"
    "Trains the Latent Guidance Predictor (METHOD.md) of a model: DIR holds NAME.png or NAME.jpg images with\n"
    "NAME.txt captions and, optionally, NAME.edges.png edge maps (white edges on black; without one the built-in\n"
    "detector's edges are used, as `sketchguide edges` shows). It writes only where it is told: --out names a\n"
    "model directory (the --model directory itself, to replace its predictor, or a new folder, which becomes a\n"
    "copy of the model with the new predictor); --output writes the predictor alone, outside the model\n"
    "directory. Interrupted (Ctrl-C) or killed, it resumes from its checkpoint when run again.\n\n"
    "options:\n"
    "  --model DIR          model directory (default: $SKETCHGUIDE_MODEL, else the bundled model); read only,\n"
    "                       unless --out names it\n"
    "  --data DIR           training pairs (required)\n"
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
    "  --quiet              no progress output (otherwise the encoding's count and time left, then the steps)\n";

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

int cmd_train_lgp(int argc, char **argv) {
  cli_args a = {"train-lgp", argc, argv, 1, 0};
  const char *model_dir = cli_default_model(), *data_dir = NULL, *held_dir = NULL, *out = NULL, *ckpt = NULL;
  const char *out_dir = NULL;
  const char *device = "cpu", *v;
  const char *steps_s = NULL, *batch_s = NULL, *lr_s = NULL, *seed_s = NULL, *td_s = NULL, *every_s = NULL,
             *threads_s = NULL;
  int quiet = 0, no_resume = 0;
  while (a.i < argc && !a.failed) {
    if (cli_flag(&a, "--help") || cli_flag(&a, "-h")) {
      fputs(HELP, stdout);
      return CLI_OK;
    }
    if (cli_value(&a, "--model", &v)) model_dir = v;
    else if (cli_value(&a, "--data", &v)) data_dir = v;
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
  if (!data_dir) {
    cli_error("train-lgp", "--data is required (see sketchguide train-lgp --help)");
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
  sg_model_params mp = sg_model_default_params();
  mp.device = device;
  mp.threads = (int32_t)threads;
  sg_model *m = sg_model_load(model_dir, mp, err, sizeof err);
  if (!m) {
    cli_error("train-lgp", "--model %s: %s", model_dir, err);
    return CLI_USAGE;
  }
  int32_t size = sg_model_get_info(m)->image_size;
  int rc = CLI_USAGE;
  sg_lgp_data *train = NULL, *held = NULL;
  if (!(train = sg_lgp_data_load_dir(data_dir, size, err, sizeof err))) {
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
            held ? " (and held-out pairs)" : "", data_dir, (long long)steps, (long long)batch, lr);
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
  return rc;
}
