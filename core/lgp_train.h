/* Training the Latent Guidance Predictor (METHOD.md, "Training the LGP") as tools/train_lgp.py does, resumable.
 *
 * Basic usage:
 *   char err[512];
 *   sg_model *m = sg_model_load("models/shapes", sg_model_default_params(), err, sizeof err);
 *   int32_t size = sg_model_get_info(m)->image_size;
 *   sg_lgp_data *train = sg_lgp_data_load_dir("pairs/", size, err, sizeof err);   // NAME.png + NAME.txt [+ ...]
 *   sg_lgp_data *held = sg_lgp_data_load_dir("held/", size, err, sizeof err);     // optional, for the report
 *   sg_lgp_train_params p = sg_lgp_train_default_params();
 *   p.steps = 3000;
 *   sg_lgp_train_result r;
 *   if (sg_lgp_train(m, "models/shapes", train, held, p, &r, err, sizeof err)) fprintf(stderr, "%s\n", err);
 *   // models/shapes/lgp.pt now holds the predictor (its description inside, extra file lgp.json) and
 *   // model.json's "lgp" section describes it; models/shapes/lgp.pt.ckpt lets an interrupted run resume.
 *   sg_lgp_data_free(train); sg_lgp_data_free(held); sg_model_free(m);
 *
 * The data are prepared once (z0 = E(image), target = E(edge map), one text context per distinct caption); then
 * each step draws batch indices, timesteps t uniform in [0, num_train_timesteps) and noise from one generator
 * seeded seed * 7919 (torch's mt19937, so the same numbers as the Python trainer), forms
 * z_t = sqrt(abar_t) z0 + sqrt(1 - abar_t) noise, runs the U-Net without gradients and takes an Adam step on the
 * loss mean over pixels of ||P(F(z_t), t) - E(e)||^2. The predictor starts as torch.manual_seed(seed) then
 * lgp.LGP(...) would. A checkpoint holds the predictor, Adam's state and the generator's state, so a resumed run
 * ends with the same weights as an uninterrupted one (the Python trainer reseeds on resume instead).
 *
 * Errors: functions return 0 or a negative SG_LGP_E* code with a message in err (errlen bytes, may be NULL);
 * constructors return NULL. Nothing prints: progress goes to the caller's callback.
 * Threads: a data set is read-only once built and may be shared; sg_lgp_train only reads the model's modules, so
 * other threads may generate with the same model meanwhile (the predictor being trained is private).
 */
#ifndef SG_LGP_TRAIN_H
#define SG_LGP_TRAIN_H

#include <stddef.h>
#include <stdint.h>

#include "model.h"

#ifdef __cplusplus
extern "C" {
#endif

enum {
  SG_LGP_OK = 0,
  SG_LGP_EINVAL = -1,   /* a bad argument or parameter, or a checkpoint written with other settings */
  SG_LGP_ENOMEM = -2,   /* out of memory */
  SG_LGP_EIO = -3,      /* a file or directory could not be read or written */
  SG_LGP_EDATA = -4,    /* unusable data: no pairs, an undecodable image, a wrong image size */
  SG_LGP_ERUNTIME = -5, /* libtorch failed (see the message) */
  SG_LGP_ECANCEL = -6,  /* the progress callback asked to stop (the checkpoint was written first) */
};

#define SG_LGP_MAX_HIDDEN 8
#define SG_LGP_N_EVAL_T 5 /* the held-out timesteps: 50, 250, 500, 750, 950 */

/* ---- data: (image, edge map, caption) triples at one image size ---- */

typedef struct sg_lgp_data sg_lgp_data;

/* Creates an empty data set of image_size x image_size pairs. Returns NULL on failure. */
sg_lgp_data *sg_lgp_data_new(int32_t image_size, char *err, size_t errlen);

/* Appends a pair (copied): rgb is width x height x 3 bytes (interleaved, rows top to bottom) and must be at the
 * set's image size; edges is width x height bytes, an edge where > 127 (stored as 255/0), or NULL to run the
 * built-in edge detector (sg_edges_detect, default thresholds) on rgb; caption is UTF-8. Returns 0, or
 * SG_LGP_EDATA for a wrong size, SG_LGP_EINVAL for NULL arguments, SG_LGP_ENOMEM. */
int sg_lgp_data_add(sg_lgp_data *d, const uint8_t *rgb, int32_t width, int32_t height, const uint8_t *edges,
                    const char *caption, char *err, size_t errlen);

/* Reads a directory as tools/train_lgp.py's load_dir does: for every NAME.png, NAME.jpg or NAME.jpeg (any case,
 * in byte order of names, skipping hidden files and NAME.edges.*) that has NAME.txt beside it: the image as RGB
 * (alpha dropped, gray replicated, as PIL's convert("RGB")), the caption (the file's text, whitespace stripped),
 * and the edge map NAME.edges.png (gray as PIL's convert("L"), edge where > 127) or, without one, the built-in
 * detector's edges of the image. Images and edge maps of another size are resized to image_size with
 * sg_image_resize (bilinear; PIL's bicubic and antialiased bilinear, which the Python loader uses, differ
 * slightly). Returns NULL with a message when dir cannot be read, holds no pairs (SG_LGP_EDATA semantics) or a
 * file cannot be decoded. */
sg_lgp_data *sg_lgp_data_load_dir(const char *dir, int32_t image_size, char *err, size_t errlen);

/* Returns the number of pairs (0 for NULL). */
int32_t sg_lgp_data_count(const sg_lgp_data *d);
/* Returns the set's image size (0 for NULL). */
int32_t sg_lgp_data_image_size(const sg_lgp_data *d);
/* Pair i's image (size x size x 3), edge map (size x size, 255/0) and caption, owned by the set; NULL when i is out
 * of range. */
const uint8_t *sg_lgp_data_image(const sg_lgp_data *d, int32_t i);
const uint8_t *sg_lgp_data_edges(const sg_lgp_data *d, int32_t i);
const char *sg_lgp_data_caption(const sg_lgp_data *d, int32_t i);

/* Frees the set; NULL is ignored. */
void sg_lgp_data_free(sg_lgp_data *d);

/* ---- training ---- */

typedef enum {
  SG_LGP_PHASE_PREPARE = 0, /* encoding the data (step 0): done of total inputs, first with done 0, then after each
                             * encoder call */
  SG_LGP_PHASE_STEP,        /* a training step finished: step, loss (that step's batch loss) */
  SG_LGP_PHASE_CHECKPOINT,  /* the checkpoint was written at step */
  SG_LGP_PHASE_HELD_OUT,    /* the held-out loss at timestep t is loss */
  SG_LGP_PHASE_SAVED,       /* the predictor was written */
} sg_lgp_phase;

typedef struct {
  sg_lgp_phase phase;
  int32_t step, steps; /* steps done (resumed ones included) and the total */
  double loss;
  int32_t t;           /* SG_LGP_PHASE_HELD_OUT: the timestep */
  double seconds;      /* since sg_lgp_train began */
  int32_t done, total; /* inputs encoded while preparing, and in all: the images, edge maps and distinct captions
                        * of the training and held-out sets (they stay at the total after SG_LGP_PHASE_PREPARE) */
} sg_lgp_progress;

/* Called from sg_lgp_train's thread. A nonzero return stops the call with SG_LGP_ECANCEL: after a step, once the
 * checkpoint is written (a later call resumes there); while encoding the data (PREPARE) or during the held-out
 * report (HELD_OUT; the last step's checkpoint is on disk), at once. Other phases' returns are ignored. */
typedef int (*sg_lgp_progress_fn)(void *user, const sg_lgp_progress *p);

typedef struct {
  int32_t steps;            /* 3000 (METHOD.md); 0 only evaluates and saves the (resumed or fresh) predictor */
  int32_t batch;            /* 16 images per step (the bundled model used 32) */
  double lr;                /* Adam's learning rate, 1e-4 (the bundled model used 3e-4) */
  int64_t seed;             /* 0: the predictor's initial weights, and the batches (seed * 7919) */
  int32_t time_dim;         /* 32: the time encoding's size */
  int32_t hidden[SG_LGP_MAX_HIDDEN]; /* 512, 256, 128, 64 */
  int32_t n_hidden;         /* 4 */
  const char *out;          /* NULL: MODEL_DIR/lgp.pt */
  const char *checkpoint;   /* NULL: OUT.ckpt; "" for none */
  int32_t checkpoint_every; /* 500 steps (and always after the last step) */
  int resume;               /* 1: continue from the checkpoint when it exists (same settings required) */
  int update_manifest;      /* 1: when out is MODEL_DIR/lgp.pt, set model.json's "lgp" section (atomic rewrite) */
  const char *data_desc;    /* the description's "data" (for example the directory); NULL: "N pairs" */
  sg_lgp_progress_fn progress; /* NULL for none */
  void *progress_user;
} sg_lgp_train_params;

typedef struct {
  int32_t step;        /* steps done in all, resumed ones included */
  int32_t resumed_at;  /* the checkpoint's step, or 0 when training started afresh */
  double first_loss;   /* the first step's batch loss in this call (NAN when no step ran) */
  double last_loss;    /* the mean batch loss of the last (up to) 100 steps in this call (NAN when none ran) */
  int32_t n_held_out;  /* entries in held_out_t and held_out_loss: SG_LGP_N_EVAL_T, or 0 without held-out data */
  int32_t held_out_t[SG_LGP_N_EVAL_T];
  double held_out_loss[SG_LGP_N_EVAL_T]; /* eval-mode loss on the held-out set at each t (unrounded) */
  double prepare_seconds, train_seconds, seconds_per_step;
  char out[4096];      /* the predictor's path */
  int manifest_updated;
} sg_lgp_train_result;

/* Returns the defaults above. */
sg_lgp_train_params sg_lgp_train_default_params(void);

/* Trains a fresh predictor (or resumes one from the checkpoint) for the model m loaded from model_dir, on train,
 * reports the held-out loss on held_out (may be NULL) at t in 50, 250, 500, 750, 950 (eval mode, batches of 64,
 * noise from a generator seeded 123, as train_lgp.py's held_out()), then writes the predictor as TorchScript with
 * its description (extra file lgp.json: lgp.describe()'s keys, trained.by "sketchguide train-lgp") atomically to
 * p.out, and updates model.json when p.out is the model's own lgp.pt. res (may be NULL) receives the figures.
 * Returns 0 or a negative SG_LGP_E* code with a message in err. */
int sg_lgp_train(sg_model *m, const char *model_dir, const sg_lgp_data *train, const sg_lgp_data *held_out,
                 sg_lgp_train_params p, sg_lgp_train_result *res, char *err, size_t errlen);

#ifdef __cplusplus
}
#endif

#endif
