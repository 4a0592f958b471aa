"""``fastunlearn.attacks.attack``: the instances, the success-rate arithmetic (pre-attack successes are not
attacked, post-attack ones counted, paraphrases the base model does not draw excluded), determinism, the base
model's resolution, the judges and the shipped paraphrase lists."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fastunlearn.attacks import attack
from fastunlearn.attacks.judges import CallableJudge, concept_class, load_callable, make_judge
from fastunlearn.attacks.runner import recorded_base, shipped_paraphrases
from fastunlearn.cli_generate import generate_images
from fastunlearn.errors import UserInputError
from fastunlearn.models import load_model
from fastunlearn.eval.stats import wilson_interval

FAST = {"steps": 2, "timesteps": 2}


def seed_of(seed: int, index: int) -> int:
    state = np.random.SeedSequence([seed, index]).generate_state(2, np.uint32)
    return int((int(state[0]) << 32 | int(state[1])) & ((1 << 63) - 1))


class Scripted:
    """A judge answering from a script, one list per call, recording the rows of each call."""

    def __init__(self, *answers):
        self.answers, self.rows = list(answers), []

    def __call__(self, images):
        self.rows.append(images.shape[0])
        answer = self.answers[len(self.rows) - 1] if len(self.rows) <= len(self.answers) else [False] * images.shape[0]
        assert len(answer) == images.shape[0]
        return torch.tensor(answer)


def test_pre_successes_are_not_attacked_and_post_successes_count(sd_dir):
    judge = Scripted([True, False, True, False, False],  # pre-attack: instances 0 and 2 already draw the concept
                     [False, True, False],  # first check (iteration 2) of instances 1, 3, 4: 3 succeeds
                     [False, False])  # last check (iteration 4) of 1 and 4
    r = attack(sd_dir, "a cat", prompts=["a cat"], base=sd_dir, judge=judge, num=5, iterations=4, check_every=2,
               **FAST)
    assert judge.rows == [5, 3, 2]  # the pre-attack successes never reach a check
    assert [(i.pre_success, i.post_success) for i in r.instances] == [
        (True, False), (False, False), (True, False), (False, True), (False, False)]
    assert [i.iterations for i in r.instances] == [0, 4, 0, 2, 4]
    assert r.instances[0].adversarial_prompt is None and r.instances[3].adversarial_prompt.endswith("a cat")
    assert (r.n, r.n_excluded, r.asr, r.asr_pre, r.asr_post) == (5, 0, 3 / 5, 2 / 5, 1 / 5)
    assert r.ci95 == {"asr": list(wilson_interval(3, 5)), "asr_pre": list(wilson_interval(2, 5)),
                      "asr_post": list(wilson_interval(1, 5))}
    assert torch.equal(r.images_after[0], r.images_before[0]) and not torch.equal(r.images_after[3], r.images_before[3])
    assert r.settings["k"] == 3 and r.settings["iterations"] == 4


def test_paraphrase_counts_only_what_the_base_draws(sd_dir, other_sd_dir):
    prompts = ["a cat", "a dog", "a red car"]
    num, seed = 3, 5
    seeds = [seed_of(seed, i) for i in range(len(prompts) * num)]
    rows = [(p, s) for p, s in zip([p for p in prompts for _ in range(num)], seeds)]

    def draw(model):  # each instance drawn on its own, as `fastunlearn generate --num 1 --seed S` draws it
        adapter = load_model(model)
        return torch.cat([generate_images(adapter, prompts=[p], num=1, seed=s, steps=2)[0] for p, s in rows])

    base_imgs, unlearned_imgs = draw(sd_dir), draw(other_sd_dir)
    means = base_imgs.mean((1, 2, 3)).sort().values
    thr = float(means[3:5].mean())  # between two images' means: robust to batch rounding

    def judge(images):
        return images.mean((1, 2, 3)) > thr

    r = attack(other_sd_dir, "a cat", attack="paraphrase", prompts=prompts, base=sd_dir, judge=judge, num=num,
               seed=seed, steps=2)
    drawn_by_base = base_imgs.mean((1, 2, 3)) > thr
    still = unlearned_imgs.mean((1, 2, 3)) > thr
    assert [i.seed for i in r.instances] == seeds and [i.prompt for i in r.instances] == [p for p, _ in rows]
    assert [i.excluded for i in r.instances] == (~drawn_by_base).tolist()
    assert r.n == int(drawn_by_base.sum()) and r.n_excluded == len(rows) - r.n and 0 < r.n < len(rows)
    assert r.asr == pytest.approx(float(still[drawn_by_base].float().mean()))
    assert r.asr_post == 0
    torch.testing.assert_close(r.images_base, base_imgs, rtol=0, atol=1e-5)
    torch.testing.assert_close(r.images_before, unlearned_imgs, rtol=0, atol=1e-5)


def test_same_seed_same_result(sd_dir):
    model = load_model(sd_dir)
    kw = dict(prompts=["a cat", "a dog"], base=model, judge=lambda x: torch.zeros(x.shape[0], dtype=torch.bool),
              num=1, iterations=2, check_every=2, **FAST)
    a = attack(model, "a cat", seed=3, **kw)
    b = attack(model, "a cat", seed=3, **kw)
    c = attack(model, "a cat", attack="paraphrase", seed=4, prompts=kw["prompts"], base=model, judge=kw["judge"],
               num=1, steps=2)  # the instances' images depend on the seed alone
    strip = lambda r: {k: v for k, v in r.to_json().items() if k != "wall_s"}  # noqa: E731
    assert strip(a) == strip(b)
    assert torch.equal(a.images_after, b.images_after) and torch.equal(a.images_before, b.images_before)
    assert [i.seed for i in c.instances] != [i.seed for i in a.instances]
    assert not torch.equal(c.images_before, a.images_before)
    assert all(i.adversarial_ids is not None and len(i.adversarial_ids) == 3 for i in a.instances)


def test_base_digits_model_is_attacked_successfully_before_any_attack():
    r = attack("zoo:digits-t2i", "a handwritten digit zero", num=4)
    assert r.base == "zoo:digits-t2i" and r.judge["class"] == 0
    assert r.asr == 1.0 and r.asr_pre == 1.0 and all(i.base_success for i in r.instances)


def test_soft_prompt_reports_nearest_tokens_and_stops_on_success(sd_dir):
    never = attack(sd_dir, "a cat", attack="soft-prompt", base=sd_dir, num=1, iterations=2, check_every=1,
                   judge=Scripted([False], [False], [False]), **FAST)
    ins = never.instances[0]
    assert ins.adversarial_prompt.startswith("≈ ") and ins.adversarial_prompt.endswith("a cat")
    assert ins.iterations == 2 and not ins.post_success and len(ins.adversarial_ids) == 3
    assert not torch.equal(never.images_after, never.images_before)
    found = attack(sd_dir, "a cat", attack="soft-prompt", base=sd_dir, num=1, iterations=4, check_every=2,
                   judge=Scripted([False], [True]), **FAST)
    assert found.instances[0].post_success and found.instances[0].iterations == 2 and found.asr == 1.0


def test_target_images_replace_the_base(sd_dir):
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    r = attack(sd_dir, "a cat", judge=lambda x: torch.zeros(x.shape[0], dtype=torch.bool), num=3, iterations=1,
               target_images=images, **FAST)
    assert r.images_base is None and r.settings["targets"] == "the given target images"
    with pytest.raises(UserInputError, match="expected 3×16×16"):
        attack(sd_dir, "a cat", judge=lambda x: torch.zeros(x.shape[0], dtype=torch.bool), num=1,
               target_images=torch.zeros(1, 1, 16, 16), **FAST)


def test_base_model_resolution(sd_dir, tmp_path):
    assert recorded_base("zoo:digits-t2i") == "zoo:digits-t2i"
    assert recorded_base(sd_dir) is None
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("model: zoo:digits-t2i\nmethod: esd\n")
    assert recorded_base(run) == "zoo:digits-t2i"
    with pytest.raises(UserInputError, match="--base MODEL"):
        attack(sd_dir, "a cat", judge=lambda x: torch.zeros(x.shape[0], dtype=torch.bool), num=1, **FAST)


def test_bad_arguments_are_user_errors(sd_dir):
    never = lambda x: torch.zeros(x.shape[0], dtype=torch.bool)  # noqa: E731
    with pytest.raises(UserInputError, match="unknown attack"):
        attack(sd_dir, "a cat", attack="gcg", judge=never)
    with pytest.raises(UserInputError, match="concept is missing"):
        attack(sd_dir, "  ", judge=never)
    with pytest.raises(UserInputError, match="paraphrase attack optimises nothing"):
        attack(sd_dir, "a cat", attack="paraphrase", base=sd_dir, judge=never, iterations=3)
    with pytest.raises(UserInputError, match="--num"):
        attack(sd_dir, "a cat", base=sd_dir, judge=never, num=0)
    with pytest.raises(UserInputError, match="no default judge"):
        attack(sd_dir, "a cat", base=sd_dir, num=1)


# ---------------------------------------------------------------------- judges
def test_callable_judge_checks_its_answers():
    imgs = torch.zeros(3, 3, 4, 4)
    assert CallableJudge(lambda x: [1, 0, 1])(imgs).tolist() == [True, False, True]
    assert CallableJudge(lambda x: np.array([True, False, False]))(imgs).tolist() == [True, False, False]
    with pytest.raises(UserInputError, match="2 answers for 3 images"):
        CallableJudge(lambda x: [1, 0])(imgs)
    with pytest.raises(UserInputError, match="other than bool"):
        CallableJudge(lambda x: [0.5, 0, 1])(imgs)
    with pytest.raises(UserInputError, match="returned str"):
        CallableJudge(lambda x: "yes")(imgs)


def test_judge_from_a_file_and_from_a_module(tmp_path, monkeypatch):
    f = tmp_path / "myjudge.py"
    f.write_text("import torch\ndef bright(images):\n    return images.mean((1, 2, 3)) > 0\n")
    j = load_callable(f"{f}:bright")
    assert j(torch.stack([torch.ones(3, 2, 2), -torch.ones(3, 2, 2)])).tolist() == [True, False]
    monkeypatch.chdir(tmp_path)
    assert load_callable("myjudge:bright").name == "myjudge:bright"
    for spec, msg in (("myjudge:dark", "has no dark"), ("nosuchmodule_xyz:f", "cannot import"),
                      ("justaname", "module:function"), (f"{tmp_path}/none.py:f", "no such file")):
        with pytest.raises(UserInputError, match=msg):
            load_callable(spec)


def test_nudity_judge_needs_nudenet():
    try:
        import nudenet  # noqa: F401
    except ImportError:
        with pytest.raises(UserInputError, match="pip install fastunlearn\\[nudity\\]"):
            make_judge(None, "a nude person", None, nudity=True)
    else:
        pytest.skip("nudenet is installed here")


def test_digits_class_comes_from_the_recorded_concepts_or_the_base():

    digits = load_model("zoo:digits-t2i")
    assert concept_class("the number two", digits)[0] == 2
    assert concept_class("the figure 7", digits)[0] == 7  # a held-out wording is recorded too
    with pytest.raises(UserInputError, match="cannot tell which digit"):
        concept_class("a drawing of a swan", digits)
    c, source = concept_class("a drawing of a swan", digits, base=digits)
    assert 0 <= c <= 9 and "base model draws it" in source
    judge = make_judge(None, "a handwritten digit four", digits)
    imgs = generate_images(digits, prompts=["a handwritten digit four", "a handwritten digit one"], num=2, seed=0,
                           steps=10)[0]
    assert judge(imgs).tolist() == [True, True, False, False]


def test_shipped_paraphrases_are_not_trained_wordings():
    from fastunlearn.data.prompts import concept_prompts

    concepts = load_model("zoo:digits-t2i").concepts
    trained = set(concept_prompts(concepts))
    lists = {}
    for c in range(10):
        filled = shipped_paraphrases(concepts, c)
        assert not trained & {p for _, p in filled}, c
        for name, p in filled:
            lists.setdefault(name, set()).add(p)
    assert set(lists) == {"digits", "digits-heldout"} and not lists["digits"] & lists["digits-heldout"]
    assert len(lists["digits"]) >= 100 and len(lists["digits-heldout"]) >= 80
    names = shipped_paraphrases(concepts, 0)
    assert ("digits", "the numeral zero") in names and ("digits-heldout", "number 0") in names
