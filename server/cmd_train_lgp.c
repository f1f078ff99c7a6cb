/* sketchguide train-lgp: trains a model's Latent Guidance Predictor on a directory of (image, caption) pairs, resumably. */
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "lgp_train.h"
#include "model.h"

static const char HELP[] =
    "usage: sketchguide train-lgp --data DIR [--model DIR] [OPTIONS]\n\n"
    "Trains the Latent Guidance Predictor (METHOD.md) of a model: DIR holds NAME.png or NAME.jpg images with\n"
    "NAME.txt captions and, optionally, NAME.edges.png edge maps (white edges on black; without one the built-in\n"
    "detector's edges are used, as `sketchguide edges` shows). Writes MODEL/lgp.pt and model.json's lgp section\n"
    "(or --output). Interrupted (Ctrl-C) or killed, it resumes from its checkpoint when run again.\n\n"
    "options:\n"
    "  --model DIR          model directory (default: $SKETCHGUIDE_MODEL, else the bundled model)\n"
    "  --data DIR           training pairs (required)\n"
    "  --held-out DIR       pairs for the held-out loss report at t = 50, 250, 500, 750, 950\n"
    "  --steps N            training steps (default 3000)\n"
    "  --batch N            images per step (default 16)\n"
    "  --lr X               Adam's learning rate (default 1e-4)\n"
    "  --seed N             initial weights and batches (default 0)\n"
    "  --time-dim N         size of the time encoding (default 32)\n"
    "  --output FILE        where to write the predictor (default MODEL/lgp.pt, which also updates model.json)\n"
    "  --checkpoint FILE    resumable state (default OUTPUT.ckpt)\n"
    "  --checkpoint-every N steps between checkpoints (default 500)\n"
    "  --no-resume          start afresh even when the checkpoint exists\n"
    "  --device DEV         cpu (default), cuda, cuda:N\n"
    "  --threads N          CPU threads (default: all processors)\n"
    "  --quiet              no progress output\n";

static volatile sig_atomic_t interrupted = 0;

static void on_signal(int sig) {
  (void)sig;
  interrupted = 1;
}

typedef struct {
  cli_progress bar;
  int quiet;
  double run_loss;
  int32_t run_n;
} train_ui;

static int on_progress(void *user, const sg_lgp_progress *p) {
  train_ui *ui = user;
  switch (p->phase) {
  case SG_LGP_PHASE_PREPARE:
    if (!ui->quiet) fprintf(stderr, "encoding the data...\n");
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

int cmd_train_lgp(int argc, char **argv) {
  cli_args a = {"train-lgp", argc, argv, 1, 0};
  const char *model_dir = cli_default_model(), *data_dir = NULL, *held_dir = NULL, *out = NULL, *ckpt = NULL;
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
  sg_lgp_train_params p = sg_lgp_train_default_params();
  int64_t steps = p.steps, batch = p.batch, seed = p.seed, td = p.time_dim, every = p.checkpoint_every,
          threads = cli_default_threads();
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
  if (!quiet)
    fprintf(stderr, "%d training pairs%s from %s; %lld steps at batch %lld, lr %g\n", sg_lgp_data_count(train),
            held ? " (and held-out pairs)" : "", data_dir, (long long)steps, (long long)batch, lr);
  p.steps = (int32_t)steps;
  p.batch = (int32_t)batch;
  p.lr = lr;
  p.seed = seed;
  p.time_dim = (int32_t)td;
  p.checkpoint_every = (int32_t)every;
  p.out = out;
  p.checkpoint = ckpt;
  p.resume = !no_resume;
  p.data_desc = data_dir;
  train_ui ui;
  memset(&ui, 0, sizeof ui);
  ui.quiet = quiet;
  cli_progress_init(&ui.bar, "train-lgp", steps, quiet);
  p.progress = on_progress;
  p.progress_user = &ui;
  struct sigaction sa, old_int, old_term;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sigaction(SIGINT, &sa, &old_int);
  sigaction(SIGTERM, &sa, &old_term);
  sg_lgp_train_result res;
  int trc = sg_lgp_train(m, model_dir, train, held, p, &res, err, sizeof err);
  sigaction(SIGINT, &old_int, NULL);
  sigaction(SIGTERM, &old_term, NULL);
  if (ui.bar.enabled) fputs("\r\033[K", stderr);
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
