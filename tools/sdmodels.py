"""Stable Diffusion 1.x model definitions (U-Net, AutoencoderKL, CLIP text tower) with LDM key names, config-driven and TorchScript-able."""
import contextlib
import math
from typing import List

import torch
import torch.nn as nn
import torch.nn.functional as F

# ---------------------------------------------------------------------------
# Configurations. SD15 is the original v1-inference.yaml; the bundled model uses
# the same classes at a small size (see tools/train_model.py).

SD15 = {
    "name": "sd15",
    "image_size": 512,
    "unet": {
        "in_channels": 4, "out_channels": 4, "model_channels": 320,
        "channel_mult": [1, 2, 4, 4], "num_res_blocks": 2,
        "attention_resolutions": [1, 2, 4], "num_heads": 8,
        "transformer_depth": 1, "context_dim": 768,
        "taps": {"input": [2, 4, 8], "middle": [0, 1, 2], "output": [2, 4, 8]},
    },
    "vae": {
        "ch": 128, "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2,
        "z_channels": 4, "embed_dim": 4, "in_channels": 3, "out_ch": 3,
        "scaling_factor": 0.18215,
    },
    "text": {
        "vocab_size": 49408, "width": 768, "layers": 12, "heads": 12,
        "mlp": 3072, "max_positions": 77,
    },
    "schedule": {
        "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
        "beta_schedule": "scaled_linear", "prediction_type": "epsilon",
        "timestep_spacing": "leading", "steps_offset": 1, "set_alpha_to_one": False,
    },
}

PREFIX_UNET = "model.diffusion_model."
PREFIX_VAE = "first_stage_model."
PREFIX_TEXT = "cond_stage_model.transformer.text_model."


@contextlib.contextmanager
def no_init():
    """Skip the default weight initialisation while building (the weights are loaded or counted next)."""
    names = ["kaiming_uniform_", "uniform_", "normal_", "zeros_", "ones_", "constant_", "xavier_uniform_"]
    saved = {n: getattr(nn.init, n) for n in names}
    try:
        for n in names:
            setattr(nn.init, n, lambda t, *a, **k: t)
        yield
    finally:
        for n, f in saved.items():
            setattr(nn.init, n, f)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal timestep embedding as in LDM: [cos(t f), sin(t f)], f_i = exp(-ln(max_period) i / half)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.to(torch.float32)[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2 == 1:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb



if hasattr(F, "scaled_dot_product_attention"):
    def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """softmax(q k^T / sqrt(d)) v over [..., n, d] tensors: PyTorch 2's fused kernels (flash or memory-efficient
        attention on GPUs), chosen when the exporting torch has them."""
        return F.scaled_dot_product_attention(q, k, v)
else:
    def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """softmax(q k^T / sqrt(d)) v over [..., n, d] tensors, the softmax in float32 (torch 1.x: no fused kernel;
        the modules exported here then load in libtorch 1.13)."""
        w = torch.matmul(q, k.transpose(-1, -2)) * (q.shape[-1] ** -0.5)
        return torch.matmul(w.float().softmax(dim=-1).to(v.dtype), v)

class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 whatever the input dtype (LDM's normalization())."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x.float(), self.num_groups, self.weight.float(), self.bias.float(), self.eps).to(x.dtype)


# ---------------------------------------------------------------------------
# U-Net (ldm.modules.diffusionmodules.openaimodel.UNetModel, SD 1.x settings)


class ResBlock(nn.Module):
    def __init__(self, channels: int, emb_channels: int, out_channels: int):
        super().__init__()
        self.in_layers = nn.Sequential(GroupNorm32(32, channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        self.out_layers = nn.Sequential(GroupNorm32(32, out_channels), nn.SiLU(), nn.Dropout(0.0),
                                        nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip_connection = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)
        h = h + self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        h = self.out_layers(h)
        return self.skip_connection(x) + h


class CrossAttention(nn.Module):
    def __init__(self, query_dim: int, context_dim: int, heads: int, dim_head: int):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim), nn.Dropout(0.0))

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        h = self.heads
        q = self.to_q(x)
        k = self.to_k(context)
        v = self.to_v(context)
        d = q.shape[-1] // h
        q = q.reshape(b, n, h, d).transpose(1, 2)
        k = k.reshape(b, k.shape[1], h, d).transpose(1, 2)
        v = v.reshape(b, v.shape[1], h, d).transpose(1, 2)
        o = attention(q, k, v).transpose(1, 2).reshape(b, n, h * d)
        return self.to_out(o)


class GEGLU(nn.Module):
    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, dim * 4), nn.Dropout(0.0), nn.Linear(dim * 4, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: int):
        super().__init__()
        self.attn1 = CrossAttention(dim, dim, heads, dim_head)
        self.ff = FeedForward(dim)
        self.attn2 = CrossAttention(dim, context_dim, heads, dim_head)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        y = self.norm1(x)
        x = self.attn1(y, y) + x
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer(nn.Module):
    def __init__(self, channels: int, heads: int, dim_head: int, depth: int, context_dim: int):
        super().__init__()
        inner = heads * dim_head
        self.norm = nn.GroupNorm(32, channels, eps=1e-6)
        self.proj_in = nn.Conv2d(channels, inner, 1)
        self.transformer_blocks = nn.ModuleList(
            [BasicTransformerBlock(inner, heads, dim_head, context_dim) for _ in range(depth)])
        self.proj_out = nn.Conv2d(inner, channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, c, hh, ww = x.shape
        h = self.proj_in(self.norm(x))
        inner = h.shape[1]
        h = h.reshape(b, inner, hh * ww).transpose(1, 2)
        for blk in self.transformer_blocks:
            h = blk(h, context)
        h = h.transpose(1, 2).reshape(b, inner, hh, ww)
        return self.proj_out(h) + x


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class InputConv(nn.Conv2d):
    """input_blocks.0.0: a plain 3x3 conv whose forward takes (x, emb, context) like every block."""

    def __init__(self, cin: int, cout: int):
        super().__init__(cin, cout, 3, padding=1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.weight, self.bias)


class TimestepEmbedSequential(nn.ModuleList):
    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = layer(x, emb, context)
        return x


class UNetModel(nn.Module):
    """LDM U-Net. forward(z, t, context) returns [eps, tap_0, ..., tap_{n-1}] in the order of tap_names()."""

    def __init__(self, cfg: dict):
        super().__init__()
        mc = cfg["model_channels"]
        mult = cfg["channel_mult"]
        nrb = cfg["num_res_blocks"]
        attn = cfg["attention_resolutions"]
        heads = cfg["num_heads"]
        depth = cfg.get("transformer_depth", 1)
        ctx = cfg["context_dim"]
        ted = mc * 4
        self.model_channels = mc
        self.time_embed = nn.Sequential(nn.Linear(mc, ted), nn.SiLU(), nn.Linear(ted, ted))

        def st(ch: int) -> SpatialTransformer:
            return SpatialTransformer(ch, heads, ch // heads, depth, ctx)

        blocks = [TimestepEmbedSequential([InputConv(cfg["in_channels"], mc)])]
        chans = [mc]
        ch, ds = mc, 1
        # (channels, downsample factor) at each block's output, for the manifest's taps
        self._in_shape = [(mc, 1)]
        for level, m in enumerate(mult):
            for _ in range(nrb):
                layers: List[nn.Module] = [ResBlock(ch, ted, m * mc)]
                ch = m * mc
                if ds in attn:
                    layers.append(st(ch))
                blocks.append(TimestepEmbedSequential(layers))
                chans.append(ch)
                self._in_shape.append((ch, ds))
            if level != len(mult) - 1:
                blocks.append(TimestepEmbedSequential([Downsample(ch)]))
                chans.append(ch)
                ds *= 2
                self._in_shape.append((ch, ds))
        self.input_blocks = nn.ModuleList(blocks)
        self.middle_block = TimestepEmbedSequential([ResBlock(ch, ted, ch), st(ch), ResBlock(ch, ted, ch)])
        self._mid_shape = [(ch, ds)] * 3
        out_blocks = []
        self._out_shape = []
        for level, m in list(enumerate(mult))[::-1]:
            for i in range(nrb + 1):
                ich = chans.pop()
                layers = [ResBlock(ch + ich, ted, mc * m)]
                ch = mc * m
                if ds in attn:
                    layers.append(st(ch))
                if level and i == nrb:
                    layers.append(Upsample(ch))
                    ds //= 2
                out_blocks.append(TimestepEmbedSequential(layers))
                self._out_shape.append((ch, ds))
        self.output_blocks = nn.ModuleList(out_blocks)
        self.out = nn.Sequential(GroupNorm32(32, ch), nn.SiLU(), nn.Conv2d(mc, cfg["out_channels"], 3, padding=1))
        taps = cfg.get("taps", {"input": [], "middle": [], "output": []})
        self.tap_input: List[int] = list(taps.get("input", []))
        self.tap_middle: List[int] = list(taps.get("middle", []))
        self.tap_output: List[int] = list(taps.get("output", []))

    def tap_info(self) -> List[dict]:
        """Taps in output order: name, channels, downsample factor relative to the latent."""
        info = []
        for i in self.tap_input:
            info.append({"name": "input_blocks.%d" % i, "channels": self._in_shape[i][0], "downsample": self._in_shape[i][1]})
        for i in self.tap_middle:
            info.append({"name": "middle_block.%d" % i, "channels": self._mid_shape[i][0], "downsample": self._mid_shape[i][1]})
        for i in self.tap_output:
            info.append({"name": "output_blocks.%d" % i, "channels": self._out_shape[i][0], "downsample": self._out_shape[i][1]})
        return info

    def forward(self, z: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> List[torch.Tensor]:
        if t.dim() == 0:
            t = t.expand(z.shape[0])
        dt = self.time_embed[0].weight.dtype  # inputs may be float32 whatever the weights' dtype
        z = z.to(dt)
        emb = self.time_embed(timestep_embedding(t, self.model_channels).to(dt))
        context = context.to(dt)
        taps: List[torch.Tensor] = []
        hs: List[torch.Tensor] = []
        h = z
        for i, blk in enumerate(self.input_blocks):
            h = blk(h, emb, context)
            hs.append(h)
            if i in self.tap_input:
                taps.append(h)
        # middle block, one layer at a time so that its sub-layers can be tapped
        for i, layer in enumerate(self.middle_block):
            h = layer(h, emb, context)
            if i in self.tap_middle:
                taps.append(h)
        for i, blk in enumerate(self.output_blocks):
            h = torch.cat([h, hs.pop()], dim=1)
            h = blk(h, emb, context)
            if i in self.tap_output:
                taps.append(h)
        return [self.out(h)] + taps


# ---------------------------------------------------------------------------
# AutoencoderKL (ldm.modules.diffusionmodules.model Encoder/Decoder), no attention
# inside the levels (as in SD 1.x), single-head attention in the middle.


def vae_norm(c: int, groups: int = 32) -> nn.GroupNorm:
    return nn.GroupNorm(groups, c, eps=1e-6)


class ResnetBlock(nn.Module):
    def __init__(self, cin: int, cout: int, groups: int = 32):
        super().__init__()
        self.norm1 = vae_norm(cin, groups)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = vae_norm(cout, groups)
        self.dropout = nn.Dropout(0.0)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.nin_shortcut = nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.nin_shortcut(x) + h


class AttnBlock(nn.Module):
    def __init__(self, c: int, groups: int = 32):
        super().__init__()
        self.norm = vae_norm(c, groups)
        self.q = nn.Conv2d(c, c, 1)
        self.k = nn.Conv2d(c, c, 1)
        self.v = nn.Conv2d(c, c, 1)
        self.proj_out = nn.Conv2d(c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        b, c, hh, ww = h.shape
        q = self.q(h).reshape(b, 1, c, hh * ww).transpose(2, 3)
        k = self.k(h).reshape(b, 1, c, hh * ww).transpose(2, 3)
        v = self.v(h).reshape(b, 1, c, hh * ww).transpose(2, 3)
        o = attention(q, k, v).transpose(2, 3).reshape(b, c, hh, ww)
        return x + self.proj_out(o)


class EncDownsample(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class DecUpsample(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class EncLevel(nn.Module):
    """One encoder level: `block` (and an empty `attn`, as in the key layout), then `downsample` (none on the last)."""

    def __init__(self, blocks: List[nn.Module], downsample: nn.Module):
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.attn = nn.ModuleList()
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for b in self.block:
            x = b(x)
        return self.downsample(x)


class DecLevel(nn.Module):
    """One decoder level: `block`, then `upsample` (none on level 0)."""

    def __init__(self, blocks: List[nn.Module], upsample: nn.Module):
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.attn = nn.ModuleList()
        self.upsample = upsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for b in self.block:
            x = b(x)
        return self.upsample(x)


class Mid(nn.Module):
    def __init__(self, c: int, groups: int = 32):
        super().__init__()
        self.block_1 = ResnetBlock(c, c, groups)
        self.attn_1 = AttnBlock(c, groups)
        self.block_2 = ResnetBlock(c, c, groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class Encoder(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        ch, mult, nrb = cfg["ch"], cfg["ch_mult"], cfg["num_res_blocks"]
        g = cfg.get("norm_groups", 32)
        self.conv_in = nn.Conv2d(cfg["in_channels"], ch, 3, padding=1)
        in_mult = [1] + list(mult)
        levels = []
        cin = ch
        for i, m in enumerate(mult):
            cin = ch * in_mult[i]
            cout = ch * m
            blocks: List[nn.Module] = []
            for _ in range(nrb):
                blocks.append(ResnetBlock(cin, cout, g))
                cin = cout
            last = i == len(mult) - 1
            levels.append(EncLevel(blocks, nn.Identity() if last else EncDownsample(cin)))
        self.down = nn.ModuleList(levels)
        self.mid = Mid(cin, g)
        self.norm_out = vae_norm(cin, g)
        self.conv_out = nn.Conv2d(cin, 2 * cfg["z_channels"], 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for lvl in self.down:
            h = lvl(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


def _swap_up_keys(sd: dict, prefix: str, n: int) -> None:
    """Renames prefix + 'up.{i}.' to 'up.{n-1-i}.' in place (the map is its own inverse)."""
    head = prefix + "up."
    keys = [k for k in sd if k.startswith(head)]
    moved = {}
    for k in keys:
        rest = k[len(head):]
        i, tail = rest.split(".", 1)
        moved["%s%d.%s" % (head, n - 1 - int(i), tail)] = sd.pop(k)
    sd.update(moved)


class Decoder(nn.Module):
    """LDM decoder. `up` is held in processing order (lowest resolution first) so that TorchScript can iterate it;
    state-dict hooks keep LDM's key layout, where up.{i} is level i (up.0 the full resolution)."""

    def __init__(self, cfg: dict):
        super().__init__()
        ch, mult, nrb = cfg["ch"], cfg["ch_mult"], cfg["num_res_blocks"]
        g = cfg.get("norm_groups", 32)
        cin = ch * mult[-1]
        self.conv_in = nn.Conv2d(cfg["z_channels"], cin, 3, padding=1)
        self.mid = Mid(cin, g)
        ups: List[nn.Module] = []
        for i in reversed(range(len(mult))):
            cout = ch * mult[i]
            blocks: List[nn.Module] = []
            for _ in range(nrb + 1):
                blocks.append(ResnetBlock(cin, cout, g))
                cin = cout
            ups.append(DecLevel(blocks, nn.Identity() if i == 0 else DecUpsample(cin)))
        self.up = nn.ModuleList(ups)
        self.norm_out = vae_norm(cin, g)
        self.conv_out = nn.Conv2d(cin, cfg["out_ch"], 3, padding=1)
        n = len(mult)
        self._register_state_dict_hook(lambda mod, sd, prefix, meta: _swap_up_keys(sd, prefix, n))
        self._register_load_state_dict_pre_hook(lambda sd, prefix, *args: _swap_up_keys(sd, prefix, n))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for lvl in self.up:
            h = lvl(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class AutoencoderKL(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        zc, ed = cfg["z_channels"], cfg["embed_dim"]
        self.quant_conv = nn.Conv2d(2 * zc, 2 * ed, 1)
        self.post_quant_conv = nn.Conv2d(ed, zc, 1)
        self.scaling_factor = float(cfg.get("scaling_factor", 1.0))

    def encode_moments(self, x: torch.Tensor):
        """Image in [-1, 1] -> (mean, logvar) of the unscaled latent; logvar clamped to [-30, 20]."""
        m = self.quant_conv(self.encoder(x))
        mean, logvar = m.chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Unscaled latent -> image in (about) [-1, 1]."""
        return self.decoder(self.post_quant_conv(z))


class VAEEncoderExport(nn.Module):
    """Exported VAE encoder: image in [-1, 1] -> (mean, logvar), both unscaled (multiply mean by scaling_factor)."""

    def __init__(self, vae: AutoencoderKL):
        super().__init__()
        self.encoder = vae.encoder
        self.quant_conv = vae.quant_conv

    def forward(self, x: torch.Tensor):
        m = self.quant_conv(self.encoder(x.to(self.quant_conv.weight.dtype)))
        mean, logvar = m.chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)


class VAEDecoderExport(nn.Module):
    """Exported VAE decoder: unscaled latent (divide by scaling_factor first) -> image in about [-1, 1]."""

    def __init__(self, vae: AutoencoderKL):
        super().__init__()
        self.post_quant_conv = vae.post_quant_conv
        self.decoder = vae.decoder

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(z.to(self.post_quant_conv.weight.dtype)))


# ---------------------------------------------------------------------------
# CLIP text transformer (the text tower of CLIP ViT-L/14 in SD 1.x)


class CLIPAttention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.scale = (width // heads) ** -0.5
        self.q_proj = nn.Linear(width, width)
        self.k_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        h = self.heads
        d = c // h
        q = (self.q_proj(x) * self.scale).reshape(b, n, h, d).transpose(1, 2)
        k = self.k_proj(x).reshape(b, n, h, d).transpose(1, 2)
        v = self.v_proj(x).reshape(b, n, h, d).transpose(1, 2)
        w = (torch.matmul(q, k.transpose(-1, -2)) + mask).float().softmax(dim=-1).to(v.dtype)
        return self.out_proj(torch.matmul(w, v).transpose(1, 2).reshape(b, n, c))


class CLIPMLP(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc1(x)
        return self.fc2(x * torch.sigmoid(1.702 * x))


class CLIPLayer(nn.Module):
    def __init__(self, width: int, heads: int, hidden: int):
        super().__init__()
        self.self_attn = CLIPAttention(width, heads)
        self.layer_norm1 = nn.LayerNorm(width)
        self.mlp = CLIPMLP(width, hidden)
        self.layer_norm2 = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x), mask)
        return x + self.mlp(self.layer_norm2(x))


class CLIPEmbeddings(nn.Module):
    def __init__(self, vocab: int, width: int, positions: int):
        super().__init__()
        self.token_embedding = nn.Embedding(vocab, width)
        self.position_embedding = nn.Embedding(positions, width)


class CLIPEncoder(nn.Module):
    def __init__(self, width: int, heads: int, hidden: int, layers: int):
        super().__init__()
        self.layers = nn.ModuleList([CLIPLayer(width, heads, hidden) for _ in range(layers)])


class CLIPTextModel(nn.Module):
    """Token ids [B, 77] (int64) -> last hidden state [B, 77, width]."""

    def __init__(self, cfg: dict):
        super().__init__()
        w = cfg["width"]
        self.embeddings = CLIPEmbeddings(cfg["vocab_size"], w, cfg["max_positions"])
        self.encoder = CLIPEncoder(w, cfg["heads"], cfg["mlp"], cfg["layers"])
        self.final_layer_norm = nn.LayerNorm(w)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        n = ids.shape[1]
        pos = torch.arange(n, device=ids.device)
        x = self.embeddings.token_embedding(ids) + self.embeddings.position_embedding(pos)[None]
        mask = torch.full((n, n), float("-inf"), device=ids.device, dtype=x.dtype).triu(1)
        for layer in self.encoder.layers:
            x = layer(x, mask)
        return self.final_layer_norm(x)


# ---------------------------------------------------------------------------
# Checkpoint keys


def build(cfg: dict):
    """Returns (unet, vae, text) built from a full config (with the 'unet', 'vae', 'text' sections)."""
    return UNetModel(cfg["unet"]), AutoencoderKL(cfg["vae"]), CLIPTextModel(cfg["text"])


def to_checkpoint(unet: nn.Module, vae: nn.Module, text: nn.Module) -> dict:
    """State dicts under the original single-file checkpoint's key prefixes."""
    sd = {}
    for prefix, m in ((PREFIX_UNET, unet), (PREFIX_VAE, vae), (PREFIX_TEXT, text)):
        for k, v in m.state_dict().items():
            sd[prefix + k] = v
    return sd


def split_checkpoint(sd: dict):
    """Checkpoint -> (unet, vae, text) state dicts, ignoring EMA copies, schedule buffers and position_ids."""
    parts = ({}, {}, {})
    for k, v in sd.items():
        for i, prefix in enumerate((PREFIX_UNET, PREFIX_VAE, PREFIX_TEXT)):
            if k.startswith(prefix):
                sub = k[len(prefix):]
                if sub.endswith("position_ids") or sub.startswith("loss."):
                    break
                parts[i][sub] = v
                break
    return parts


def count_parameters(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())
