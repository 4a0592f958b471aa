"""Method comparison on the digits default: every method, same seed, same evaluation, same machine.

For each method (EraseDiff and the baselines) on ``zoo:digits-ddpm`` forgetting class 0: run the engine's
loop with the method's defaults, and every ``--every`` steps evaluate with the same seeded DDIM noise
(``--per-class`` generations per class, ``--eval-steps`` DDIM steps, each judged by the shipped CNN and by the
independent SVM, ``fastunlearn.eval.judges``):

- the *bar*: forget accuracy ≤ 5% and mean retain accuracy ≥ base − 4 points, on both judges; reported are the steps and the
  wall time (method setup + training steps, evaluation excluded) until the first evaluation that meets it;
- final forget / retain accuracy after ``--steps`` steps (or at the bar with ``--stop-at-bar``);
- retain FID/KID of the final model vs the held-out test images of the retained classes (judge features,
  :func:`fastunlearn.eval.fid.fid_kid`) when that module exists;
- MIA AUC of the forget class (:func:`fastunlearn.eval.mia.membership_auc`) when that module exists.

    python benchmarks/bench_methods.py                 # writes results/methods.md and methods.csv
    python benchmarks/bench_methods.py --smoke         # 2 steps per method, tiny eval and FID/MIA sets, writes nothing

Methods with an EMA (EraseDiff) are evaluated on their EMA weights, the model their run saves.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import importlib.util
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import RESULTS, environment  # noqa: E402

from fastunlearn.api import _judge  # noqa: E402
from fastunlearn.data.digits import load_digits_split  # noqa: E402
from fastunlearn.data.selection import select_forget_retain  # noqa: E402
from fastunlearn.config import UnlearnConfig  # noqa: E402
from fastunlearn.engine import LoopSettings, SampleSet, prepare_model, resolve_fast_path, train  # noqa: E402
from fastunlearn.eval.classifier import generation_accuracy  # noqa: E402
from fastunlearn.eval.judges import DIGITS_JUDGES, load_judge  # noqa: E402
from fastunlearn.methods import base as methods  # noqa: E402
from fastunlearn.models.ddpm import load_adapter  # noqa: E402

#: (row label, registered method, options): each method at its registered defaults.
METHODS = [
    ("erasediff", "erasediff", {}),
    ("finetune", "finetune", {}),
    ("neggrad", "gradient_ascent", {"variant": "neggrad"}),
    ("neggrad_plus", "gradient_ascent", {"variant": "neggrad_plus"}),
    ("salun", "salun", {}),
    ("selective_amnesia", "selective_amnesia", {}),
]
FORGET = 0
FORGET_MAX, RETAIN_DROP = 0.05, 0.04


def has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


class Evaluator:
    """Seeded generation accuracy of every class (the same noise at every call), each generation judged by both
    digits judges: ``forget`` / ``retain`` by the shipped CNN (``zoo:digits-classifier``), ``forget_svm`` /
    ``retain_svm`` by the independent SVM (``zoo:digits-svm``); forget = class 0, retain = mean over the rest."""

    def __init__(self, per_class: int, steps: int, seed: int = 1234):
        self.per_class, self.steps, self.seed = per_class, steps, seed
        self.judges = [load_judge(j) for j in DIGITS_JUDGES]

    def __call__(self, adapter) -> dict:
        was = adapter.unet.training
        adapter.unet.eval()
        gen = torch.Generator().manual_seed(self.seed)
        res = generation_accuracy(lambda n, y, generator=None: adapter.generate(n, y, steps=self.steps, generator=generator),
                                  self.judges[0], list(range(adapter.num_classes)), self.per_class, generator=gen,
                                  also={"svm": self.judges[1]})
        adapter.unet.train(was)
        out = {}
        for suffix, acc in (("", res["accuracy_by_class"]), ("_svm", res["also"]["svm"]["accuracy_by_class"])):
            retained = [c for c in acc if c != FORGET]
            out["forget" + suffix] = acc[FORGET]
            out["retain" + suffix] = sum(acc[c] for c in retained) / len(retained)
        return out

    def meets_bar(self, acc: dict, base: dict) -> bool:
        """Forget accuracy ≤ FORGET_MAX and retain accuracy ≥ base − RETAIN_DROP, on BOTH judges."""
        return all(acc["forget" + s] <= FORGET_MAX and acc["retain" + s] >= base["retain" + s] - RETAIN_DROP
                   for s in ("", "_svm"))


class ema_weights:
    """Context: the method's EMA weights in the model (if it keeps one), the live weights restored after."""

    def __init__(self, method):
        self.method = method

    def __enter__(self):
        ema = getattr(self.method, "ema", None)
        self.saved = None
        if ema is not None:
            self.saved = [p.detach().clone() for p in self.method.params]
            with torch.no_grad():
                for p, e in zip(self.method.params, ema):
                    p.copy_(e)

    def __exit__(self, *exc):
        if self.saved is not None:
            with torch.no_grad():
                for p, s in zip(self.method.params, self.saved):
                    p.copy_(s)


def run_method(label: str, name: str, options: dict, args, judge, evaluator, base: dict, sets, work: Path) -> dict:
    adapter = load_adapter("zoo:digits-ddpm")
    # Every method runs the engine's fast path as `fastunlearn run` resolves it (--precision overrides).
    fast = resolve_fast_path(UnlearnConfig(precision=args.precision), torch.device("cpu"))
    prepare_model(adapter, torch.device("cpu"), fast)
    cls = methods.get(name)
    cfg = UnlearnConfig(method=name, options=options).resolved()  # batch, lr and options exactly as `run` resolves them
    plain = dataclasses.asdict(methods.parse_options(name, {}))
    # shown in the table: the options given here and those the run defaults change (e.g. EraseDiff's η)
    shown = {k: v for k, v in cfg.options.items() if k in options or v != plain[k]}
    lr = args.lr.get(label, cfg.lr)
    method = cls()
    t0 = time.perf_counter()
    method.setup(adapter, methods.MethodConfig(
        lr=lr, options=methods.parse_options(name, cfg.options), forget_classes=tuple(sets.forget_classes),
        retain_classes=tuple(sets.retain_classes), fused_optimizer=fast.fused_optimizer))
    setup_s = time.perf_counter() - t0
    forget = SampleSet(sets.forget_images, sets.forget_labels)
    retain = SampleSet(sets.retain_images, sets.retain_labels)
    trace, state = [], {"eval_s": 0.0, "bar": None}
    t_train = time.perf_counter()

    class Stop(Exception):
        pass

    def on_step(step: int) -> None:
        if step % args.every and step != args.steps:
            return
        e0 = time.perf_counter()
        train_s = e0 - t_train - state["eval_s"]  # steps only: earlier evaluations subtracted
        with ema_weights(method):
            acc = evaluator(adapter)
        state["eval_s"] += time.perf_counter() - e0
        trace.append((step, acc, train_s))
        print(f"  {label:>18} step {step:4d}  forget {acc['forget']:.3f}/{acc['forget_svm']:.3f}  "
              f"retain {acc['retain']:.3f}/{acc['retain_svm']:.3f} (CNN/SVM)  train {train_s:6.1f}s", flush=True)
        if state["bar"] is None and evaluator.meets_bar(acc, base):
            state["bar"] = (step, setup_s + train_s)
            if args.stop_at_bar:
                raise Stop

    settings = LoopSettings(steps=args.steps, batch_size=cfg.batch_size, seed=args.seed, log_every=10, progress=False,
                            precision=fast.precision)
    try:
        train(adapter, method, forget, retain, settings, work / label, on_step=on_step)
    except Stop:
        pass
    method.finalize()
    adapter.unet.eval()
    step, acc, train_s = trace[-1]
    row = {"method": label, "registered": name, "options": " ".join(f"{k}={v}" for k, v in shown.items()),
           "lr": lr, "batch_size": cfg.batch_size, "setup_s": round(setup_s, 1),
           "bar_steps": state["bar"][0] if state["bar"] else "", "bar_wall_s": round(state["bar"][1], 1) if state["bar"] else "",
           "steps_run": step, "train_s": round(train_s, 1), "final_forget_acc": acc["forget"],
           "final_retain_acc": acc["retain"], "final_forget_acc_svm": acc["forget_svm"],
           "final_retain_acc_svm": acc["retain_svm"]}
    if args.fid:
        from fastunlearn.eval.fid import fid_kid

        gen = torch.Generator().manual_seed(99)
        labels = torch.tensor([c for c in sets.retain_classes]).repeat_interleave(args.fid_per_class)
        fake = adapter.generate(labels.numel(), labels, steps=args.eval_steps, generator=gen)
        res = fid_kid(args.real_retain, fake, judge, kid_subsets=20)
        row.update(retain_fid=round(res["fid"], 3), retain_kid=round(res["kid_mean"], 4), retain_kid_std=round(res["kid_std"], 4))
    if args.mia:
        from fastunlearn.eval.mia import membership_auc

        res = membership_auc(adapter, args.members, args.non_members, generator=torch.Generator().manual_seed(7))
        row["mia_auc"] = round(res["auc"], 3)
    return row


def write(rows: list[dict], base: dict, args, env: dict) -> None:
    RESULTS.mkdir(exist_ok=True)
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with (RESULTS / "methods.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, keys)
        w.writeheader()
        w.writerows(rows)
    ed = next((r for r in rows if r["method"] == "erasediff"), None)
    lines = [
        "# Method comparison: forget digit 0 on `zoo:digits-ddpm`", "",
        f"- device: {env['device']}", f"- date: {env['date']}, commit `{env['commit']}`, torch {env['torch']}",
        f"- command: `python benchmarks/bench_methods.py {' '.join(args.argv)}`".rstrip(),
        "- every method on the engine's fast path: " + ", ".join(
            f"{k} {v}" for k, v in resolve_fast_path(UnlearnConfig(precision=args.precision), torch.device("cpu"))
            .as_dict().items()),
        f"- evaluation every {args.every} steps: {args.per_class} generations per class, {args.eval_steps} DDIM steps, "
        f"seed {args.seed}, every generation judged by `zoo:digits-classifier` (CNN) and `zoo:digits-svm` (SVM); "
        f"base model: forget acc {base['forget']:.1%} / {base['forget_svm']:.1%}, mean retain acc {base['retain']:.1%} / "
        f"{base['retain_svm']:.1%} (CNN / SVM; {args.per_class} forget-class and {args.per_class * 9} retain samples)",
        f"- bar: forget acc ≤ {FORGET_MAX:.0%} and mean retain acc ≥ base − {RETAIN_DROP * 100:.0f} points, on both judges; "
        "time to bar = method setup + training steps (evaluation excluded)",
        ("- `--stop-at-bar`: a method stops at its first evaluation that meets the bar, so its \"final\" accuracies, "
         "FID and MIA are at that step" if args.stop_at_bar else f"- every method runs {args.steps} steps"),
        "- retain FID/KID: " + (f"{args.fid_per_class} generations per retained class vs the test split's retained "
                                "classes, CNN judge features; KID on L2-normalised features, mean ± std over 20 subsets" if args.fid else "not measured (`fastunlearn/eval/fid.py` absent)"),
        "- MIA AUC: " + ("forget-class train images (members) vs test images (non-members)" if args.mia
                         else "not measured (`fastunlearn/eval/mia.py` absent)"),
        "",
    ]
    head = ["method", "lr", "setup s", "steps to bar", "time to bar (s)", "× EraseDiff", "steps run",
            "final forget acc (CNN / SVM)", "final retain acc (CNN / SVM)"] + (["retain FID", "retain KID"] if args.fid else []) + (["MIA AUC"] if args.mia else [])
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        reached = r["bar_wall_s"] != ""
        ratio = f"{r['bar_wall_s'] / ed['bar_wall_s']:.2f}" if reached and ed and ed["bar_wall_s"] != "" else "—"
        cells = [f"{r['method']}" + (f" ({r['options']})" if r["options"] and r["method"] != r["options"].split("=")[-1] else ""),
                 f"{r['lr']:g}", f"{r['setup_s']:.1f}",
                 str(r["bar_steps"]) if reached else f"not reached in {r['steps_run']}",
                 f"{r['bar_wall_s']:.1f}" if reached else "—", ratio, str(r["steps_run"]),
                 f"{r['final_forget_acc']:.1%} / {r['final_forget_acc_svm']:.1%}",
                 f"{r['final_retain_acc']:.1%} / {r['final_retain_acc_svm']:.1%}"]
        if args.fid:
            cells += [f"{r['retain_fid']:.3f}", f"{r['retain_kid']:.3f} ± {r['retain_kid_std']:.3f}"]
        if args.mia:
            cells.append(f"{r['mia_auc']:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    if args.mia and "base_mia_auc" in base:
        lines += ["", f"Base model MIA AUC of the forget class: {base['base_mia_auc']:.3f}."]
    if args.fid and "base_fid" in base:
        lines += ["", f"Base model retain FID {base['base_fid']:.3f}, KID {base['base_kid']:.3f} ± {base['base_kid_std']:.3f}."]
    (RESULTS / "methods.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=300, help="max steps per method")
    p.add_argument("--every", type=int, default=25, help="evaluate every K steps")
    p.add_argument("--per-class", type=int, default=20)
    p.add_argument("--eval-steps", type=int, default=10)
    p.add_argument("--fid-per-class", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--precision", default="auto", help="the fast path's precision for every method (auto, fp32, bf16)")
    p.add_argument("--methods", default=",".join(m[0] for m in METHODS))
    p.add_argument("--stop-at-bar", action="store_true", help="stop a method at its first evaluation that meets the bar")
    p.add_argument("--smoke", action="store_true", help="2 steps per method, tiny evaluation, no files written")
    p.add_argument("--no-write", action="store_true", help="print the rows only (a repeat run, a subset of methods)")
    p.add_argument("--work", default="/tmp/bench_methods")
    args = p.parse_args(argv)
    args.argv = list(argv if argv is not None else sys.argv[1:])
    args.lr = {}
    if args.smoke:
        args.steps, args.every, args.per_class, args.eval_steps, args.fid_per_class = 2, 2, 2, 2, 4
    torch.set_num_threads(1)  # the engine's choice for this model on the CPU (engine.cpu_threads)
    torch.manual_seed(args.seed)
    wanted = args.methods.split(",")
    unknown = set(wanted) - {m[0] for m in METHODS}
    if unknown:
        p.error(f"unknown methods {sorted(unknown)}; known: {[m[0] for m in METHODS]}")
    env = environment(torch.device("cpu"))
    sets = select_forget_retain(f"class:{FORGET}")
    base_adapter = load_adapter("zoo:digits-ddpm")
    judge = _judge(base_adapter)  # the CNN: FID/KID features
    evaluator = Evaluator(args.per_class, args.eval_steps)
    base = evaluator(base_adapter)
    print(f"base: forget {base['forget']:.3f}/{base['forget_svm']:.3f}  retain {base['retain']:.3f}/{base['retain_svm']:.3f} "
          "(CNN/SVM)", flush=True)
    test = load_digits_split("test")
    args.fid = has("fastunlearn.eval.fid")
    args.mia = has("fastunlearn.eval.mia")
    if args.fid:
        from fastunlearn.eval.fid import fid_kid

        keep = test.labels != FORGET
        args.real_retain = test.images[keep][:64] if args.smoke else test.images[keep]
        labels = torch.tensor(list(sets.retain_classes)).repeat_interleave(args.fid_per_class)
        fake = base_adapter.generate(labels.numel(), labels, steps=args.eval_steps, generator=torch.Generator().manual_seed(99))
        res = fid_kid(args.real_retain, fake, judge, kid_subsets=20)
        base.update(base_fid=res["fid"], base_kid=res["kid_mean"], base_kid_std=res["kid_std"])
    if args.mia:
        from fastunlearn.eval.mia import membership_auc

        args.members = (sets.forget_images, sets.forget_labels)  # labelled: conditioned on their own class
        held = test.labels == FORGET
        args.non_members = (test.images[held], test.labels[held])
        if args.smoke:  # the code path, not the figure: 8 members and 8 non-members
            args.members = tuple(x[:8] for x in args.members)
            args.non_members = tuple(x[:8] for x in args.non_members)
        base["base_mia_auc"] = membership_auc(base_adapter, args.members, args.non_members,
                                              generator=torch.Generator().manual_seed(7))["auc"]
    rows = []
    for label, name, options in METHODS:
        if label in wanted:
            rows.append(run_method(label, name, options, args, judge, evaluator, base, sets, Path(args.work)))
            print(rows[-1], flush=True)
    if not (args.smoke or args.no_write):
        write(rows, base, args, env)
    return rows


if __name__ == "__main__":
    main()
