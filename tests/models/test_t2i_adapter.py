"""T2IAdapter on a tiny offline Stable Diffusion pipeline (epsilon and v-prediction).

Every numerical check compares with an independent path: the stock ``StableDiffusionPipeline`` loaded from the same
directory (its ``encode_prompt``, its sampling loop, ``DDIMScheduler.step``), raw UNet calls, and the schedule's
``alphas_cumprod`` in float64 — never the adapter's own intermediates.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

import pytest
import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline

from fastunlearn.errors import UserInputError
from fastunlearn.models import load_model
from fastunlearn.models.t2i import SCOPES, T2IAdapter, from_pipeline
from fastunlearn.models.tiny_sd import build_tiny_sd, save_tiny_sd

PROMPTS = ["a cat", "a photo of a dog"]


@pytest.fixture(scope="module")
def sd_dirs(tmp_path_factory) -> dict[str, Path]:
    """One saved tiny pipeline per prediction type (read-only: tests that save write elsewhere)."""
    root = tmp_path_factory.mktemp("tiny_sd")
    return {p: save_tiny_sd(root / p, prediction_type=p) for p in ("epsilon", "v_prediction")}


def stock_pipe(directory: Path, **scheduler_overrides) -> StableDiffusionPipeline:
    """The stock pipeline, loaded on its own from ``directory`` (no fastunlearn code involved)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe = StableDiffusionPipeline.from_pretrained(directory, safety_checker=None)
    if scheduler_overrides:
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, **scheduler_overrides)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def encoded(pipe: StableDiffusionPipeline, prompt: str) -> torch.Tensor:
    with torch.no_grad():
        return pipe.encode_prompt(prompt, torch.device("cpu"), 1, False)[0]


def alphas(adapter_or_pipe) -> torch.Tensor:
    return adapter_or_pipe.scheduler.alphas_cumprod.double()


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def latents(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 4, 8, 8, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------- loading and saving
def test_load_save_reload_with_stock_pipeline_and_hard_links(sd_dirs, tmp_path):
    src = sd_dirs["epsilon"]
    unet_file = src / "unet" / "diffusion_pytorch_model.safetensors"
    src_unet_md5 = md5(unet_file)
    adapter = load_model(src)
    assert isinstance(adapter, T2IAdapter) and adapter.family == "t2i"
    assert isinstance(load_model(stock_pipe(src)), T2IAdapter)
    assert adapter.image_shape == (3, 16, 16) and adapter.latent_shape == (4, 8, 8)
    assert adapter.null_label == 0 and adapter.prompts == [""] and adapter.num_classes is None
    assert adapter.prediction_type == "epsilon" and adapter.max_prompt_tokens == 32

    edited = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"
    with torch.no_grad():  # a weight edit in the scope a method would train
        dict(adapter.unet.named_parameters())[edited].add_(0.25)
    out = adapter.save_pretrained(tmp_path / "out")
    index = json.loads((out / "model_index.json").read_text())
    for comp in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert comp in index and (out / comp).is_dir() and any((out / comp).iterdir()), comp
    assert json.loads((out / "fastunlearn.json").read_text())["adapter"] == "t2i"
    # unchanged components share the source's bytes on disk; the edited UNet does not, and the source is intact
    for f in ("vae/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"):
        assert os.path.samefile(src / f, out / f) and os.stat(out / f).st_nlink >= 2, f
    assert not os.path.samefile(unet_file, out / "unet" / "diffusion_pytorch_model.safetensors")
    assert md5(unet_file) == src_unet_md5

    pipe = stock_pipe(out)
    for name, value in adapter.unet.state_dict().items():
        assert torch.equal(pipe.unet.state_dict()[name], value), name
    original = stock_pipe(src)
    assert not torch.equal(pipe.unet.state_dict()[edited], original.unet.state_dict()[edited])
    for name, value in original.text_encoder.state_dict().items():
        assert torch.equal(pipe.text_encoder.state_dict()[name], value), name
    images = pipe("a cat", num_inference_steps=2, output_type="pt").images
    assert images.shape == (1, 3, 16, 16) and torch.isfinite(images).all()
    assert isinstance(load_model(out), T2IAdapter)

    # a later save of a trained text encoder into the same directory must not write through the links
    te_md5 = md5(src / "text_encoder" / "model.safetensors")
    adapter.set_scope("text-encoder")
    name, param = list(adapter.text_encoder.named_parameters())[-1]
    with torch.no_grad():
        param.add_(1.0)
    adapter.save_pretrained(out)
    assert md5(src / "text_encoder" / "model.safetensors") == te_md5
    assert not os.path.samefile(src / "text_encoder" / "model.safetensors", out / "text_encoder" / "model.safetensors")
    assert torch.equal(dict(stock_pipe(out).text_encoder.named_parameters())[name], param)


# ---------------------------------------------------------------------- prompts
def test_prompt_embeddings_equal_the_pipelines_encode_prompt(sd_dirs):
    adapter = load_model(sd_dirs["epsilon"])
    pipe = stock_pipe(sd_dirs["epsilon"])
    ids = adapter.prompt_ids(PROMPTS + [""])
    assert ids.tolist() == [1, 2, 0]
    got = adapter.embeddings(ids)
    for row, prompt in enumerate(PROMPTS + [""]):
        torch.testing.assert_close(got[row:row + 1], encoded(pipe, prompt), rtol=0, atol=1e-6)
    assert not torch.allclose(got[0], got[1], atol=1e-3)

    # an encoder whose config asks for the attention mask gets it, as encode_prompt passes it
    masked = build_tiny_sd()
    masked.text_encoder.config.use_attention_mask = True
    masked_adapter = from_pipeline(masked)
    ids = masked_adapter.prompt_ids(PROMPTS)
    for row, prompt in enumerate(PROMPTS):
        torch.testing.assert_close(masked_adapter.embeddings(ids[row:row + 1]), encoded(masked, prompt),
                                   rtol=0, atol=1e-6)
    unmasked = build_tiny_sd()  # same seed, same weights: the mask must make a difference for this to test it
    assert not torch.allclose(encoded(unmasked, PROMPTS[0]), encoded(masked, PROMPTS[0]), atol=1e-4)


def test_prompt_table_encodes_each_distinct_prompt_once(sd_dirs):
    adapter = load_model(sd_dirs["epsilon"])
    rows: list[int] = []

    def count(module, args, kwargs):
        ids = args[0] if args else kwargs["input_ids"]
        rows.append(ids.shape[0])

    handle = adapter.text_encoder.register_forward_pre_hook(count, with_kwargs=True)
    try:
        assert adapter.prompt_ids(["a", "b", "a"]).tolist() == [1, 2, 1]
        assert sum(rows) == 2
        assert adapter.prompt_ids(["b", "", "a"]).tolist() == [2, 0, 1]
        adapter.predict(latents(3), torch.tensor([10, 500, 999]), torch.tensor([0, 1, 2]))
        adapter.generate(2, ["a", "b"], steps=2)
        assert adapter.prompt_ids(["c"]).tolist() == [3]
        assert sum(rows) == 3
    finally:
        handle.remove()
    assert adapter.prompts == ["", "a", "b", "c"] and adapter.prompt(2) == "b"


def test_bad_prompts_are_refused_with_their_token_count_never_truncated(sd_dirs):
    adapter = load_model(sd_dirs["epsilon"])
    for bad in ("", "   \t"):
        with pytest.raises(UserInputError, match="empty"):
            adapter.check_prompt(bad)
    with pytest.raises(UserInputError, match="empty"):
        adapter.prompt_ids(["  "])
    with pytest.raises(UserInputError, match="must be a string"):
        adapter.check_prompt(7)

    limit = adapter.max_prompt_tokens
    fits, too_long = "x" * (limit - 2), "x" * (limit - 1)  # one token per character, plus start and end
    assert len(adapter.tokenizer(too_long, truncation=False).input_ids) == limit + 1
    with pytest.raises(UserInputError, match=rf"{limit + 1} tokens long .* at most {limit}"):
        adapter.prompt_ids(["a cat", too_long])
    assert adapter.prompts == [""]  # nothing of the refused call was registered
    with pytest.raises(UserInputError, match="tokens long"):
        adapter.generate(1, too_long, steps=1)
    with pytest.raises(UserInputError, match="prompt ids outside"):
        adapter.generate(1, [5], steps=1)
    with pytest.raises(UserInputError, match="3 prompts were given for n = 2"):
        adapter.generate(2, ["a", "b", "c"], steps=1)

    # the longest prompt that fits is encoded whole: its last character changes the encoding
    ids = adapter.prompt_ids([fits, fits[:-1] + "y"])
    emb = adapter.embeddings(ids)
    assert not torch.allclose(emb[0], emb[1], atol=1e-4)


# ---------------------------------------------------------------------- forward process and predictions
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_noised_batch_follows_the_schedule(sd_dirs, prediction):
    adapter = load_model(sd_dirs[prediction])
    x0, labels = latents(6, seed=1), torch.tensor([0, 1, 1, 0, 1, 0])
    adapter.prompt_ids(["a cat"])
    nb = adapter.noised_batch(x0, labels, torch.Generator().manual_seed(3))
    again = adapter.noised_batch(x0, labels, torch.Generator().manual_seed(3))
    assert torch.equal(nb.x_t, again.x_t) and torch.equal(nb.t, again.t) and torch.equal(nb.noise, again.noise)
    assert nb.t.unique().numel() > 1 and int(nb.t.min()) >= 0 and int(nb.t.max()) < 1000
    ab = alphas(adapter)[nb.t].view(-1, 1, 1, 1)
    expected = ab.sqrt() * x0.double() + (1 - ab).sqrt() * nb.noise.double()
    torch.testing.assert_close(nb.x_t.double(), expected, rtol=0, atol=1e-5)
    assert torch.equal(nb.labels, labels)
    part = adapter.noised_batch(x0, labels, torch.Generator().manual_seed(3), rows=slice(2, 5))
    assert torch.equal(part.x_t, nb.x_t[2:5]) and torch.equal(part.t, nb.t[2:5])


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_predict_returns_epsilon_from_the_raw_unet_output(sd_dirs, prediction):
    adapter = load_model(sd_dirs[prediction])
    pipe = stock_pipe(sd_dirs[prediction])
    ids = adapter.prompt_ids([PROMPTS[0], ""])
    x_t, t = latents(2, seed=2), torch.tensor([900, 37])
    states = torch.cat([encoded(pipe, PROMPTS[0]), encoded(pipe, "")])
    with torch.no_grad():
        raw = pipe.unet(x_t, t, encoder_hidden_states=states).sample.double()
    if prediction == "v_prediction":
        ab = alphas(pipe)[t].view(-1, 1, 1, 1)
        expected = ab.sqrt() * raw + (1 - ab).sqrt() * x_t.double()  # ε = √ᾱ v + √(1−ᾱ) x_t
        assert not torch.allclose(expected, raw, atol=1e-2)
    else:
        expected = raw
    eps = adapter.predict(x_t, t, ids)
    torch.testing.assert_close(eps.double(), expected, rtol=0, atol=1e-5)
    eps.square().sum().backward()  # gradients reach the UNet through the conversion
    assert adapter.unet.conv_out.weight.grad is not None and adapter.unet.conv_out.weight.grad.abs().sum() > 0

    # the functional form agrees, and differentiates in the parameters it is given
    params = {n: p.detach().clone().requires_grad_(True) for n, p in adapter.named_parameters("xattn")}
    functional = adapter.functional_predict(params, x_t, t, ids)
    torch.testing.assert_close(functional.double(), expected, rtol=0, atol=1e-5)
    functional.square().sum().backward()
    assert all(p.grad is not None for p in params.values())


def test_latents_are_the_vae_posterior_mean_scaled(sd_dirs):
    adapter = load_model(sd_dirs["epsilon"])
    vae = stock_pipe(sd_dirs["epsilon"]).vae
    sf = vae.config.scaling_factor
    images = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(9)) * 2 - 1
    with torch.no_grad():
        expected = vae.encode(images).latent_dist.mean * sf
        decoded = vae.decode(expected / sf).sample.clamp(-1, 1)
    z = adapter.encode_images(images, batch_size=2)
    assert z.shape == (3, *adapter.latent_shape)
    torch.testing.assert_close(z, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(adapter.decode_latents(expected, batch_size=2), decoded, rtol=0, atol=1e-5)
    with pytest.raises(UserInputError, match=r"expected 3×16×16 .* got 1×16×16"):
        adapter.encode_images(torch.zeros(2, 1, 16, 16))


# ---------------------------------------------------------------------- sampling
@pytest.mark.parametrize("prediction, overrides", [
    ("epsilon", {}),
    ("v_prediction", {}),
    ("epsilon", {"timestep_spacing": "trailing", "set_alpha_to_one": True, "steps_offset": 0}),
    ("v_prediction", {"timestep_spacing": "linspace", "set_alpha_to_one": True}),
    ("epsilon", {"steps_offset": 0, "set_alpha_to_one": True}),  # the last step lands exactly on t = 0
    ("epsilon", {"clip_sample": True, "clip_sample_range": 0.5}),  # a latent model's config is followed too
    ("v_prediction", {"thresholding": True, "sample_max_value": 0.7}),
])
def test_ddim_step_equals_diffusers_ddim_scheduler_step(sd_dirs, prediction, overrides):
    pipe = stock_pipe(sd_dirs[prediction], **overrides)
    adapter = from_pipeline(stock_pipe(sd_dirs[prediction], **overrides))
    scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(5)
    mine = DDIMScheduler.from_config(pipe.scheduler.config)
    mine.set_timesteps(5)
    x, out = latents(2, seed=4), latents(2, seed=5)
    for t in scheduler.timesteps.tolist():
        ref = scheduler.step(out, t, x, eta=0.0).prev_sample
        ab = float(alphas(pipe)[t])
        eps = out if prediction == "epsilon" else ab ** 0.5 * out + (1 - ab) ** 0.5 * x
        torch.testing.assert_close(adapter._ddim_step(mine, eps, t, x), ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("prediction, overrides, guidance", [
    ("epsilon", {}, 3.0),
    ("v_prediction", {}, 3.0),
    ("epsilon", {"timestep_spacing": "trailing", "set_alpha_to_one": True, "steps_offset": 0}, 5.0),
    ("v_prediction", {"timestep_spacing": "trailing", "clip_sample": True, "clip_sample_range": 0.5}, 1.0),
])
def test_generate_equals_the_stock_pipeline(sd_dirs, prediction, overrides, guidance):
    pipe = stock_pipe(sd_dirs[prediction], **overrides)
    adapter = from_pipeline(stock_pipe(sd_dirs[prediction], **overrides))
    noise = latents(2, seed=6)
    with torch.no_grad():
        ref = pipe(PROMPTS, latents=noise.clone(), num_inference_steps=4, guidance_scale=guidance,
                   output_type="pt").images * 2 - 1
    got = adapter.generate(2, PROMPTS, steps=4, guidance_scale=guidance, noise=noise.clone())
    assert got.shape == (2, 3, 16, 16) and got.dtype == torch.float32
    torch.testing.assert_close(got, ref, rtol=0, atol=2e-5)
    # the comparison can see guidance and the prompt: both move the images well beyond the tolerance
    other = adapter.generate(2, PROMPTS, steps=4, guidance_scale=guidance + 2.0, noise=noise.clone())
    assert (other - got).abs().max() > 1e-2
    swapped = adapter.generate(1, PROMPTS[1], steps=4, guidance_scale=guidance, noise=noise[:1])
    assert (got[0] - swapped[0]).abs().max() > 1e-2


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_ddim_trajectory_records_each_steps_input_and_raw_predictions(sd_dirs, prediction):
    pipe = stock_pipe(sd_dirs[prediction])
    adapter = load_model(sd_dirs[prediction])
    ids = adapter.prompt_ids(PROMPTS)
    noise, guidance, steps = latents(2, seed=8), 2.5, 3
    traj = adapter.ddim_trajectory(ids, steps=steps, guidance_scale=guidance, noise=noise)
    assert traj.x_t.shape == (steps, 2, 4, 8, 8) and traj.eps_cond.shape == traj.eps_uncond.shape == traj.x_t.shape
    assert torch.equal(traj.labels, ids) and traj.final.shape == (2, 4, 8, 8)
    scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(steps)
    assert traj.t.tolist() == scheduler.timesteps.tolist()
    torch.testing.assert_close(traj.x_t[0], noise, rtol=0, atol=0)

    cond = torch.cat([encoded(pipe, p) for p in PROMPTS])
    uncond = encoded(pipe, "").expand_as(cond)
    x = noise.clone()
    for s, t in enumerate(scheduler.timesteps.tolist()):
        torch.testing.assert_close(traj.x_t[s], x, rtol=0, atol=2e-5)
        tt = torch.full((2,), t)
        with torch.no_grad():
            out_c = pipe.unet(x, tt, encoder_hidden_states=cond).sample
            out_u = pipe.unet(x, tt, encoder_hidden_states=uncond).sample
        ab = float(alphas(pipe)[t])
        to_eps = (lambda o: o) if prediction == "epsilon" else (lambda o: ab ** 0.5 * o + (1 - ab) ** 0.5 * x)
        torch.testing.assert_close(traj.eps_cond[s], to_eps(out_c), rtol=0, atol=2e-5)
        torch.testing.assert_close(traj.eps_uncond[s], to_eps(out_u), rtol=0, atol=2e-5)
        x = scheduler.step(out_u + guidance * (out_c - out_u), t, x, eta=0.0).prev_sample
    torch.testing.assert_close(traj.final, x, rtol=0, atol=2e-5)
    with torch.no_grad():
        stock_final = pipe(PROMPTS, latents=noise.clone(), num_inference_steps=steps, guidance_scale=guidance,
                           output_type="latent").images
    torch.testing.assert_close(traj.final, stock_final, rtol=0, atol=2e-5)
    torch.testing.assert_close(adapter.decode_latents(traj.final),
                               adapter.generate(2, ids, steps=steps, guidance_scale=guidance, noise=noise),
                               rtol=0, atol=1e-6)


def test_generation_is_deterministic_per_seed_and_row(sd_dirs):
    adapter = load_model(sd_dirs["v_prediction"])

    def gen(n: int, seed: int, **kw) -> torch.Tensor:
        return adapter.generate(n, "a cat", steps=2, generator=torch.Generator().manual_seed(seed), **kw)

    four = gen(4, 7)
    assert torch.equal(four, gen(4, 7))
    torch.testing.assert_close(gen(2, 7), four[:2], rtol=0, atol=1e-6)
    torch.testing.assert_close(gen(4, 7, batch_size=2), four, rtol=0, atol=1e-5)
    assert (gen(4, 8) - four).abs().max() > 1e-2
    assert (four[0] - four[1]).abs().max() > 1e-2


# ---------------------------------------------------------------------- parameter scopes
def test_scopes_follow_stable_diffusion_naming(sd_dirs):
    adapter = load_model(sd_dirs["epsilon"])
    every = {n for n, _ in adapter.unet.named_parameters()}
    names = {scope: {n for n, _ in adapter.named_parameters(scope)} for scope in SCOPES
             if not scope.startswith("text-encoder")}
    assert not any(n.startswith(("encoder_hid_proj.", "add_embedding.")) for n in every)  # tiny SD has neither
    assert names["all"] == every
    assert names["xattn"] == {n for n in every if ".attn2." in n} and names["xattn"]
    assert names["xattn-kv"] == {n for n in every if ".attn2.to_k." in n or ".attn2.to_v." in n}
    assert names["xattn-kv"] < names["xattn"]
    excluded = {n for n in every if ".attn2." in n or n.startswith(("time_embedding.", "conv_out.", "conv_norm_out."))}
    assert names["noxattn"] == every - excluded
    assert any(n.startswith("conv_in.") for n in names["noxattn"]) and any(".attn1." in n for n in names["noxattn"])
    assert names["attention"] == {n for n in every if ".attentions." in n}
    unet_params = {id(p) for p in adapter.unet.parameters()}
    assert all(id(p) in unet_params for scope in names for p in adapter.parameters(scope))
    # text-encoder: every layer and the final layer norm, never the token/position embeddings; text-encoder:K the
    # first K layers
    te = dict(adapter.text_encoder.named_parameters())
    layers = {n for n in te if n.startswith("encoder.layers.")}
    assert {n for n, _ in adapter.named_parameters("text-encoder")} == layers | {n for n in te if n.startswith(
        "final_layer_norm.")}
    assert {n for n, _ in adapter.named_parameters("text-encoder:1")} == {n for n in layers
                                                                          if n.startswith("encoder.layers.0.")}
    assert not any("embeddings" in n for n, _ in adapter.named_parameters("text-encoder"))
    with pytest.raises(UserInputError, match="text-encoder:0"):
        adapter.parameters("text-encoder:0")
    with pytest.raises(UserInputError, match="unknown parameter scope 'decoder'"):
        adapter.parameters("decoder")


def test_text_encoder_scope_encodes_with_gradients(sd_dirs):
    adapter = load_model(sd_dirs["epsilon"])
    ids = adapter.prompt_ids(PROMPTS)
    frozen = adapter.embeddings(ids)
    assert not frozen.requires_grad
    adapter.set_scope("text-encoder")  # the method then marks the scope trainable
    for p in adapter.parameters("text-encoder"):
        p.requires_grad_(True)
    live = adapter.embeddings(ids)
    assert live.requires_grad
    torch.testing.assert_close(live.detach(), frozen, rtol=0, atol=1e-6)
    adapter.predict(latents(2), torch.tensor([100, 800]), ids).square().mean().backward()
    grads = [p.grad for p in adapter.parameters("text-encoder")]
    assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0
    adapter.set_scope("xattn")
    assert not adapter.embeddings(ids).requires_grad
    assert not any(p.requires_grad for p in adapter.text_encoder.parameters())


def test_scratch_copy_shares_the_prompt_table_and_owns_its_weights(sd_dirs):
    adapter = load_model(sd_dirs["epsilon"])
    pipe = stock_pipe(sd_dirs["epsilon"])
    frozen = adapter.scratch_copy()
    # prompts registered through either adapter get one id, meaning the same encoding in both
    assert frozen.prompt_ids([PROMPTS[0]]).tolist() == [1]
    assert adapter.prompt_ids([PROMPTS[1], PROMPTS[0]]).tolist() == [2, 1]
    for model in (adapter, frozen):
        assert model.prompts == ["", *PROMPTS]
        for i, prompt in enumerate(["", *PROMPTS]):
            torch.testing.assert_close(model.embeddings(torch.tensor([i])), encoded(pipe, prompt), rtol=0, atol=1e-6)
    x_t, t, ids = latents(2), torch.tensor([300, 600]), torch.tensor([1, 2])
    before = frozen.predict(x_t, t, ids)
    with torch.no_grad():
        adapter.unet.conv_in.weight.add_(0.5)
    assert torch.equal(frozen.predict(x_t, t, ids), before)
    assert not torch.allclose(adapter.predict(x_t, t, ids), before, atol=1e-3)
