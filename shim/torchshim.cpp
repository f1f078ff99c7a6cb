// torchshim: the libtorch side of shim/torchshim.h; every entry point turns exceptions into error returns.
#include "torchshim.h"

#include <ATen/Parallel.h>
#include <dlfcn.h>
#include <torch/autograd.h>
#include <torch/cuda.h>
#include <torch/optim/adam.h>
#include <torch/script.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

struct ts_module {
  torch::jit::Module mod;
  torch::Device device;
  at::ScalarType dtype;
  bool trainable;
};

struct ts_tensor {
  at::Tensor t;
};

struct ts_rng {
  at::Generator gen;
};

struct ts_adam {
  ts_module *m;
  std::unique_ptr<torch::optim::Adam> opt;
};

namespace {

thread_local std::string last_error;

/* This thread's guidance profile (ts_profile_*). */
struct profile {
  bool on = false;
  double unet_forward = 0, lgp = 0, backward = 0;
};
thread_local profile prof;

/* Seconds on a monotonic clock; when profiling, first waits for the device that holds like. */
double profile_clock(const at::Tensor &like) {
  if (prof.on && like.is_cuda()) torch::cuda::synchronize(like.device().index());
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

void set_error(const std::string &msg) { last_error = msg; }

// Runs f, returning its value; on an exception records the message and returns fail.
template <typename R, typename F>
R guard(R fail, F &&f) {
  try {
    last_error.clear();
    return f();
  } catch (const c10::Error &e) {
    set_error(e.what_without_backtrace());
  } catch (const std::exception &e) {
    set_error(e.what());
  } catch (...) {
    set_error("unknown C++ exception");
  }
  return fail;
}

at::ScalarType scalar_type(ts_dtype d) {
  switch (d) {
    case TS_FLOAT32: return at::kFloat;
    case TS_FLOAT16: return at::kHalf;
    case TS_BFLOAT16: return at::kBFloat16;
    case TS_INT64: return at::kLong;
    case TS_INT32: return at::kInt;
    case TS_UINT8: return at::kByte;
  }
  throw std::invalid_argument("unknown dtype " + std::to_string(static_cast<int>(d)));
}

torch::Device parse_device(const char *device) {
  torch::Device dev(device && *device ? device : "cpu");
  if (dev.is_cuda()) {
    int n = static_cast<int>(torch::cuda::device_count());
    if (n == 0) throw std::runtime_error(std::string("device ") + device + ": this libtorch has no CUDA device");
    if (dev.has_index() && dev.index() >= n)
      throw std::runtime_error(std::string("device ") + device + ": only " + std::to_string(n) + " CUDA devices");
  } else if (!dev.is_cpu()) {
    throw std::runtime_error(std::string("device ") + device + ": only cpu and cuda are supported");
  }
  return dev;
}

std::vector<int64_t> dims(const int64_t *shape, int ndim) {
  if (ndim < 0 || ndim > 8 || (ndim > 0 && !shape)) throw std::invalid_argument("bad shape");
  for (int i = 0; i < ndim; i++)
    if (shape[i] < 0) throw std::invalid_argument("negative dimension");
  return std::vector<int64_t>(shape, shape + ndim);
}

ts_tensor *wrap(at::Tensor t) { return new ts_tensor{std::move(t)}; }

void flatten(const c10::IValue &v, std::vector<at::Tensor> &out) {
  if (v.isTensor()) {
    out.push_back(v.toTensor());
  } else if (v.isTuple()) {
    for (const auto &e : v.toTupleRef().elements()) flatten(e, out);
  } else if (v.isList()) {
    for (const auto &e : v.toListRef()) flatten(e, out);
  } else {
    throw std::runtime_error("module returned a " + v.tagKind() + ", not tensors");
  }
}

c10::List<at::Tensor> tap_list(ts_tensor *const *taps, int n) {
  if (n <= 0 || !taps) throw std::invalid_argument("no taps");
  c10::List<at::Tensor> l;
  for (int i = 0; i < n; i++) {
    if (!taps[i]) throw std::invalid_argument("NULL tap");
    l.push_back(taps[i]->t);
  }
  return l;
}

std::vector<at::Tensor> params_of(torch::jit::Module &m) {
  std::vector<at::Tensor> ps;
  for (const auto &p : m.parameters()) ps.push_back(p);
  return ps;
}

}  // namespace

extern "C" {

const char *ts_last_error(void) { return last_error.c_str(); }

int ts_set_threads(int n) {
  return guard<int>(TS_ERROR, [&] {
    if (n < 1) throw std::invalid_argument("thread count must be at least 1");
    at::set_num_threads(n);
    using setter = void (*)(int);
    if (auto f = reinterpret_cast<setter>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"))) f(1);
    return TS_OK;
  });
}

int ts_cuda_device_count(void) {
  return guard<int>(0, [] { return static_cast<int>(torch::cuda::device_count()); });
}

int ts_device_ok(const char *device) {
  return guard<int>(0, [&] {
    parse_device(device);
    return 1;
  });
}

ts_module *ts_module_load(const char *path, const char *device, ts_dtype dtype, int trainable) {
  return guard<ts_module *>(nullptr, [&]() -> ts_module * {
    if (!path) throw std::invalid_argument("no module path");
    torch::Device dev = parse_device(device);
    at::ScalarType st = scalar_type(dtype);
    if (!at::isFloatingType(st)) throw std::invalid_argument("module dtype must be a floating-point type");
    auto m = std::make_unique<ts_module>(ts_module{torch::jit::load(path, dev), dev, st, trainable != 0});
    bool convert = false;
    for (const auto &p : m->mod.parameters())
      if (p.is_floating_point() && p.scalar_type() != st) convert = true;
    if (convert) m->mod.to(st);
    m->mod.eval();
    for (auto p : m->mod.parameters()) p.requires_grad_(trainable != 0);
    return m.release();
  });
}

void ts_module_free(ts_module *m) { delete m; }

char *ts_archive_extra(const char *path, const char *name) {
  return guard<char *>(nullptr, [&]() -> char * {
    if (!path || !name) throw std::invalid_argument("no path or name");
    torch::jit::ExtraFilesMap files{{name, ""}};
    torch::jit::load(path, torch::kCPU, files);
    const std::string &s = files[name];
    if (s.empty()) throw std::runtime_error(std::string(path) + ": no extra file " + name);
    char *out = static_cast<char *>(std::malloc(s.size() + 1));
    if (!out) throw std::bad_alloc();
    std::memcpy(out, s.data(), s.size());
    out[s.size()] = 0;
    return out;
  });
}

int ts_module_forward(ts_module *m, ts_tensor *const *in, int n_in, ts_tensor **out, int max_out) {
  return guard<int>(TS_ERROR, [&] {
    if (!m || (n_in > 0 && !in) || (max_out > 0 && !out) || n_in < 0) throw std::invalid_argument("bad arguments");
    torch::NoGradGuard ng;
    std::vector<c10::IValue> args;
    for (int i = 0; i < n_in; i++) {
      if (!in[i]) throw std::invalid_argument("NULL input");
      args.emplace_back(in[i]->t);
    }
    std::vector<at::Tensor> res;
    flatten(m->mod.forward(args), res);
    if (static_cast<int>(res.size()) > max_out) {
      set_error("module returned " + std::to_string(res.size()) + " tensors, room for " + std::to_string(max_out));
      return static_cast<int>(TS_ETOOMANY);
    }
    for (size_t i = 0; i < res.size(); i++) out[i] = wrap(res[i]);
    return static_cast<int>(res.size());
  });
}

ts_tensor *ts_lgp_forward(ts_module *lgp, ts_tensor *const *taps, int n_taps, const ts_tensor *t) {
  return guard<ts_tensor *>(nullptr, [&] {
    if (!lgp || !t) throw std::invalid_argument("bad arguments");
    torch::NoGradGuard ng;
    return wrap(lgp->mod.forward({tap_list(taps, n_taps), t->t}).toTensor());
  });
}

int ts_guidance_grad(ts_module *unet, ts_module *lgp, const ts_tensor *z, const ts_tensor *t, const ts_tensor *context,
                     const ts_tensor *target, ts_tensor **eps, ts_tensor **grad, double *loss) {
  return guard<int>(TS_ERROR, [&] {
    if (!unet || !lgp || !z || !t || !context || !target || !eps || !grad) throw std::invalid_argument("bad arguments");
    torch::AutoGradMode on(true);
    at::Tensor zg = z->t.detach().requires_grad_(true);
    double t0 = profile_clock(zg);
    std::vector<at::Tensor> outs;
    flatten(unet->mod.forward({zg, t->t, context->t}), outs);
    if (outs.size() < 2) throw std::runtime_error("the U-Net returned no taps");
    double t1 = profile_clock(zg);
    c10::List<at::Tensor> taps;
    for (size_t i = 1; i < outs.size(); i++) taps.push_back(outs[i]);
    at::Tensor pred = lgp->mod.forward({taps, t->t}).toTensor().to(at::kFloat);
    at::Tensor l = (pred - target->t.to(pred.device(), at::kFloat)).pow(2).sum();
    double t2 = profile_clock(zg);
    at::Tensor g = torch::autograd::grad({l}, {zg})[0];
    double t3 = profile_clock(zg);
    prof.unet_forward += t1 - t0;
    prof.lgp += t2 - t1;
    prof.backward += t3 - t2;
    if (loss) *loss = l.item<double>();
    *eps = wrap(outs[0].detach());
    *grad = wrap(g.detach());
    return TS_OK;
  });
}

int ts_guidance_move(float *z_prev, const float *z, const float *grad, const float *beta, const float *cap, int64_t n,
                     int64_t len) {
  return guard<int>(TS_ERROR, [&] {
    if (!z_prev || !z || !grad || !beta || !cap || n < 1 || len < 1) throw std::invalid_argument("bad arguments");
    auto opt = torch::TensorOptions().dtype(at::kFloat);
    at::Tensor zp = torch::from_blob(z_prev, {n, len}, opt), zt = torch::from_blob(const_cast<float *>(z), {n, len}, opt);
    at::Tensor g = torch::from_blob(const_cast<float *>(grad), {n, len}, opt);
    at::Tensor b = torch::from_blob(const_cast<float *>(beta), {n}, opt);
    at::Tensor c = torch::from_blob(const_cast<float *>(cap), {n}, opt);
    torch::NoGradGuard no_grad;
    /* the reference sampler's arithmetic, op for op, so that both round alike */
    at::Tensor move = (zt - zp).norm(2, {1}), gn = g.norm(2, {1});
    at::Tensor alpha = torch::where(gn > 0, at::minimum(b * move, c) / gn.clamp_min(1e-30), torch::zeros_like(gn));
    zp.copy_(zp - alpha.unsqueeze(1) * g);
    return TS_OK;
  });
}

ts_tensor *ts_tensor_from_host(const void *data, ts_dtype dtype, const int64_t *shape, int ndim, const char *device) {
  return guard<ts_tensor *>(nullptr, [&] {
    std::vector<int64_t> d = dims(shape, ndim);
    at::Tensor cpu = torch::empty(d, torch::TensorOptions().dtype(scalar_type(dtype)));
    if (cpu.numel() > 0) {
      if (!data) throw std::invalid_argument("no data");
      std::memcpy(cpu.data_ptr(), data, static_cast<size_t>(cpu.numel()) * cpu.element_size());
    }
    torch::Device dev = parse_device(device);
    return wrap(dev.is_cpu() ? cpu : cpu.to(dev));
  });
}

ts_tensor *ts_tensor_cat(const ts_tensor *const *parts, int n) {
  return guard<ts_tensor *>(nullptr, [&] {
    if (!parts || n < 1) throw std::invalid_argument("no tensors to concatenate");
    std::vector<at::Tensor> v;
    for (int i = 0; i < n; i++) {
      if (!parts[i]) throw std::invalid_argument("NULL tensor");
      v.push_back(parts[i]->t);
    }
    return wrap(n == 1 ? v[0] : torch::cat(v, 0));
  });
}

int ts_tensor_to_host(const ts_tensor *t, void *out, size_t bytes) {
  return guard<int>(TS_ERROR, [&] {
    if (!t || (!out && bytes)) throw std::invalid_argument("bad arguments");
    at::Tensor c = t->t.detach().to(torch::kCPU, t->t.is_floating_point() ? at::kFloat : at::kLong).contiguous();
    size_t need = static_cast<size_t>(c.numel()) * c.element_size();
    if (need != bytes)
      throw std::invalid_argument("tensor has " + std::to_string(need) + " bytes, buffer " + std::to_string(bytes));
    if (need) std::memcpy(out, c.data_ptr(), need);
    return TS_OK;
  });
}

void ts_profile_enable(int on) { prof.on = on != 0; }

void ts_profile_take(double *unet_forward, double *lgp, double *backward) {
  if (unet_forward) *unet_forward = prof.unet_forward;
  if (lgp) *lgp = prof.lgp;
  if (backward) *backward = prof.backward;
  prof.unet_forward = prof.lgp = prof.backward = 0;
}

int ts_tensor_ndim(const ts_tensor *t) { return t ? static_cast<int>(t->t.dim()) : TS_EINVAL; }

int64_t ts_tensor_dim(const ts_tensor *t, int i) {
  return (t && i >= 0 && i < t->t.dim()) ? t->t.size(i) : static_cast<int64_t>(TS_EINVAL);
}

int64_t ts_tensor_numel(const ts_tensor *t) { return t ? t->t.numel() : static_cast<int64_t>(TS_EINVAL); }

void ts_tensor_free(ts_tensor *t) { delete t; }

void ts_tensors_free(ts_tensor **ts, int n) {
  for (int i = 0; ts && i < n; i++) {
    delete ts[i];
    ts[i] = nullptr;
  }
}

ts_rng *ts_rng_new(uint64_t seed) {
  return guard<ts_rng *>(nullptr, [&] { return new ts_rng{at::detail::createCPUGenerator(seed)}; });
}

int ts_rng_randn(ts_rng *g, float *out, const int64_t *shape, int ndim) {
  return guard<int>(TS_ERROR, [&] {
    if (!g || !out) throw std::invalid_argument("bad arguments");
    at::Tensor r = torch::randn(dims(shape, ndim), g->gen, torch::TensorOptions().dtype(at::kFloat));
    std::memcpy(out, r.data_ptr<float>(), static_cast<size_t>(r.numel()) * sizeof(float));
    return TS_OK;
  });
}

void ts_rng_free(ts_rng *g) { delete g; }

ts_adam *ts_adam_new(ts_module *m, double lr) {
  return guard<ts_adam *>(nullptr, [&] {
    if (!m || !m->trainable) throw std::invalid_argument("the module was not loaded as trainable");
    if (!(lr > 0)) throw std::invalid_argument("learning rate must be positive");
    auto opt = std::make_unique<torch::optim::Adam>(params_of(m->mod), torch::optim::AdamOptions(lr));
    return new ts_adam{m, std::move(opt)};
  });
}

int ts_adam_step(ts_adam *a, ts_tensor *const *taps, int n_taps, const ts_tensor *t, const ts_tensor *target,
                 double *loss) {
  return guard<int>(TS_ERROR, [&] {
    if (!a || !t || !target) throw std::invalid_argument("bad arguments");
    torch::AutoGradMode on(true);
    a->m->mod.train(true);
    at::Tensor pred = a->m->mod.forward({tap_list(taps, n_taps), t->t}).toTensor().to(at::kFloat);
    at::Tensor l = (pred - target->t.to(pred.device(), at::kFloat)).pow(2).sum(1).mean();
    a->opt->zero_grad();
    l.backward();
    a->opt->step();
    if (loss) *loss = l.item<double>();
    return TS_OK;
  });
}

void ts_adam_free(ts_adam *a) { delete a; }

int ts_module_set_train(ts_module *m, int on) {
  return guard<int>(TS_ERROR, [&] {
    if (!m) throw std::invalid_argument("no module");
    m->mod.train(on != 0);
    return TS_OK;
  });
}

int ts_module_save(ts_module *m, const char *path, const char *extra_name, const char *extra) {
  return guard<int>(TS_ERROR, [&] {
    if (!m || !path) throw std::invalid_argument("bad arguments");
    torch::jit::ExtraFilesMap files;
    if (extra_name && extra) files[extra_name] = extra;
    m->mod.save(path, files);
    return TS_OK;
  });
}

}  // extern "C"

// ---- A fresh LGP built in C++ (the scripted tools/lgp.py contract), and resumable training state ----

namespace {

// TorchScript bodies of the LGP's modules: the same operations, in the same order, as torch.jit.script of
// tools/lgp.py's LGP (nn.Linear, nn.BatchNorm1d with momentum 0.1 and eps 1e-5, nn.ReLU, nn.Sequential).
const char *const kLinearSrc = R"JIT(
def forward(self, input: Tensor) -> Tensor:
    return torch.linear(input, self.weight, self.bias)
)JIT";

const char *const kBatchNormSrc = R"JIT(
def forward(self, input: Tensor) -> Tensor:
    if self.training:
        self.num_batches_tracked.add_(1)
    return torch.batch_norm(input, self.weight, self.bias, self.running_mean, self.running_var, self.training,
                            0.1, 1e-05, True)
)JIT";

const char *const kReLUSrc = R"JIT(
def forward(self, input: Tensor) -> Tensor:
    return torch.relu(input)
)JIT";

// F(z_t | c, t) then the per-pixel MLP; the time encoding is sdmodels.timestep_embedding (cos half, sin half).
const char *const kLGPSrc = R"JIT(
def time_encoding(self, t: Tensor) -> Tensor:
    dim = self.time_dim
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=6, device=t.device) * (-torch.log(10000.0)) / half)
    args = t.to(6)[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], -1)
    if dim % 2 == 1:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], -1)
    return emb

def forward(self, taps: List[Tensor], t: Tensor) -> Tensor:
    size = [self.latent_size, self.latent_size]
    f = torch.cat([torch.upsample_bilinear2d(x.to(6), size, False, None) for x in taps], 1)
    b, c, h, w = f.size()
    if t.dim() == 0:
        t = t.expand([b])
    te = self.time_encoding(t)
    x = torch.cat([f.permute([0, 2, 3, 1]).reshape([b * h * w, c]),
                   te[:, None, :].expand([b, h * w, self.time_dim]).reshape([b * h * w, self.time_dim])], 1)
    y = self.mlp.forward(x)
    return y.reshape([b, h, w, self.out_channels]).permute([0, 3, 1, 2])
)JIT";

// A new module object of the class type `type` (created, named __torch__.sketchguide.NAME, on first use; its
// methods are defined once, by the caller) with nn.Module's "training" flag.
torch::jit::Module new_module(const std::shared_ptr<torch::jit::CompilationUnit> &cu, c10::ClassTypePtr &type,
                              const char *name) {
  torch::jit::Module m = type ? torch::jit::Module(cu, type)
                              : torch::jit::Module(c10::QualifiedName(std::string("__torch__.sketchguide.") + name), cu);
  type = m.type();
  m.register_attribute("training", c10::BoolType::get(), true);
  return m;
}

// nn.Linear's initialisation from gen: weight by kaiming_uniform_(a = sqrt(5)), then bias U(-1/sqrt(in), ...).
void init_linear(torch::jit::Module &m, int64_t in, int64_t out, at::Generator &gen) {
  double a = std::sqrt(5.0), gain = std::sqrt(2.0 / (1 + std::pow(a, 2)));
  double bound = std::sqrt(3.0) * (gain / std::sqrt(static_cast<double>(in)));
  at::Tensor w = torch::empty({out, in}).uniform_(-bound, bound, gen);
  double bb = 1 / std::sqrt(static_cast<double>(in));
  at::Tensor b = torch::empty({out}).uniform_(-bb, bb, gen);
  m.register_parameter("weight", w, false);
  m.register_parameter("bias", b, false);
}

std::vector<std::pair<std::string, at::Tensor>> state_of(const torch::jit::Module &m) {
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (const auto &p : m.named_parameters(true)) out.emplace_back(p.name, p.value);
  for (const auto &b : m.named_buffers(true)) out.emplace_back(b.name, b.value);
  return out;
}

std::vector<int64_t> dims_of(const int64_t *d, int n) {
  if (n < 0 || n > 8 || (n > 0 && !d)) throw std::invalid_argument("bad dimension list");
  return std::vector<int64_t>(d, d + n);
}

void check_state_format(torch::serialize::InputArchive &ar, const char *path) {
  c10::IValue fmt;
  if (!ar.try_read("format", fmt) || !fmt.isString() || fmt.toStringRef() != "sketchguide-train-state 1")
    throw std::runtime_error(std::string(path) + ": not a training state written by this library");
}

}  // namespace

extern "C" {

ts_module *ts_lgp_create(int64_t in_channels, int64_t latent_size, int64_t time_dim, const int64_t *hidden,
                         int n_hidden, int64_t out_channels, uint64_t seed, const char *device) {
  return guard<ts_module *>(nullptr, [&]() -> ts_module * {
    if (in_channels < 1 || latent_size < 1 || time_dim < 0 || out_channels < 1 || n_hidden < 0 || n_hidden > 64 ||
        (n_hidden > 0 && !hidden))
      throw std::invalid_argument("bad LGP shape");
    for (int i = 0; i < n_hidden; i++)
      if (hidden[i] < 1) throw std::invalid_argument("hidden sizes must be positive");
    torch::Device dev = parse_device(device);
    auto cu = std::make_shared<torch::jit::CompilationUnit>();
    c10::ClassTypePtr lin_t, bn_t, relu_t, seq_t, lgp_t;
    at::Generator gen = at::detail::createCPUGenerator(seed);
    torch::jit::Module seq = new_module(cu, seq_t, "Sequential");
    std::string seq_src = "def forward(self, input: Tensor) -> Tensor:\n    x = input\n";
    int64_t c = in_channels + time_dim, k = 0;
    auto add = [&](torch::jit::Module m) {
      seq.register_module(std::to_string(k), m);
      seq_src += "    x = getattr(self, \"" + std::to_string(k) + "\").forward(x)\n";
      k++;
    };
    bool lin_defined = false, bn_defined = false, relu_defined = false;
    for (int i = 0; i <= n_hidden; i++) {
      int64_t o = i < n_hidden ? hidden[i] : out_channels;
      torch::jit::Module lin = new_module(cu, lin_t, "Linear");
      init_linear(lin, c, o, gen);
      if (!lin_defined) lin.define(kLinearSrc), lin_defined = true;
      add(lin);
      if (i == n_hidden) break;
      torch::jit::Module bn = new_module(cu, bn_t, "BatchNorm1d");
      bn.register_parameter("weight", torch::ones({o}), false);
      bn.register_parameter("bias", torch::zeros({o}), false);
      bn.register_buffer("running_mean", torch::zeros({o}));
      bn.register_buffer("running_var", torch::ones({o}));
      bn.register_buffer("num_batches_tracked", torch::zeros({}, torch::TensorOptions().dtype(at::kLong)));
      if (!bn_defined) bn.define(kBatchNormSrc), bn_defined = true;
      add(bn);
      torch::jit::Module relu = new_module(cu, relu_t, "ReLU");
      if (!relu_defined) relu.define(kReLUSrc), relu_defined = true;
      add(relu);
      c = o;
    }
    seq_src += "    return x\n";
    seq.define(seq_src);
    torch::jit::Module lgp = new_module(cu, lgp_t, "LGP");
    lgp.register_attribute("in_channels", c10::IntType::get(), in_channels);
    lgp.register_attribute("time_dim", c10::IntType::get(), time_dim);
    lgp.register_attribute("latent_size", c10::IntType::get(), latent_size);
    lgp.register_attribute("out_channels", c10::IntType::get(), out_channels);
    lgp.register_module("mlp", seq);
    lgp.define(kLGPSrc);
    if (!dev.is_cpu()) lgp.to(dev);
    lgp.train(true);
    for (auto p : lgp.parameters()) p.requires_grad_(true);
    return new ts_module{lgp, dev, at::kFloat, true};
  });
}

ts_tensor *ts_tensor_permute(const ts_tensor *t, const int64_t *dims, int ndim) {
  return guard<ts_tensor *>(nullptr, [&] {
    if (!t) throw std::invalid_argument("no tensor");
    return wrap(t->t.permute(dims_of(dims, ndim)));
  });
}

int ts_rng_randint(ts_rng *g, int64_t low, int64_t high, int64_t *out, int64_t n) {
  return guard<int>(TS_ERROR, [&] {
    if (!g || (!out && n > 0) || n < 0 || high <= low) throw std::invalid_argument("bad arguments");
    if (n == 0) return TS_OK;
    at::Tensor r = torch::randint(low, high, {n}, g->gen, torch::TensorOptions().dtype(at::kLong));
    std::memcpy(out, r.data_ptr<int64_t>(), static_cast<size_t>(n) * sizeof(int64_t));
    return TS_OK;
  });
}

int ts_lgp_loss(ts_module *lgp, ts_tensor *const *taps, int n_taps, const ts_tensor *t, const ts_tensor *target,
                double *loss) {
  return guard<int>(TS_ERROR, [&] {
    if (!lgp || !t || !target || !loss) throw std::invalid_argument("bad arguments");
    torch::NoGradGuard ng;
    at::Tensor pred = lgp->mod.forward({tap_list(taps, n_taps), t->t}).toTensor().to(at::kFloat);
    *loss = (pred - target->t.to(pred.device(), at::kFloat)).pow(2).sum(1).mean().item<double>();
    return TS_OK;
  });
}

int ts_train_state_save(const char *path, ts_module *m, ts_adam *opt, const ts_rng *g, int64_t step,
                        const char *meta) {
  return guard<int>(TS_ERROR, [&] {
    if (!path || !m || !opt || opt->m != m) throw std::invalid_argument("bad arguments");
    torch::serialize::OutputArchive ar, mod, oa;
    for (const auto &kv : state_of(m->mod)) mod.write(kv.first, kv.second.detach().to(torch::kCPU));
    opt->opt->save(oa);
    ar.write("format", c10::IValue(std::string("sketchguide-train-state 1")));
    ar.write("step", c10::IValue(step));
    ar.write("meta", c10::IValue(std::string(meta ? meta : "")));
    ar.write("module", mod);
    ar.write("optimizer", oa);
    if (g) ar.write("rng", g->gen.get_state());
    ar.save_to(path);
    return TS_OK;
  });
}

char *ts_train_state_meta(const char *path) {
  return guard<char *>(nullptr, [&]() -> char * {
    if (!path) throw std::invalid_argument("no path");
    torch::serialize::InputArchive ar;
    ar.load_from(path, torch::kCPU);
    check_state_format(ar, path);
    c10::IValue meta;
    ar.read("meta", meta);
    const std::string &s = meta.toStringRef();
    char *out = static_cast<char *>(std::malloc(s.size() + 1));
    if (!out) throw std::bad_alloc();
    std::memcpy(out, s.data(), s.size());
    out[s.size()] = 0;
    return out;
  });
}

int ts_train_state_load(const char *path, ts_module *m, ts_adam *opt, ts_rng *g, int64_t *step) {
  return guard<int>(TS_ERROR, [&] {
    if (!path || !m || !opt || opt->m != m) throw std::invalid_argument("bad arguments");
    torch::serialize::InputArchive ar, mod, oa;
    ar.load_from(path, m->device);
    check_state_format(ar, path);
    c10::IValue st;
    ar.read("step", st);
    ar.read("module", mod);
    ar.read("optimizer", oa);
    torch::NoGradGuard ng;
    for (auto &kv : state_of(m->mod)) {
      at::Tensor v;
      if (!mod.try_read(kv.first, v)) throw std::runtime_error(std::string(path) + ": no tensor " + kv.first);
      if (v.sizes() != kv.second.sizes())
        throw std::runtime_error(std::string(path) + ": " + kv.first + " has another shape than the module's");
      kv.second.copy_(v);
    }
    opt->opt->load(oa);
    if (g) {
      at::Tensor gs;
      if (!ar.try_read("rng", gs)) throw std::runtime_error(std::string(path) + ": no generator state");
      g->gen.set_state(gs.to(torch::kCPU));
    }
    if (step) *step = st.toInt();
    return TS_OK;
  });
}

}  // extern "C"
