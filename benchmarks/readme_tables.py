"""Regenerate the README's performance tables from the committed results (never typed by hand).

    python benchmarks/readme_tables.py

For each results CSV it keeps the latest run (same commit and device) and writes a markdown table between
the ``<!-- NAME-table:start -->`` / ``<!-- NAME-table:end -->`` markers of README.md.
"""
from __future__ import annotations

import csv
import re
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def _latest_runs(rows: list[dict]) -> list[dict]:
    """Rows of the most recent run per device (a run = one date prefix + commit)."""
    by_device: dict[str, list[dict]] = {}
    for row in rows:
        by_device.setdefault(row["device"], []).append(row)
    keep = []
    for dev_rows in by_device.values():
        last = max(dev_rows, key=lambda r: r["date"])
        run_key = (last["commit"], last["date"][:13])  # same commit, same hour
        keep += [r for r in dev_rows if (r["commit"], r["date"][:13]) == run_key]
    return keep


def _latest_commit_rows(rows: list[dict], key: tuple[str, ...], group_by: tuple[str, ...] = ("model",)) -> list[dict]:
    """Per device and ``group_by`` value (the model), the rows of the commit of that group's newest row (so
    ``--models digits`` and ``--models cifar10`` run separately, even across a commit, fill one table), the newest
    row per ``key``."""
    keep: dict[tuple, dict] = {}
    groups = {(r["device"],) + tuple(r[k] for k in group_by) for r in rows}
    for g in groups:
        group = sorted((r for r in rows if (r["device"],) + tuple(r[k] for k in group_by) == g),
                       key=lambda r: r["date"])
        commit = group[-1]["commit"]
        for r in group:
            if r["commit"] == commit:
                keep[(g[0],) + tuple(r[k] for k in key)] = r
    order = {"digits": 0, "cifar10": 1, "sd": 2}
    return sorted(keep.values(), key=lambda r: (r["device"], order.get(r["model"], 9), int(r["batch"])))


def _latest_csv_rows(name: str, key: tuple[str, ...], group_by: tuple[str, ...] = ("model",)) -> list[dict]:
    """:func:`_latest_commit_rows` of ``results/NAME.csv`` (no rows when it does not exist)."""
    path = RESULTS / f"{name}.csv"
    if not path.exists():
        return []
    with open(path) as fh:
        return _latest_commit_rows(list(csv.DictReader(fh)), key, group_by)


def _human(numel: str) -> str:
    n = int(numel)
    return f"{n / 2**20:g}M" if n >= 2**20 else str(n)


def ops_table() -> str:
    path = RESULTS / "ops.csv"
    if not path.exists():
        return "_not yet measured_"
    with open(path) as fh:
        rows = _latest_runs(list(csv.DictReader(fh)))
    lines = []
    for device in sorted({r["device"] for r in rows}):
        sample = next(r for r in rows if r["device"] == device)
        lines += [f"**{device}** — torch {sample['torch']}, commit {sample['commit']}, {sample['date'][:10]}", "",
                  "| op | backend | vs | elements | dtype | eager ms | fused ms | speed-up | GB/s | % copy BW |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in (r for r in rows if r["device"] == device):
            lines.append(f"| {r['op']} | {r['backend']} | {r['baseline']} | {_human(r['numel'])} | {r['dtype']} | "
                         f"{r['eager_ms']} | {r['median_ms']} | **{r['speedup']}×** | {r['GB_s']} | {r['pct_copy_bw'] or '–'} |")
        lines.append("")
    return "\n".join(lines).rstrip()


def methods_table() -> str:
    """The method comparison written by bench_methods.py (its own markdown, without the title line)."""
    path = RESULTS / "methods.md"
    if not path.exists():
        return "_not yet measured_"
    lines = path.read_text().strip().splitlines()
    return "\n".join(lines[1:] if lines and lines[0].startswith("#") else lines).strip()


def step_table(name: str = "step") -> str:
    """The EraseDiff step benchmark (bench_step.py; ``fastpath``: its ``--ablation``): the latest commit's
    rows per device."""
    rows = _latest_csv_rows(name, ("model", "impl", "batch"))
    if not rows:
        return "_not yet measured_"
    columns = [c for c in rows[0] if c not in ("date", "torch", "commit", "device")]
    lines = []
    for device in sorted({r["device"] for r in rows}):
        sample = next(r for r in rows if r["device"] == device)
        commits = ", ".join(sorted({r["commit"] for r in rows if r["device"] == device}))
        lines += [f"**{device}** — torch {sample['torch']}, commit {commits}, {sample['date'][:10]}", "",
                  "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        if name == "fastpath":
            lines[-2] = lines[-2].replace("speedup_vs_ref", "default ÷ variant")
        lines += ["| " + " | ".join(str(r[c]) for c in columns) + " |" for r in rows if r["device"] == device]
        lines.append("")
    return "\n".join(lines).rstrip()


def forgetting_table() -> str:
    """bench_forgetting.py: forget/retain accuracy of every implementation after the same outer steps, judged by
    both digits judges (newest run): the mean over seeds, with the per-seed range."""
    path = RESULTS / "forgetting.csv"
    if not path.exists():
        return "_not yet measured_"
    with open(path) as fh:
        rows = _latest_runs(list(csv.DictReader(fh)))
    seeds = sorted({r["seed"] for r in rows if r["seed"] not in ("mean", "-")})
    before = next(r for r in rows if r["impl"] == "before")
    impls = sorted({r["impl"] for r in rows if r["seed"] == "mean"},
                   key=lambda i: (not i.startswith("reference"), i != "reference-default", i != "fastunlearn", i))

    def cell(mean: dict, key: str) -> str:
        vals = [float(r[key]) for r in rows if r["seed"] in seeds and (r["impl"], r["steps"]) == (mean["impl"], mean["steps"])]
        spread = f" ({min(vals):.1%}–{max(vals):.1%})" if len(vals) > 1 else ""
        return f"{float(mean[key]):.1%}{spread}"

    lines = [f"**{before['device']}** — torch {before['torch']}, commit {before['commit']}, {before['date'][:10]}; "
             f"{len(seeds)} seeds, {before['per_class']} generations per class, DDIM-{before['eval_steps']}; "
             f"before unlearning: forget acc {float(before['forget_cnn']):.1%} (CNN) / {float(before['forget_svm']):.1%} "
             f"(SVM), retain acc {float(before['retain_cnn']):.1%} (CNN) / {float(before['retain_svm']):.1%} (SVM)", "",
             "| outer steps | impl | forget acc, CNN | retain acc, CNN | forget acc, SVM | retain acc, SVM | train s |",
             "|---|---|---|---|---|---|---|"]
    for steps in sorted({int(r["steps"]) for r in rows if r["seed"] == "mean"}):
        for impl in impls:
            mean = next(r for r in rows if (r["seed"], r["impl"], r["steps"]) == ("mean", impl, str(steps)))
            lines.append(f"| {steps} | {impl} | " + " | ".join(cell(mean, k) for k in
                         ("forget_cnn", "retain_cnn", "forget_svm", "retain_svm")) + f" | {mean['train_s']} |")
    return "\n".join(lines)


def t2i_table() -> str:
    """bench_t2i.py: ESD and AdvUnlearn per iteration (the library's amortised over its run) vs the authors' loops,
    UNet calls per iteration, and ESD's time to erase the forget prompt on digits-t2i; per device, method and
    model the latest commit's rows (``--method esd`` and ``--method advunlearn`` run separately fill one table)."""
    rows = _latest_csv_rows("t2i", ("method", "setting", "model", "impl", "batch"), group_by=("method", "model"))
    if not rows:
        return "_not yet measured_"
    models, method_order = {"digits": 0, "sd": 1}, {"esd": 0, "advunlearn": 1}
    rows.sort(key=lambda r: (r["device"], models.get(r["model"], 9), method_order.get(r["method"], 9), r["setting"],
                             r["impl"] != "reference", r["impl"]))
    lines = []
    if any(r["method"] == "advunlearn" for r in rows):
        lines += [textwrap.fill("AdvUnlearn rows: the library's iteration (its in-loop soft-prompt attack on its banks + one fused "
                  "training pass; banks built once and amortised over the run) vs `benchmarks/reference_advunlearn.py` "
                  "(the authors' iteration: the frozen model's prefix DDIM before every attack step and the training "
                  "step, UNet weight gradients in every backward), both timed on iterations that attack; `authors` = "
                  "their defaults (30 attack steps, k 1, retain batch 5, batch 1; 1,000 iterations), "
                  "`digits-defaults` = the measured defaults `fastunlearn run` uses on digits-t2i (10 attack steps; "
                  "200 iterations). UNet calls per iteration are counted by hooks on every UNet (the library's bank "
                  "calls amortised over the run; composed rows: the counting formula); the `note` says which CFG the "
                  "reference runs. On a CPU the `sd` rows are composed from components timed on one row (two for a "
                  "guided call) by each side's counted formula (`note`); `benchmarks/bench_t2i.py`'s docstring gives "
                  "the compositions.", width=115, break_on_hyphens=False), ""]
    for device in sorted({r["device"] for r in rows}):
        sample = next(r for r in rows if r["device"] == device)
        commits = ", ".join(sorted({r["commit"] for r in rows if r["device"] == device}))
        lines += [f"**{device}** — torch {sample['torch']}, commit {commits}, {sample['date'][:10]}", "",
                  "| model | method | setting | weights | impl | precision | batch | per iteration ms | "
                  "bank s (amortised over) | speed-up | UNet calls / iteration (× fewer) | "
                  "time to erase s (iterations) | note |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in (r for r in rows if r["device"] == device):
            bank = f"{r['bank_s']} ({r['amortised_over']})" if r["bank_s"] else "–"
            erase = f"{r['time_to_erase_s']} ({r['erase_iters']})" if r["time_to_erase_s"] else \
                (f"not within the cap (share {float(r['erase_share']):.1%})" if r["erase_share"] else "–")
            calls = "–" if not r.get("unet_calls_per_iter") else (
                r["unet_calls_per_iter"] if r["impl"] == "reference"
                else f"{r['unet_calls_per_iter']} (**{r['unet_calls_ratio']}×**)")
            lines.append(f"| {r['model']} | {r['method']} | {r['setting']} | {r['weights']} | {r['impl']} | "
                         f"{r['precision']} | {r['batch']} | {r['per_iter_ms']} | {bank} | **{r['speedup']}×** | "
                         f"{calls} | {erase} | {r['note']} |")
        lines.append("")
    return "\n".join(lines).rstrip()


def i2i_table() -> str:
    """bench_i2i.py: the library's image-to-image unlearning step vs the authors' step structure at equal batch, with
    the counted encodes and the teacher's and optimizer's sizes; per device and model the latest commit's rows."""
    rows = _latest_csv_rows("i2i", ("model", "impl", "batch"))
    if not rows:
        return "_not yet measured_"
    order = {"digits-inpaint": 0, "digits-mae": 1}
    rows.sort(key=lambda r: (r["device"], order.get(r["model"], 9), r["impl"] != "reference", r["impl"]))
    lines = []
    for device in sorted({r["device"] for r in rows}):
        sample = next(r for r in rows if r["device"] == device)
        commits = ", ".join(sorted({r["commit"] for r in rows if r["device"] == device}))
        lines += [f"**{device}** — torch {sample['torch']}, commit {commits}, {sample['date'][:10]}", "",
                  "| model | weights | params M (encoder) | impl | structure | precision | rows per side | "
                  "step ms (p20–p80) | speed-up | encodes / step (rows) | teacher params M | optimizer params M |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in (r for r in rows if r["device"] == device):
            lines.append(f"| {r['model']} | {r['weights']} | {r['params_M']} ({r['encoder_params_M']}) | {r['impl']} | "
                         f"{r['structure']} | {r['precision']} | {r['batch']} | {r['step_ms']} "
                         f"({r['p20_ms']}–{r['p80_ms']}) | **{r['speedup']}×** | {r['encodes_per_step']} "
                         f"({r['encoder_rows_per_step']}) | {r['teacher_params_M']} | {r['optimizer_params_M']} |")
        lines.append("")
    return "\n".join(lines).rstrip()


def i2i_methods_table() -> str:
    """bench_i2i_methods.py: ``i2i`` and the paper's baselines on each image-to-image model and retain set, the run's
    own evaluation before → after; per device and (model, retain set, method) the latest row (each row is one whole
    run; the header lists the commits)."""
    rows = _latest_csv_rows("i2i_methods", ("model", "retain", "method"), group_by=("model", "retain", "method"))
    if not rows:
        return "_not yet measured_"
    models = {"digits-inpaint": 0, "digits-mae": 1}
    methods = {"i2i": 0, "max_loss": 1, "noisy_label": 2, "retain_label": 3, "random_encoder": 4}
    rows.sort(key=lambda r: (r["device"], models.get(r["model"], 9), r["retain"] != "real",
                             methods.get(r["method"], 9)))

    def pct(v: str) -> str:
        return f"{100 * float(v):.1f}"

    lines = []
    for device in sorted({r["device"] for r in rows}):
        dev = [r for r in rows if r["device"] == device]
        commits = ", ".join(sorted({r["commit"] for r in dev}))
        lines += [f"**{device}** — torch {dev[0]['torch']}, commit {commits}, {dev[0]['date'][:10]}", "",
                  "| model | retain set | method | steps · lr · α | forget-class completions judged their class, % "
                  "(CNN · SVM) | retained classes, % (CNN · SVM) | cosine forget · retain | FID forget · retain | "
                  "bar | run s |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in dev:
            method = f"**`{r['method']}`**" if r["method"] == "i2i" else f"`{r['method']}`"
            retain = "real (classes 5–9)" if r["retain"] == "real" else "proxy (`proxy:mnist`)"
            lines.append(f"| {r['model']} | {retain} | {method} | {r['steps']} · {float(r['lr']):g} · {r['alpha']} | "
                         f"{pct(r['forget_acc_before'])} → **{pct(r['forget_acc'])}** · {pct(r['forget_acc_svm'])} | "
                         f"{pct(r['retain_acc_before'])} → **{pct(r['retain_acc'])}** · {pct(r['retain_acc_svm'])} | "
                         f"{float(r['cos_forget']):.3f} · {float(r['cos_retain']):.3f} | "
                         f"{r['fid_forget']} · {r['fid_retain']} | {'✓' if r['bar'] == 'True' else '✗'} | "
                         f"{float(r['wall_s']):.0f} |")
        lines.append("")
    return "\n".join(lines).rstrip()


def robustness_table() -> str:
    """bench_robustness.py: per method (the base model, each eraser, AdvUnlearn's encoder plugged into the base), the
    mean ± half-range over its seeds of the run's figures and every attack's success rate; the latest rows of each
    (method, seed) on the device."""
    path = RESULTS / "robustness.csv"
    if not path.exists():
        return "_not yet measured_"
    with open(path) as fh:
        every = list(csv.DictReader(fh))
    rows = []
    for group in {(r["device"], r["method"]) for r in every}:  # per device and method: its newest run's seeds
        mine = [r for r in every if (r["device"], r["method"]) == group]
        newest = max(mine, key=lambda r: r["date"])
        run = [r for r in mine if (r["commit"], r["date"][:13]) == (newest["commit"], newest["date"][:13])]
        rows += list({r["seed"]: r for r in sorted(run, key=lambda r: r["date"])}.values())
    if not rows:
        return "_not yet measured_"
    order = {"base": 0, "esd": 1, "erasediff": 2, "salun": 3, "advunlearn": 4, "advunlearn+plug": 5}

    def cell(mine: list[dict], key: str, pct: bool = True, n_key: str | None = None) -> str:
        vals = [float(r[key]) for r in mine if r.get(key) not in (None, "")]
        if not vals:
            return "–"
        mean, half = sum(vals) / len(vals), (max(vals) - min(vals)) / 2
        text = f"{100 * mean:.1f} %" if pct else f"{mean:.1f}"
        if len(vals) > 1:
            text += f" ± {100 * half:.1f}" if pct else f" ± {half:.1f}"
        if n_key and mine[0].get(n_key):
            text += f" (n {mine[0][n_key]})"
        return text

    lines = []
    for device in sorted({r["device"] for r in rows}):
        dev = [r for r in rows if r["device"] == device]
        sample = dev[0]
        commits = ", ".join(sorted({r["commit"] for r in dev}))
        lines += [f"**{device}** — torch {sample['torch']}, commit {commits}, {sample['date'][:10]}", "",
                  "| model | seeds | train s | forget prompt judged zero | retain | FID (retained classes) | "
                  "run's paraphrases judged zero | ASR unlearndiffatk | ASR paraphrase (tuning list) | "
                  "ASR paraphrase (held-out list) | ASR soft-prompt |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for method in sorted({r["method"] for r in dev}, key=lambda m: order.get(m, 9)):
            mine = sorted((r for r in dev if r["method"] == method), key=lambda r: int(r["seed"]))
            name = {"base": "base (`zoo:digits-t2i`)", "advunlearn+plug": "advunlearn's `text_encoder/` in the "
                    "base pipeline"}.get(method, f"`{method}`")
            lines.append(f"| {name} | {', '.join(r['seed'] for r in mine)} | {cell(mine, 'train_s', pct=False)} | "
                         f"{cell(mine, 'forget_acc')} | {cell(mine, 'retain_acc')} | {cell(mine, 'fid', pct=False)} | "
                         f"{cell(mine, 'paraphrase_share')} | {cell(mine, 'asr_unlearndiffatk', n_key='unlearndiffatk_n')} | "
                         f"{cell(mine, 'asr_paraphrase', n_key='paraphrase_n')} | "
                         f"{cell(mine, 'asr_paraphrase_heldout', n_key='paraphrase_heldout_n')} | "
                         f"{cell(mine, 'asr_soft_prompt', n_key='soft_prompt_n')} |")
        lines.append("")
    return "\n".join(lines).rstrip()


TABLES = {"ops": ops_table, "methods": methods_table, "step": step_table,
          "fastpath": lambda: step_table("fastpath"), "forgetting": forgetting_table, "t2i": t2i_table,
          "robustness": robustness_table, "i2i": i2i_table, "i2i-methods": i2i_methods_table}


def main() -> int:
    readme = ROOT / "README.md"
    text = readme.read_text()
    for name, make in TABLES.items():
        pattern = re.compile(rf"(<!-- {name}-table:start -->\n).*?(<!-- {name}-table:end -->)", re.S)
        if not pattern.search(text):
            print(f"README.md has no {name}-table markers", file=sys.stderr)
            return 1
        text = pattern.sub(lambda m: m.group(1) + make() + "\n" + m.group(2), text)
    readme.write_text(text)
    print("README.md tables regenerated from benchmarks/results/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
