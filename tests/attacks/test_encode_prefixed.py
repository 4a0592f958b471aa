"""``T2IAdapter.encode_prefixed`` (what every attack feeds the UNet) against independent computations: CLIP's
embeddings → causal mask → encoder → final layer norm written out by hand; BERT's own ``inputs_embeds`` path;
and ``generate_embedded`` against ``generate``."""
from __future__ import annotations

import pytest
import torch

from fastunlearn.errors import UserInputError


@pytest.fixture(scope="module")
def digits():
    from fastunlearn.models import load_model

    return load_model("zoo:digits-t2i")


def _prefixed_embeds(adapter, label, prefix_embeds):
    """Input token embeddings ``[1, L, D]`` of the prompt with ``prefix_embeds`` after its first token, built
    from the tokenizer's ids (not from ``prefixed_tokens``), and the attention mask."""
    k = prefix_embeds.shape[0]
    tok = adapter.tokenizer([adapter.prompt(int(label))], padding="max_length",
                            max_length=adapter.max_prompt_tokens, return_tensors="pt")
    ids, mask = tok.input_ids[0], tok.attention_mask[0]
    L = ids.numel()
    table = adapter.text_encoder.get_input_embeddings().weight.detach()
    embeds = torch.cat([table[ids[:1]], prefix_embeds, table[ids[1:L - k]]])[None]
    mask = torch.cat([mask[:1], torch.ones(k, dtype=mask.dtype), mask[1:L - k]])[None]
    return embeds, mask


def test_no_prefix_equals_encode_prompts(sd, digits):
    for adapter, prompts in ((sd, ["a cat", "a small dog"]), (digits, ["a handwritten digit zero", "the number two"])):
        labels = adapter.prompt_ids(prompts)
        got = adapter.encode_prefixed(labels, torch.zeros(0, dtype=torch.long))
        torch.testing.assert_close(got, adapter.encode_prompts(prompts), rtol=0, atol=1e-6)
        got = adapter.encode_prefixed(labels, torch.zeros(0, adapter.token_embedding.shape[1]))
        torch.testing.assert_close(got, adapter.encode_prompts(prompts), rtol=0, atol=1e-6)


def test_embeddings_of_token_ids_give_the_states_of_those_ids(sd, digits):
    for adapter, prompt, ids in ((sd, "a cat", [40, 41, 300]), (digits, "a handwritten digit zero", [2000, 3000])):
        labels = adapter.prompt_ids([prompt, prompt])
        ids = torch.tensor(ids)
        from_ids = adapter.encode_prefixed(labels, ids)
        from_embeds = adapter.encode_prefixed(labels, adapter.token_embedding[ids].clone())
        torch.testing.assert_close(from_embeds, from_ids, rtol=0, atol=1e-6)
        assert not torch.allclose(from_ids, adapter.encode_prompts([prompt, prompt]), atol=1e-3)  # the prefix matters


def test_clip_states_equal_the_hand_written_encoder(sd):
    te = sd.text_encoder
    label = sd.prompt_ids(["a red cat"])
    prefix = torch.randn(3, te.config.hidden_size, generator=torch.Generator().manual_seed(0))
    embeds, _ = _prefixed_embeds(sd, label, prefix)
    h = te.embeddings(inputs_embeds=embeds)
    L = embeds.shape[1]
    causal = torch.full((L, L), float("-inf")).triu(1)[None, None]
    with torch.no_grad():
        ref = te.final_layer_norm(te.encoder(inputs_embeds=h, attention_mask=causal).last_hidden_state)
        no_mask = te.final_layer_norm(te.encoder(inputs_embeds=h).last_hidden_state)
    got = sd.encode_prefixed(label, prefix)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)
    assert not torch.allclose(no_mask, ref, atol=1e-3)  # the reference really is causal


def test_clip_states_keep_the_gradient_of_the_prefix(sd):
    label = sd.prompt_ids(["a cat"])
    prefix = torch.randn(2, sd.text_encoder.config.hidden_size, requires_grad=True)
    states = sd.encode_prefixed(label, prefix)
    assert states.requires_grad
    (grad,) = torch.autograd.grad(states[0, 1:].square().sum(), [prefix])
    assert grad.abs().sum() > 0
    assert all(p.grad is None for p in sd.text_encoder.parameters())


def test_bert_states_equal_the_models_inputs_embeds_path(digits):
    te = digits.text_encoder
    assert getattr(te.config, "use_attention_mask", False)
    label = digits.prompt_ids(["the number seven"])
    prefix = torch.randn(2, te.config.hidden_size, generator=torch.Generator().manual_seed(1)) * 0.05
    embeds, mask = _prefixed_embeds(digits, label, prefix)
    with torch.no_grad():
        ref = te(inputs_embeds=embeds, attention_mask=mask)[0]
    torch.testing.assert_close(digits.encode_prefixed(label, prefix), ref, rtol=0, atol=1e-5)


def test_a_prompt_without_room_for_the_prefix_is_refused(sd):
    long = "x" * (sd.max_prompt_tokens - 3)  # one token per character, plus BOS and EOS: 1 position left
    label = sd.prompt_ids([long])
    sd.encode_prefixed(label, torch.tensor([40]))
    with pytest.raises(UserInputError, match="no room for 2 prefix tokens"):
        sd.encode_prefixed(label, torch.tensor([40, 41]))


def test_decoded_prefix_reads_before_the_prompt(digits):
    label = digits.prompt_ids(["a handwritten digit zero"])
    ids = digits.tokenizer(["purple"], add_special_tokens=False).input_ids[0]
    assert digits.decode_prefixed(label, torch.tensor(ids)) == ["purple a handwritten digit zero"]


def test_generate_embedded_equals_generate_for_the_prompt_states(sd):
    labels = sd.prompt_ids(["a cat", "a dog"])
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    ref = sd.generate(2, labels, steps=3, noise=noise)
    got = sd.generate_embedded(sd.encode_prefixed(labels, torch.zeros(0, dtype=torch.long)), steps=3, noise=noise)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-6)
    with pytest.raises(UserInputError, match="rows of encoder states"):
        sd.ddim_trajectory(labels, steps=2, noise=noise, states=sd.encode_prompts(["a cat"]))
