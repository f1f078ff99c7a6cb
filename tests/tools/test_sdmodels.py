"""Tests of tools/sdmodels.py: SD 1.5 parameter counts, key names and tap layout (no weights needed)."""
import torch

import sdmodels


def sd15():
    with sdmodels.no_init():
        return sdmodels.build(sdmodels.SD15)


def test_sd15_parameter_counts():
    unet, vae, text = sd15()
    assert sdmodels.count_parameters(unet) == 859_520_964
    assert sdmodels.count_parameters(vae) == 83_653_863
    assert sdmodels.count_parameters(text) == 123_060_480


def test_sd15_key_names():
    unet, vae, text = sd15()
    sd = sdmodels.to_checkpoint(unet, vae, text)
    unet_keys = [k for k in sd if k.startswith(sdmodels.PREFIX_UNET)]
    assert len(unet_keys) == 686
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    # a sample of the original checkpoint's keys and shapes, across every kind of block
    expect = {
        "model.diffusion_model.time_embed.0.weight": (1280, 320),
        "model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3),
        "model.diffusion_model.input_blocks.1.0.in_layers.0.weight": (320,),
        "model.diffusion_model.input_blocks.1.0.emb_layers.1.weight": (320, 1280),
        "model.diffusion_model.input_blocks.1.0.out_layers.3.weight": (320, 320, 3, 3),
        "model.diffusion_model.input_blocks.1.1.proj_in.weight": (320, 320, 1, 1),
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 768),
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.ff.net.0.proj.weight": (2560, 320),
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.ff.net.2.weight": (320, 1280),
        "model.diffusion_model.input_blocks.3.0.op.weight": (320, 320, 3, 3),
        "model.diffusion_model.input_blocks.4.0.skip_connection.weight": (640, 320, 1, 1),
        "model.diffusion_model.middle_block.1.norm.weight": (1280,),
        "model.diffusion_model.output_blocks.2.1.conv.weight": (1280, 1280, 3, 3),
        "model.diffusion_model.output_blocks.5.2.conv.weight": (1280, 1280, 3, 3),
        "model.diffusion_model.output_blocks.11.0.skip_connection.weight": (320, 640, 1, 1),
        "model.diffusion_model.out.2.weight": (4, 320, 3, 3),
        "first_stage_model.encoder.down.0.block.0.conv1.weight": (128, 128, 3, 3),
        "first_stage_model.encoder.down.0.downsample.conv.weight": (128, 128, 3, 3),
        "first_stage_model.encoder.down.1.block.0.nin_shortcut.weight": (256, 128, 1, 1),
        "first_stage_model.encoder.mid.attn_1.q.weight": (512, 512, 1, 1),
        "first_stage_model.encoder.conv_out.weight": (8, 512, 3, 3),
        "first_stage_model.decoder.up.3.block.0.conv1.weight": (512, 512, 3, 3),
        "first_stage_model.decoder.up.3.upsample.conv.weight": (512, 512, 3, 3),
        "first_stage_model.decoder.up.0.block.0.conv1.weight": (128, 256, 3, 3),
        "first_stage_model.decoder.up.0.block.2.conv2.weight": (128, 128, 3, 3),
        "first_stage_model.quant_conv.weight": (8, 8, 1, 1),
        "first_stage_model.post_quant_conv.weight": (4, 4, 1, 1),
        "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": (49408, 768),
        "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight": (77, 768),
        "cond_stage_model.transformer.text_model.encoder.layers.11.mlp.fc1.weight": (3072, 768),
        "cond_stage_model.transformer.text_model.final_layer_norm.weight": (768,),
    }
    for k, shape in expect.items():
        assert shapes.get(k) == shape, k
    assert not any("upsample" in k for k in shapes if "decoder.up.0." in k)
    assert not any("downsample" in k for k in shapes if "encoder.down.3." in k)


def test_sd15_taps_match_table():
    unet, _, _ = sd15()
    info = unet.tap_info()
    got = [(t["name"], t["channels"], 64 // t["downsample"]) for t in info]
    assert got == [("input_blocks.2", 320, 64), ("input_blocks.4", 640, 32), ("input_blocks.8", 1280, 16),
                   ("middle_block.0", 1280, 8), ("middle_block.1", 1280, 8), ("middle_block.2", 1280, 8),
                   ("output_blocks.2", 1280, 16), ("output_blocks.4", 1280, 16), ("output_blocks.8", 640, 64)]
    assert sum(t["channels"] for t in info) == 9280


def test_split_checkpoint_ignores_extras():
    sd = {"model.diffusion_model.a": 1, "first_stage_model.b": 2, "cond_stage_model.transformer.text_model.c": 3,
          "cond_stage_model.transformer.text_model.embeddings.position_ids": 4, "model_ema.x": 5, "betas": 6,
          "first_stage_model.loss.logvar": 7}
    u, v, t = sdmodels.split_checkpoint(sd)
    assert u == {"a": 1} and v == {"b": 2} and t == {"c": 3}


def test_timestep_embedding_cos_first():
    e = sdmodels.timestep_embedding(torch.tensor([0.0, 10.0]), 8)
    assert torch.allclose(e[0], torch.tensor([1.0] * 4 + [0.0] * 4))
    assert abs(e[1, 0].item() - torch.cos(torch.tensor(10.0)).item()) < 1e-6
    assert abs(e[1, 4].item() - torch.sin(torch.tensor(10.0)).item()) < 1e-6
