"""random_model.legible(): its VAE autoencodes (E(D(z)) follows z, images are blobs on black) and its U-Net's tap
input_blocks.2 is the latent pixel's neighbourhood, so that a trained LGP has something to steer."""
import pytest
import torch

import random_model
import sdmodels


def legible_model():
    cfg = random_model.reduced_sd15()
    cfg["image_size"] = 128
    unet, vae, _ = random_model.build_random(cfg, 0, legible_weights=True)
    return cfg, unet.eval(), vae.eval()


def test_vae_decodes_blobs_and_encodes_back():
    _, _, vae = legible_model()
    z = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        x = vae.decoder(vae.post_quant_conv(z))
        mean, logvar = vae.encode_moments(x)
    assert x.shape == (2, 3, 128, 128)
    assert x.abs().max() <= 0.92  # clamped to [-0.9, 0.9], give or take the SiLUs' 0.3 / 20
    dark = (x < -0.85).float().mean().item()
    assert 0.6 < dark < 0.95, dark  # mostly background: a channel is bright above 1 standard deviation
    for c in range(3):
        r = torch.corrcoef(torch.stack([z[:, c].flatten(), mean[:, c].flatten()]))[0, 1].item()
        assert r > 0.7, (c, r)
    assert (logvar <= -29).all()
    # the random VAE, for contrast, does not encode back
    _, rvae, _ = random_model.build_random(random_model.reduced_sd15(), 0)
    with torch.no_grad():
        rmean, _ = rvae.encode_moments(rvae.decoder(rvae.post_quant_conv(z)))
    r = torch.corrcoef(torch.stack([z[:, 0].flatten(), rmean[:, 0].flatten()]))[0, 1].item()
    assert abs(r) < 0.5, r


def test_first_tap_is_the_latent_neighbourhood():
    cfg, unet, _ = legible_model()
    z = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(2))
    ctx = torch.randn(1, 77, cfg["unet"]["context_dim"])
    with torch.no_grad():
        taps = unet(z, torch.tensor([500]), ctx)[1:]
    first = taps[0]  # input_blocks.2
    assert unet.tap_info()[0]["name"] == "input_blocks.2" and first.shape == (1, 32, 16, 16)
    padded = torch.nn.functional.pad(z, (1, 1, 1, 1))
    for j, (dy, dx) in enumerate(random_model._OFFSETS):
        want = padded[:, :, 1 + dy:17 + dy, 1 + dx:17 + dx]
        assert torch.allclose(first[:, 4 * j:4 * j + 4], want, atol=1e-6), (j, dy, dx)


def test_other_widths_are_refused():
    cfg = random_model.reduced_sd15()
    cfg["vae"]["ch"] = 64
    unet, vae, _ = sdmodels.build(cfg)
    with pytest.raises(ValueError, match="VAE of 32 channels"):
        random_model.legible(unet, vae)
