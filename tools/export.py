#!/usr/bin/python3
"""Exports an original single-file Stable Diffusion checkpoint (.safetensors or .ckpt) to a sketchguide model directory.

Usage: /usr/bin/python3 tools/export.py CHECKPOINT --out models/NAME [--vocab FILE|DIR] [--dtype float16] [--lgp lgp.pt]

The directory gets TorchScript modules (text_encoder.pt, unet.pt, vae_encoder.pt, vae_decoder.pt), the CLIP
tokenizer files and model.json, the manifest that the C engine and tools/sample.py read.

The checkpoint's format is told by its content, not its name. A pickled checkpoint (a .ckpt, Lightning's included) is
read by a restricted unpickler that calls nothing but tensor rebuilding: no code in the file runs. Only SD 1.x
layouts are converted (or the layout --config gives); SD 2.x, SDXL and inpainting checkpoints are refused.
"""
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import collections
import io
import json
import pickle
import shutil
import struct
import sys
import zipfile

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import clip_tokenizer  # noqa: E402
import safetensors_io  # noqa: E402
import sdmodels  # noqa: E402

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
MODULES = {"text_encoder": "text_encoder.pt", "unet": "unet.pt", "vae_encoder": "vae_encoder.pt", "vae_decoder": "vae_decoder.pt"}
FORMAT_VERSION = 1
# generation defaults written into the manifest (the paper's beta, stop and cfg); a config's "defaults" override them
DEFAULTS = {"steps": 50, "cfg": 8.0, "beta": 1.6, "stop": 0.5, "sampler": "ddim", "eta": 0.0}


class ExportError(Exception):
    pass


# ---- reading checkpoints: the format is told by the file's first bytes, never by its name ----

def sniff_format(path: str) -> str:
    """'safetensors', 'zip' (PyTorch's zip checkpoint), 'pickle' (PyTorch's legacy format) or an ExportError."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) == 9 and head[8:9] == b"{":
        (n,) = struct.unpack("<Q", head[:8])
        if 8 + n <= size:
            return "safetensors"
    if head[:4] == b"PK\x03\x04":
        return "zip"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "pickle"
    raise ExportError("%s: neither a safetensors file nor a PyTorch checkpoint (it starts with %s)" % (
        path, head[:8].hex(" ")))


# Pickled checkpoints are read by a restricted unpickler of our own, not by torch.load: the only callables a pickle
# can reach are the ones in _allowed_globals() (tensor references and inert types); any other global becomes an
# Unloaded placeholder class, never imported or called. (torch.load(weights_only=True) refuses Lightning checkpoints,
# whose callbacks are pickled classes, and torch 1.13's torch.load ignores its pickle_module argument unless
# weights_only is set, so it cannot be given a restricted unpickler.)
_STORAGE_DTYPES = {
    "DoubleStorage": torch.float64, "FloatStorage": torch.float32, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
    "UntypedStorage": torch.uint8,
}
_TORCH_MAGIC = 0x1950A86A20F9469CFC6C  # the legacy format's first pickle
_TORCH_LEGACY_PROTOCOL = 1001
# Names only a pickle made to run code on load refers to: such a file is refused outright (it would be harmless
# here, as a placeholder runs nothing, but it is hostile and the user should hear so).
_HOSTILE_MODULES = {"os", "posix", "nt", "subprocess", "_posixsubprocess", "sys", "importlib", "runpy", "shutil",
                    "socket", "pty", "ctypes", "pickle", "_pickle", "marshal", "webbrowser", "code", "codeop", "pdb",
                    "commands", "multiprocessing", "signal", "operator", "tempfile", "pathlib", "io", "_io"}
_HOSTILE_BUILTINS = {"eval", "exec", "compile", "getattr", "setattr", "delattr", "__import__", "open", "breakpoint",
                     "input", "globals", "locals", "vars", "exit", "quit", "apply", "execfile", "file", "reload"}


class HostilePickle(pickle.UnpicklingError):
    pass


class Unloaded:
    """Stands for an object of a class (or the result of a call) that the exporter does not load: it keeps what the
    pickle gave it and runs nothing."""
    pickled_name = "?"

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        obj.__dict__.update(_args=args, _state=None, _items={}, _list=[])
        return obj

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self.__dict__["_state"] = state

    def __setitem__(self, key, value):
        self.__dict__.setdefault("_items", {})[key] = value

    def append(self, value):
        self.__dict__.setdefault("_list", []).append(value)

    def extend(self, values):
        self.__dict__.setdefault("_list", []).extend(values)

    def __repr__(self):
        return "<%s, not loaded>" % self.pickled_name


class _StorageType:
    """What a pickled torch.*Storage class resolves to."""

    def __init__(self, dtype):
        self.dtype = dtype


class _Storage:
    """A storage's raw bytes (a uint8 tensor, set when its record is read) and dtype."""

    def __init__(self, dtype, numel: int):
        self.dtype, self.numel, self.data = dtype, numel, None

    def nbytes(self) -> int:
        return self.numel * torch.empty((), dtype=self.dtype).element_size()


class _TensorRef:
    """A pickled tensor: a strided view of a storage, made into a tensor only if the state dict holds it."""
    __slots__ = ("storage", "offset", "size", "stride")

    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def tensor(self) -> torch.Tensor:
        s = self.storage
        if s.data is None:
            raise pickle.UnpicklingError("a tensor whose storage is not in the file")
        flat = s.data.view(s.dtype) if s.numel else torch.empty(0, dtype=s.dtype)
        return torch.as_strided(flat, self.size, self.stride, self.offset)


def _ints(x, what: str):
    if not isinstance(x, tuple) or not all(type(i) is int and i >= 0 for i in x):
        raise pickle.UnpicklingError("tensor %s is not a tuple of integers" % what)
    return x


def _rebuild_tensor(storage, storage_offset, size, stride, *ignored):
    """Stands for torch._utils._rebuild_tensor(_v2): checks its arguments, builds nothing yet."""
    if not isinstance(storage, _Storage) or type(storage_offset) is not int or storage_offset < 0:
        raise pickle.UnpicklingError("a tensor without a storage")
    return _TensorRef(storage, storage_offset, _ints(tuple(size), "size"), _ints(tuple(stride), "stride"))


def _rebuild_parameter(data, *ignored):
    """Stands for torch._utils._rebuild_parameter(_with_state): a parameter is its data."""
    if not isinstance(data, _TensorRef):
        raise pickle.UnpicklingError("a parameter without a tensor")
    return data


def _latin1(text, encoding):
    """Stands for _codecs.encode, which protocol 2 pickles use for bytes: latin-1 only."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("bytes in an unexpected encoding")
    return text.encode("latin-1")


def _allowed_globals() -> dict:
    table = {("collections", "OrderedDict"): collections.OrderedDict, ("torch", "Size"): torch.Size,
             ("builtins", "set"): set, ("builtins", "frozenset"): frozenset, ("__builtin__", "set"): set,
             ("__builtin__", "frozenset"): frozenset, ("_codecs", "encode"): _latin1,
             ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
             ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
             ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
             ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter}
    table.update({("torch", n): _StorageType(dt) for n, dt in _STORAGE_DTYPES.items()})
    table.update({("torch", n): getattr(torch, n) for n in dir(torch) if isinstance(getattr(torch, n), torch.dtype)})
    return table


class RestrictedUnpickler(pickle.Unpickler):
    """Resolves globals from _allowed_globals() only; others become Unloaded subclasses (their names collected in
    .unloaded); hostile names are refused. persistent_load is given by the reader."""

    def __init__(self, file, persistent_load=None):
        super().__init__(file, encoding="utf-8")
        self.unloaded, self.allowed, self._persistent = set(), _allowed_globals(), persistent_load

    def find_class(self, module, name):
        if not isinstance(module, str) or not isinstance(name, str):
            raise pickle.UnpicklingError("a global name of a wrong type")
        if (module, name) in self.allowed:
            return self.allowed[(module, name)]
        root = module.split(".", 1)[0]
        if root in _HOSTILE_MODULES or (root in ("builtins", "__builtin__") and name in _HOSTILE_BUILTINS):
            raise HostilePickle("%s.%s" % (module, name))
        full = "%s.%s" % (module, name)
        self.unloaded.add(full)
        return type("Unloaded", (Unloaded,), {"pickled_name": full, "__module__": __name__})

    def persistent_load(self, pid):
        if self._persistent is None:
            raise pickle.UnpicklingError("a persistent id outside a checkpoint")
        return self._persistent(pid)


def _storage_id(pid, n: int):
    if not isinstance(pid, tuple) or len(pid) != n or pid[0] not in ("storage", b"storage"):
        raise pickle.UnpicklingError("a persistent id that is not a storage: %r" % (pid[:1],))
    if not isinstance(pid[1], _StorageType):
        raise pickle.UnpicklingError("a storage of an unknown type")
    return pid


def _read_zip(path: str, mm, notes_unloaded: set):
    """PyTorch's zip format: archive/data.pkl and one record archive/data/KEY per storage (memory-mapped when the
    record is stored uncompressed, as torch.save writes it)."""
    try:
        z = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise ExportError("%s: not a readable zip archive: %s" % (path, e))
    with z:
        infos = {i.filename: i for i in z.infolist()}
        inner = {n.split("/", 1)[1] for n in infos if "/" in n}
        if "constants.pkl" in inner or any(n.startswith("code/") for n in inner):
            raise ExportError("%s: a TorchScript archive, not a checkpoint (refused: loading one runs its code)" % path)
        pkl = [n for n in infos if n.count("/") == 1 and n.endswith("/data.pkl")]
        if len(pkl) != 1:
            raise ExportError("%s: a zip archive but not a PyTorch checkpoint (no data.pkl)" % path)
        prefix = pkl[0][:-len("data.pkl")]
        if prefix + "byteorder" in infos and z.read(prefix + "byteorder").strip() not in (b"", b"little"):
            raise ExportError("%s: a big-endian checkpoint, which is not supported" % path)
        storages = {}

        def record(key: str, nbytes: int) -> torch.Tensor:
            info = infos.get(prefix + "data/" + key)
            if info is None or info.file_size != nbytes:
                raise pickle.UnpicklingError("storage %r: no record of %d bytes" % (key, nbytes))
            if nbytes == 0:
                return torch.zeros(0, dtype=torch.uint8)
            if info.compress_type == zipfile.ZIP_STORED:
                h = info.header_offset
                local = bytes(mm[h:h + 30])
                if len(local) == 30 and local[:4] == b"PK\x03\x04":
                    n, m = struct.unpack("<HH", local[26:30])
                    start = h + 30 + n + m
                    if start + nbytes <= len(mm):
                        return torch.from_numpy(mm[start:start + nbytes])
            return torch.frombuffer(bytearray(z.read(info)), dtype=torch.uint8)

        def persistent_load(pid):
            _, st, key, _location, numel = _storage_id(pid, 5)
            if not isinstance(key, str) or type(numel) is not int or numel < 0:
                raise pickle.UnpicklingError("a malformed storage id")
            if key not in storages:
                s = _Storage(st.dtype, numel)
                s.data = record(key, s.nbytes())
                storages[key] = s
            elif storages[key].dtype != st.dtype:
                raise pickle.UnpicklingError("storage %r read with two dtypes" % key)
            return storages[key]

        up = RestrictedUnpickler(io.BytesIO(z.read(pkl[0])), persistent_load)
        try:
            return up.load()
        finally:
            notes_unloaded.update(up.unloaded)


def _read_legacy(path: str, mm, notes_unloaded: set):
    """PyTorch's legacy format: pickles of the magic number, protocol and system info, the object, the storage keys,
    then each storage's element count (int64) and bytes."""
    with open(path, "rb") as f:
        head = RestrictedUnpickler(f)
        if head.load() != _TORCH_MAGIC:
            notes_unloaded.update(head.unloaded)
            raise ExportError("%s: a pickle but not a PyTorch checkpoint (no PyTorch magic number)" % path)
        if head.load() != _TORCH_LEGACY_PROTOCOL:
            raise ExportError("%s: an unknown PyTorch legacy format version" % path)
        info = head.load()
        if isinstance(info, dict) and dict.get(info, "little_endian") is False:
            raise ExportError("%s: a big-endian checkpoint, which is not supported" % path)
        storages = {}

        def persistent_load(pid):
            if isinstance(pid, tuple) and pid[:1] in (("module",), (b"module",)):
                return pid[1] if len(pid) > 1 else None  # a pickled module's source: only its (placeholder) class
            _, st, key, _location, numel, view = _storage_id(pid, 6)
            if view is not None:
                raise pickle.UnpicklingError("storage views (a legacy format feature) are not supported")
            if not isinstance(key, str) or type(numel) is not int or numel < 0:
                raise pickle.UnpicklingError("a malformed storage id")
            storages.setdefault(key, _Storage(st.dtype, numel))
            return storages[key]

        up = RestrictedUnpickler(f, persistent_load)
        try:
            obj = up.load()
        finally:
            notes_unloaded.update(up.unloaded)
        keys = RestrictedUnpickler(f).load()
        if not isinstance(keys, list) or any(k not in storages for k in keys):
            raise pickle.UnpicklingError("a storage list that does not match the object")
        pos = f.tell()
    for k in keys:
        s = storages[k]
        nb = s.nbytes()
        if pos + 8 + nb > len(mm) or struct.unpack("<q", bytes(mm[pos:pos + 8]))[0] != s.numel:
            raise pickle.UnpicklingError("storage %r: its data does not fit the file" % k)
        s.data = torch.from_numpy(mm[pos + 8:pos + 8 + nb]) if nb else torch.zeros(0, dtype=torch.uint8)
        pos += 8 + nb
    return obj


def _read_pickled(path: str, fmt: str, notes: list) -> dict:
    """The tensors of a pickled checkpoint's state dict (its "state_dict" entry, else the top-level dict)."""
    unloaded = set()
    mm = np.memmap(path, dtype=np.uint8, mode="c")
    try:
        obj = (_read_zip if fmt == "zip" else _read_legacy)(path, mm, unloaded)
        if isinstance(obj, dict) and isinstance(dict.get(obj, "state_dict"), dict):
            obj = dict.__getitem__(obj, "state_dict")
        if not isinstance(obj, dict):
            raise ExportError("%s: holds %s, not a state dict" % (
                path, repr(obj) if isinstance(obj, Unloaded) else "a %s" % type(obj).__name__))
        sd = {k: v.tensor() for k, v in dict.items(obj) if isinstance(k, str) and isinstance(v, _TensorRef)}
    except HostilePickle as e:
        raise ExportError("%s: refused: its pickle refers to %s, as only a file made to run code when loaded does "
                          "(nothing in it was run)" % (path, e))
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError, AttributeError,
            RuntimeError, OverflowError, struct.error, UnicodeDecodeError, MemoryError, zipfile.BadZipFile,
            OSError) as e:
        raise ExportError("%s: cannot read as a PyTorch checkpoint: %s: %s" % (path, type(e).__name__, e))
    if unloaded:
        notes.append("%s: ignored pickled objects of %d classes or functions that are not loaded (nothing in them "
                     "was run): %s" % (path, len(unloaded), ", ".join(sorted(unloaded))))
    if not sd:
        raise ExportError("%s: a pickle without tensors, not a state dict" % path)
    return sd


def load_checkpoint(path: str, notes: list = None):
    """Returns (state dict, metadata dict) of a .safetensors or a pickled .ckpt/.pt checkpoint, told apart by content
    whatever the file's name. Remarks about the file (objects that were not loaded) are appended to notes."""
    notes = [] if notes is None else notes
    if not os.path.isfile(path):
        raise ExportError("%s: no such file" % path)
    fmt = sniff_format(path)
    if fmt == "safetensors":
        try:
            return safetensors_io.load(path, with_metadata=True)
        except ValueError as e:
            raise ExportError(str(e))
    return _read_pickled(path, fmt, notes), {}


def checkpoint_family(sd: dict):
    """What the checkpoint's U-Net says it is: (kind, description), kind None for an SD 1.x layout, 'sd2', 'sdxl' or
    'inpainting' for a known family this exporter refuses, 'other' for any other layout."""
    if any(k.startswith("conditioner.embedders.") for k in sd):
        return "sdxl", "an SDXL checkpoint (text encoders under conditioner.embedders.)"
    w = sd.get(sdmodels.PREFIX_UNET + "input_blocks.0.0.weight")
    if w is None or w.dim() != 4:
        return "other", "no U-Net input convolution (%sinput_blocks.0.0.weight)" % sdmodels.PREFIX_UNET
    ctx = next((v.shape[1] for k, v in sd.items()
                if k.startswith(sdmodels.PREFIX_UNET) and k.endswith(".attn2.to_k.weight") and v.dim() == 2), None)
    cin, mch = w.shape[1], w.shape[0]
    if ctx == 1024:
        openclip = any(k.startswith("cond_stage_model.model.") for k in sd)
        return "sd2", "an SD 2.x checkpoint: U-Net cross-attention context 1024 wide (SD 1.x: 768)%s" % (
            ", OpenCLIP text encoder under cond_stage_model.model." if openclip else "")
    if ctx == 2048:
        return "sdxl", "an SDXL checkpoint: U-Net cross-attention context 2048 wide (SD 1.x: 768)"
    if cin == 9:
        return "inpainting", ("an inpainting checkpoint: U-Net input 9 channels (latent 4, mask 1, masked image 4; "
                              "SD 1.x: 4)")
    found = []
    if cin != 4:
        found.append("U-Net input %d channels (SD 1.x: 4)" % cin)
    if mch != 320:
        found.append("U-Net model_channels %d (SD 1.x: 320)" % mch)
    if ctx is None:
        found.append("no U-Net cross-attention (attn2.to_k.weight)")
    elif ctx != 768:
        found.append("U-Net cross-attention context %d wide (SD 1.x: 768)" % ctx)
    return ("other", ", ".join(found)) if found else (None, "an SD 1.x checkpoint")


def infer_config(sd: dict, meta: dict, given: str = None) -> dict:
    """The model configuration: --config (a JSON file or 'sd15'), else the checkpoint's own, else SD 1.x by shapes;
    a checkpoint of another family (SD 2.x, SDXL, inpainting) is refused with what was found."""
    if given:
        if given == "sd15":
            return json.loads(json.dumps(sdmodels.SD15))
        with open(given) as f:
            return json.load(f)
    if "sketchguide_config" in meta:
        return json.loads(meta["sketchguide_config"])
    kind, found = checkpoint_family(sd)
    if kind is None:
        return json.loads(json.dumps(sdmodels.SD15))
    if kind != "other":
        raise ExportError("refused: %s; this exporter converts Stable Diffusion 1.x only" % found)
    raise ExportError("cannot tell this checkpoint's configuration (not SD 1.x: %s); pass --config FILE" % found)


TEXT_SHORT = "cond_stage_model.transformer."  # text-encoder keys of checkpoints saved without `text_model.`


def normalise_keys(sd: dict):
    """Gives text-encoder keys without `text_model.` the prefix the models use. Returns (state dict, {key here: key as
    the checkpoint names it})."""
    out, names = {}, {}
    for k, v in sd.items():
        n = k
        if k.startswith(TEXT_SHORT) and not k.startswith(sdmodels.PREFIX_TEXT):
            n = sdmodels.PREFIX_TEXT + k[len(TEXT_SHORT):]
        if n in out:
            raise ExportError("the checkpoint holds %s twice: as %s and as %s" % (n, names[n], k))
        out[n], names[n] = v, k
    return out, names


LIST_MAX = 20  # keys named per kind of problem and part; the count is always given


def _listing(items: list) -> str:
    more = len(items) - LIST_MAX
    return "; ".join(items[:LIST_MAX]) + ("; and %d more" % more if more > 0 else "")


def fit_parts(modules, sd: dict, names: dict, family: str = None) -> None:
    """Loads the checkpoint into (unet, vae, text) after checking every tensor against the modules' own state dicts
    (which are in the checkpoint's layout); an ExportError names each missing, unexpected or mis-sized tensor as the
    checkpoint names it (or would: a missing key in the file's own text-encoder convention)."""
    short = any(names[k] != k for k in names if k.startswith(sdmodels.PREFIX_TEXT))

    def name(key):
        if key in names:
            return names[key]
        return TEXT_SHORT + key[len(sdmodels.PREFIX_TEXT):] if short and key.startswith(sdmodels.PREFIX_TEXT) else key

    prefixes = (sdmodels.PREFIX_UNET, sdmodels.PREFIX_VAE, sdmodels.PREFIX_TEXT)
    whats = ("U-Net", "VAE", "text encoder")
    parts = sdmodels.split_checkpoint(sd)
    problems = []
    for module, part, prefix, what in zip(modules, parts, prefixes, whats):
        want = module.state_dict()
        missing = [name(prefix + k) for k in want if k not in part]
        unexpected = [name(prefix + k) for k in part if k not in want]
        sizes = ["%s is %s in the checkpoint, %s in the configuration" % (
            name(prefix + k), list(part[k].shape), list(want[k].shape))
            for k in want if k in part and tuple(part[k].shape) != tuple(want[k].shape)]
        for items, one, many in ((missing, "missing key", "missing keys"), (sizes, "size mismatch", "size mismatches"),
                                 (unexpected, "unexpected key", "unexpected keys")):
            if items:
                problems.append("%s: %d %s: %s" % (what, len(items), one if len(items) == 1 else many,
                                                   _listing(items)))
    if problems:
        raise ExportError("the checkpoint's weights do not fit the configuration%s:\n  %s" % (
            " (the file is %s)" % family if family else "", "\n  ".join(problems)))
    for module, part, what in zip(modules, parts, whats):
        try:
            module.load_state_dict(part, strict=True)
        except RuntimeError as e:
            raise ExportError("%s: weights do not load: %s" % (what, str(e).strip()))


def load_models(checkpoint: str, config: str = None, notes: list = None):
    """Reads a checkpoint and builds its three modules with its weights. Returns (cfg, meta, unet, vae, text)."""
    sd, meta = load_checkpoint(checkpoint, notes)
    sd, names = normalise_keys(sd)
    cfg = infer_config(sd, meta, config)
    kind, found = checkpoint_family(sd)
    with sdmodels.no_init():
        unet, vae, text = sdmodels.build(cfg)
    fit_parts((unet, vae, text), sd, names, found if kind not in (None, "other") else None)
    for m in (unet, vae, text):
        m.eval().requires_grad_(False)
    return cfg, meta, unet, vae, text


def copy_tokenizer(vocab: str, out: str, cfg: dict) -> dict:
    """Copies CLIP tokenizer files into out; returns the manifest's tokenizer section."""
    if os.path.isdir(vocab):
        src = [os.path.join(vocab, f) for f in ("vocab.json", "merges.txt") if os.path.exists(os.path.join(vocab, f))]
        if not any(s.endswith("merges.txt") for s in src):
            raise ExportError("%s: no merges.txt" % vocab)
    else:
        if not os.path.isfile(vocab):
            raise ExportError("%s: no such tokenizer file" % vocab)
        src = [vocab]
        if vocab.endswith("merges.txt") and os.path.exists(os.path.join(os.path.dirname(vocab), "vocab.json")):
            src.append(os.path.join(os.path.dirname(vocab), "vocab.json"))
    for s in src:
        shutil.copyfile(s, os.path.join(out, os.path.basename(s)))
    names = [os.path.basename(s) for s in src]
    merges_file = next(n for n in names if n != "vocab.json")
    tok = clip_tokenizer.Tokenizer.from_files(os.path.join(out, merges_file))
    if tok.vocab_size != cfg["text"]["vocab_size"]:
        raise ExportError("tokenizer has %d tokens, the text encoder %d" % (tok.vocab_size, cfg["text"]["vocab_size"]))
    sec = {"type": "clip-bpe", "merges": merges_file, "merges_count": len(tok.merges), "vocab_size": tok.vocab_size,
           "max_length": cfg["text"]["max_positions"], "sot_id": tok.sot_id, "eot_id": tok.eot_id, "pad_id": tok.pad_id}
    if "vocab.json" in names:
        sec["vocab"] = "vocab.json"
    return sec


def lgp_section(path: str) -> dict:
    """Reads the LGP's own description (an extra file inside its TorchScript archive)."""
    files = {"lgp.json": ""}
    torch.jit.load(path, map_location="cpu", _extra_files=files)
    if not files["lgp.json"]:
        raise ExportError("%s: not an LGP saved by tools/train_lgp.py (no lgp.json inside)" % path)
    sec = json.loads(files["lgp.json"])
    sec["file"] = "lgp.pt"
    return sec


def export(checkpoint: str, out: str, vocab: str = None, dtype: str = "float32", config: str = None,
           lgp: str = None, name: str = None, notes: list = None) -> dict:
    """Writes the model directory. Returns the manifest. Remarks about the checkpoint are appended to notes."""
    if dtype not in DTYPES:
        raise ExportError("unknown dtype %r (float32, float16, bfloat16)" % dtype)
    if vocab is None:
        raise ExportError("the checkpoint holds no tokenizer: pass --vocab (a bpe_simple_vocab file or a folder "
                          "with vocab.json and merges.txt)")
    cfg, meta, unet, vae, text = load_models(checkpoint, config, notes)
    os.makedirs(out, exist_ok=True)
    tok = copy_tokenizer(vocab, out, cfg)
    tdt = DTYPES[dtype]
    scripted = {
        "text_encoder": torch.jit.script(text.to(tdt)),
        "unet": torch.jit.script(unet.to(tdt)),
        "vae_encoder": torch.jit.script(sdmodels.VAEEncoderExport(vae.to(tdt))),
        "vae_decoder": torch.jit.script(sdmodels.VAEDecoderExport(vae)),
    }
    for key, m in scripted.items():
        torch.jit.save(m, os.path.join(out, MODULES[key]))
    down = 2 ** (len(cfg["vae"]["ch_mult"]) - 1)
    size = int(cfg.get("image_size", 512))
    taps = unet.tap_info()
    for t in taps:
        t["resolution"] = size // down // t["downsample"]
    manifest = {
        "format": "sketchguide-model", "format_version": FORMAT_VERSION,
        "name": name or cfg.get("name") or os.path.basename(os.path.normpath(out)),
        "image_size": size, "latent_channels": cfg["vae"]["embed_dim"], "downscale": down, "latent_size": size // down,
        "scaling_factor": cfg["vae"]["scaling_factor"],
        "schedule": cfg["schedule"], "prediction_type": cfg["schedule"].get("prediction_type", "epsilon"),
        "defaults": dict(DEFAULTS, **cfg.get("defaults", {})),
        "context_dim": cfg["text"]["width"], "context_length": cfg["text"]["max_positions"],
        "modules": dict(MODULES),
        "unet_outputs": ["eps"] + [t["name"] for t in taps],
        "taps": taps, "tap_channels": sum(t["channels"] for t in taps),
        "tokenizer": tok,
        "lgp": lgp_section(lgp) if lgp else None,
        "dtype": dtype, "torch_version": torch.__version__,
        "source": {"checkpoint": os.path.basename(checkpoint), "train_steps": meta.get("train_steps")},
        "config": cfg,
    }
    if lgp:
        shutil.copyfile(lgp, os.path.join(out, "lgp.pt"))
    elif os.path.exists(os.path.join(out, "model.json")):
        with open(os.path.join(out, "model.json")) as f:  # keep an LGP trained for this directory earlier
            old = json.load(f)
        if old.get("lgp") and os.path.exists(os.path.join(out, old["lgp"]["file"])):
            manifest["lgp"] = old["lgp"]
    write_manifest(out, manifest)
    return manifest


def write_manifest(out: str, manifest: dict) -> None:
    with open(os.path.join(out, "model.json.tmp"), "w") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")
    os.replace(os.path.join(out, "model.json.tmp"), os.path.join(out, "model.json"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", help="original single-file checkpoint (.safetensors, .ckpt)")
    ap.add_argument("--out", required=True, help="model directory to write")
    ap.add_argument("--vocab", help="CLIP tokenizer: bpe_simple_vocab_16e6.txt[.gz], merges.txt, or a folder with vocab.json + merges.txt")
    ap.add_argument("--dtype", default="float32", choices=sorted(DTYPES), help="weights' dtype (float16/bfloat16 for GPUs)")
    ap.add_argument("--config", help="model configuration JSON, or 'sd15' (default: from the checkpoint)")
    ap.add_argument("--lgp", help="a trained LGP (lgp.pt from tools/train_lgp.py) to include")
    ap.add_argument("--name", help="model name in model.json")
    a = ap.parse_args()
    torch.set_num_threads(os.cpu_count())
    notes = []
    try:
        m = export(a.checkpoint, a.out, a.vocab, a.dtype, a.config, a.lgp, a.name, notes)
    except ExportError as e:
        for n in notes:
            print("export: note: %s" % n, file=sys.stderr)
        print("export: %s" % e, file=sys.stderr)
        return 2
    for n in notes:
        print("export: note: %s" % n, file=sys.stderr)
    print("exported %s to %s: %dx%d images, %d taps (%d channels), %s" % (
        m["name"], a.out, m["image_size"], m["image_size"], len(m["taps"]), m["tap_channels"], m["dtype"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
