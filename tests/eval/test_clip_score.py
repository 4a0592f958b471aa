"""CLIP score (fastunlearn.eval.clip_score) against plain CLIPModel calls, on a tiny random CLIP saved offline."""
import numpy as np
import pytest
import torch
from PIL import Image

from fastunlearn.errors import UserInputError
from fastunlearn.eval.clip_score import ClipScorer, clip_score, load_clip
from fastunlearn.models.tiny_sd import _write_char_tokenizer

IMAGE_SIZE = 32
MEAN = (0.48145466, 0.4578275, 0.40821073)  # CLIP's normalisation
STD = (0.26862954, 0.26130258, 0.27577711)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    """A random CLIPModel (32-px images, char-level tokenizer of 32 positions) with its tokenizer and image
    processor, saved as a hub-style directory."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    root = tmp_path_factory.mktemp("tiny_clip")
    tok_dir = _write_char_tokenizer(root / "tok_src")
    tok = CLIPTokenizer(vocab=str(tok_dir / "vocab.json"), merges=str(tok_dir / "merges.txt"), model_max_length=32)
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=32, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
        vision_config=dict(image_size=IMAGE_SIZE, patch_size=8, hidden_size=32, intermediate_size=64,
                           num_hidden_layers=2, num_attention_heads=4),
        projection_dim=16)
    model = CLIPModel(config).eval()
    out = root / "clip"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
                       ).save_pretrained(out)
    return out


def _reference_cosines(clip_dir, images, prompts):
    """cos(image, its prompt) from plain CLIPModel.forward: PIL bicubic resize, CLIP normalisation by hand."""
    from transformers import CLIPModel, CLIPTokenizer

    model = CLIPModel.from_pretrained(clip_dir).eval()
    tok = CLIPTokenizer.from_pretrained(clip_dir)
    u8 = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    u8 = u8.expand(-1, 3, -1, -1) if u8.shape[1] == 1 else u8
    pix = []
    for a in u8.permute(0, 2, 3, 1).numpy():
        im = Image.fromarray(a).resize((IMAGE_SIZE, IMAGE_SIZE), Image.BICUBIC)
        x = torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1)
        pix.append((x - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None])
    text = tok(prompts, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(input_ids=text.input_ids, attention_mask=text.attention_mask, pixel_values=torch.stack(pix))
        # logits_per_image[i, j] = exp(logit_scale) · cos(image i, prompt j)
        return out.logits_per_image.diagonal() / model.logit_scale.exp()


def test_scores_match_plain_clip_calls(clip_dir):
    torch.manual_seed(2)  # coloured noise: this random CLIP gives these pairs cosines of both signs
    images = (torch.rand(8, 3, 1, 1) * 2 - 1) * 0.5 + (torch.rand(8, 3, 16, 16) * 2 - 1) * 0.5
    prompts = ["a cat", "a red car", "a cat", "an old boat", "a red car", "sky", "a cat", "sky"]
    scorer = load_clip(clip_dir)
    ref = _reference_cosines(clip_dir, images, prompts)
    assert (ref > 0.02).sum() >= 2 and (ref < -0.02).sum() >= 2  # the clamp at 0 is exercised
    cos = scorer.cosine(images, prompts)
    assert torch.allclose(cos, ref, atol=1e-4), (cos, ref)
    expected = 100 * ref.clamp_min(0)
    assert torch.allclose(scorer.scores(images, prompts), expected, atol=1e-2)
    assert clip_score(images, prompts, scorer) == pytest.approx(float(expected.mean()), abs=1e-2)
    # each image is scored against its own prompt: a permuted prompt list gives other numbers
    assert not torch.allclose(scorer.cosine(images, prompts[1:] + prompts[:1]), ref, atol=1e-2)


def test_grey_images_and_one_prompt_for_all(clip_dir):
    torch.manual_seed(2)
    grey = torch.rand(3, 1, 16, 16) * 2 - 1
    scorer = load_clip(clip_dir)
    ref = _reference_cosines(clip_dir, grey, ["a digit"] * 3)
    assert torch.allclose(scorer.cosine(grey, "a digit"), ref, atol=1e-4)
    assert torch.allclose(scorer.cosine(grey.expand(-1, 3, -1, -1), "a digit"), ref, atol=1e-4)


def test_loaded_once_and_bad_inputs(clip_dir, tmp_path):
    scorer = load_clip(clip_dir)
    assert load_clip(str(clip_dir)) is scorer and load_clip(scorer) is scorer
    assert isinstance(scorer, ClipScorer) and scorer.reference == str(clip_dir)
    with pytest.raises(UserInputError, match="32 tokens|takes at most 32"):
        scorer.cosine(torch.zeros(1, 3, 16, 16), "x" * 40)  # never truncated
    with pytest.raises(UserInputError, match="2 prompts were given for 1 images"):
        scorer.cosine(torch.zeros(1, 3, 16, 16), ["a", "b"])
    with pytest.raises(UserInputError, match="cannot load the CLIP model"):
        load_clip(tmp_path)


