/* torchshim: a plain-C interface over libtorch for TorchScript diffusion modules (the only place that sees torch).
 *
 * Basic usage:
 *   ts_set_threads(2);
 *   ts_module *unet = ts_module_load("models/shapes/unet.pt", "cpu", TS_FLOAT32, 0);
 *   int64_t shape[4] = {1, 4, 16, 16};
 *   ts_tensor *z = ts_tensor_from_host(latents, TS_FLOAT32, shape, 4, "cpu");
 *   ts_tensor *in[3] = {z, t, context}, *out[16];
 *   int n = ts_module_forward(unet, in, 3, out, 16);   // n outputs: eps, then the taps
 *   if (n < 0) fprintf(stderr, "%s\n", ts_last_error());
 *   ts_tensor_to_host(out[0], eps, sizeof eps);
 *   ts_tensors_free(out, n); ts_tensor_free(z); ts_module_free(unet);
 *
 * Errors: functions returning a pointer return NULL on failure, those returning int return a negative value;
 * either way ts_last_error() then gives this thread's message. No C++ exception ever leaves this library.
 * Ownership: every ts_tensor returned is owned by the caller (ts_tensor_free); inputs are borrowed.
 * Threads: modules may be shared between threads for forward calls (TorchScript methods are reentrant);
 * training (ts_adam_*) and ts_module_set_train need the caller's exclusive use of that module.
 */
#ifndef TORCHSHIM_H
#define TORCHSHIM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { TS_FLOAT32 = 0, TS_FLOAT16 = 1, TS_BFLOAT16 = 2, TS_INT64 = 3, TS_INT32 = 4, TS_UINT8 = 5 } ts_dtype;

typedef struct ts_module ts_module; /* a TorchScript module on one device, in one dtype */
typedef struct ts_tensor ts_tensor; /* a reference to a tensor */
typedef struct ts_rng ts_rng;       /* a seeded CPU random generator (torch's mt19937: same numbers as Python's) */
typedef struct ts_adam ts_adam;     /* an Adam optimiser over a module's parameters */

enum {
  TS_OK = 0,
  TS_ERROR = -1,     /* libtorch raised an error: see ts_last_error() */
  TS_EINVAL = -2,    /* a bad argument */
  TS_ETOOMANY = -3,  /* more outputs than the caller's array holds */
};

/* This thread's last error message (never NULL; empty when none). */
const char *ts_last_error(void);

/* Sets libtorch's intra-op threads to n and pins OpenBLAS (when loaded) to 1 thread, so that the two pools do not
 * fight. Returns 0 or a negative code. */
int ts_set_threads(int n);

/* Returns the number of CUDA devices libtorch can use (0 without CUDA). */
int ts_cuda_device_count(void);

/* Returns 1 when device ("cpu", "cuda", "cuda:N") names a usable device, else 0 with a message. */
int ts_device_ok(const char *device);

/* Loads a TorchScript module onto device, converts its floating-point parameters to dtype and sets eval mode.
 * Unless trainable, parameters are frozen (no gradients), which also allows inference mode. Returns NULL on
 * failure. */
ts_module *ts_module_load(const char *path, const char *device, ts_dtype dtype, int trainable);
void ts_module_free(ts_module *m);

/* Reads an extra file stored inside a TorchScript archive (such as the LGP's "lgp.json") into a malloc'ed,
 * NUL-terminated string the caller frees. Returns NULL on failure or when absent. */
char *ts_archive_extra(const char *path, const char *name);

/* Runs forward(inputs...) without gradients. A Tensor, tuple or list result is flattened into out (at most
 * max_out tensors). Returns the number of outputs or a negative code. */
int ts_module_forward(ts_module *m, ts_tensor *const *in, int n_in, ts_tensor **out, int max_out);

/* Runs an LGP module: forward(taps: List[Tensor], t) -> prediction, without gradients (eval mode as set). */
ts_tensor *ts_lgp_forward(ts_module *lgp, ts_tensor *const *taps, int n_taps, const ts_tensor *t);

/* The guidance gradient of METHOD.md for one conditional U-Net pass: runs unet(z, t, context) with gradients
 * with respect to z, the LGP on its taps, L = sum((lgp - target)^2), and dL/dz. Writes eps (the U-Net's noise
 * prediction, detached) and grad; *loss (when not NULL) gets L. Returns 0 or a negative code. */
int ts_guidance_grad(ts_module *unet, ts_module *lgp, const ts_tensor *z, const ts_tensor *t, const ts_tensor *context,
                     const ts_tensor *target, ts_tensor **eps, ts_tensor **grad, double *loss);

/* The guidance move of METHOD.md on n host latents of len floats each: z_prev -= alpha_k grad_k with
 * alpha_k = min(beta_k ||z_k - z_prev_k||, cap_k) / ||grad_k|| (0 when the gradient is 0): the push's norm is at
 * most cap_k (docs/guidance.md; FLT_MAX for METHOD.md's rule unchanged), computed with torch's float32 ops in
 * the reference sampler's order, so that C and Python round alike. Returns 0 or a negative code. */
int ts_guidance_move(float *z_prev, const float *z, const float *grad, const float *beta, const float *cap, int64_t n,
                     int64_t len);

/* Profile of ts_guidance_grad on this thread: seconds in the U-Net's forward pass with gradients, the LGP and its
 * loss, and the backward pass, accumulated since the last ts_profile_take (which returns and clears them; NULL
 * pointers are skipped). When enabled, the clock waits for a CUDA device before each reading so that times are
 * real there (at some cost); on the CPU the times are exact either way. */
void ts_profile_enable(int on);
void ts_profile_take(double *unet_forward, double *lgp, double *backward);

/* The n tensors parts[0..n) (the same one may repeat) concatenated along dimension 0, as torch.cat(parts); one part
 * gives a new reference to it. Returns a new tensor or NULL. */
ts_tensor *ts_tensor_cat(const ts_tensor *const *parts, int n);

/* Tensors. from_host copies ndim dims of data (dtype as given) onto device; to_host converts to float32 (or
 * int64 for integer tensors) and copies exactly bytes bytes, which must match the tensor's size. */
ts_tensor *ts_tensor_from_host(const void *data, ts_dtype dtype, const int64_t *shape, int ndim, const char *device);
int ts_tensor_to_host(const ts_tensor *t, void *out, size_t bytes);
int ts_tensor_ndim(const ts_tensor *t);
int64_t ts_tensor_dim(const ts_tensor *t, int i);
int64_t ts_tensor_numel(const ts_tensor *t);
void ts_tensor_free(ts_tensor *t);
void ts_tensors_free(ts_tensor **ts, int n);

/* Random numbers: a CPU mt19937 generator (as torch.Generator().manual_seed(seed)); randn fills out with n
 * standard normal float32 values, exactly as torch.randn(shape, generator=g) with n = numel(shape). */
ts_rng *ts_rng_new(uint64_t seed);
int ts_rng_randn(ts_rng *g, float *out, const int64_t *shape, int ndim);
void ts_rng_free(ts_rng *g);

/* LGP training: Adam over the module's parameters (lr, betas 0.9/0.999, eps 1e-8). step() runs the LGP in
 * training mode on taps and t, takes L = mean over pixels of the squared distance to target summed over
 * channels, back-propagates and updates. Returns 0 and the loss in *loss, or a negative code. */
ts_adam *ts_adam_new(ts_module *m, double lr);
int ts_adam_step(ts_adam *opt, ts_tensor *const *taps, int n_taps, const ts_tensor *t, const ts_tensor *target,
                 double *loss);
void ts_adam_free(ts_adam *opt);

/* Creates a fresh Latent Guidance Predictor with the contract of tools/lgp.py's scripted LGP:
 * forward(taps: List[Tensor], t: Tensor) -> Tensor[B, out_channels, latent_size, latent_size]; the features are
 * each tap resized to latent_size (bilinear, align_corners false) as float32, concatenated on channels, then the
 * sinusoidal time encoding (time_dim values: cos half, sin half, max period 10000); per latent pixel, Linear +
 * BatchNorm1d (momentum 0.1, eps 1e-5) + ReLU for each of the n_hidden sizes, then Linear to out_channels. Its
 * parameter and buffer names are nn.Module's (mlp.0.weight, mlp.1.running_mean, ...). Initialised as PyTorch's
 * defaults, drawn from a generator seeded with seed: the same weights as torch.manual_seed(seed) then
 * lgp.LGP(...) in Python. Returns a trainable float32 module on device, in training mode, or NULL. */
ts_module *ts_lgp_create(int64_t in_channels, int64_t latent_size, int64_t time_dim, const int64_t *hidden,
                         int n_hidden, int64_t out_channels, uint64_t seed, const char *device);

/* The training loss of ts_adam_step (mean over pixels of the squared distance summed over channels), without
 * gradients and in the module's current mode, into *loss. Returns 0 or a negative code. */
int ts_lgp_loss(ts_module *lgp, ts_tensor *const *taps, int n_taps, const ts_tensor *t, const ts_tensor *target,
                double *loss);

/* A view of t with its dimensions permuted (torch's t.permute(dims)); data and strides are shared, so a host
 * NHWC array uploaded and permuted to NCHW is laid out as torch.from_numpy(nhwc).permute(0, 3, 1, 2) is (modules
 * may pick other kernels for such channels-last inputs). Returns a new reference or NULL. */
ts_tensor *ts_tensor_permute(const ts_tensor *t, const int64_t *dims, int ndim);

/* n integers uniform in [low, high) from g, exactly as torch.randint(low, high, (n,), generator=g). Returns 0 or a
 * negative code. */
int ts_rng_randint(ts_rng *g, int64_t low, int64_t high, int64_t *out, int64_t n);

/* Training state for resuming: writes m's parameters and buffers, opt's state (opt must be m's optimiser), g's
 * state (when g is not NULL), step and the caller's meta string (NULL for none; for example the settings, to
 * check before resuming) into the file path (torch's serialize archive, written in place: the caller makes it
 * atomic). load reads such a file back into the same kind of module, its optimiser and g (required when given),
 * and *step (when not NULL), so that training continues exactly as if never interrupted. Both return 0 or a
 * negative code. ts_train_state_meta returns the meta string of such a file (malloc'ed, the caller frees it), or
 * NULL when path is not one. */
int ts_train_state_save(const char *path, ts_module *m, ts_adam *opt, const ts_rng *g, int64_t step,
                        const char *meta);
int ts_train_state_load(const char *path, ts_module *m, ts_adam *opt, ts_rng *g, int64_t *step);
char *ts_train_state_meta(const char *path);

/* Sets training (1) or eval (0) mode of a module. Returns 0 or a negative code. */
int ts_module_set_train(ts_module *m, int on);

/* Saves a module as TorchScript with one extra file (name, NUL-terminated contents; NULL for none). */
int ts_module_save(ts_module *m, const char *path, const char *extra_name, const char *extra);

#ifdef __cplusplus
}
#endif

#endif
