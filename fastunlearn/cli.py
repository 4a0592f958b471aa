"""The ``fastunlearn`` command: ``fastunlearn run | eval | verify | generate | attack | zoo | doctor``.

A user mistake (a :class:`~fastunlearn.errors.UserInputError`) ends with one line on stderr and exit code 2,
never a traceback.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NoReturn

from fastunlearn.errors import FastUnlearnError, UserInputError


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line and exit code 2 like every other user mistake."""

    def error(self, message: str) -> NoReturn:
        print(f"fastunlearn: error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        raise SystemExit(2)


#: CLI flag → UnlearnConfig key, for flags whose value is taken as given.
_RUN_FLAGS = {
    "model": "model", "forget": "forget", "retain": "retain", "method": "method", "steps": "steps",
    "batch_size": "batch_size", "lr": "lr", "seed": "seed", "out": "out_dir", "checkpoint_every": "checkpoint_every",
    "device": "device", "precision": "precision", "eval_per_class": "eval_per_class", "eval_steps": "eval_steps",
    "scope": "scope", "threads": "threads", "attention": "attention", "max_skipped_steps": "max_skipped_steps",
    "compile": "compile", "channels_last": "channels_last", "fused_optimizer": "fused_optimizer",
    "sharding": "sharding", "keep_checkpoints": "keep_checkpoints", "guidance": "guidance",
    "images_per_prompt": "images_per_prompt", "clip": "clip", "mask": "mask",
}
#: Shortcuts for the most used EraseDiff options (equal to --option KEY=VALUE).
_OPTION_FLAGS = ("target", "lambda_rule", "eta")


def _run_config(args: argparse.Namespace):
    """Defaults < the resumed run's config.yaml < --config FILE < explicit flags."""
    from fastunlearn.api import _partial_dir
    from fastunlearn.config import UnlearnConfig, parse_option_pairs

    cfg = UnlearnConfig()
    if args.resume:
        out = Path(args.out if args.out is not None else cfg.out_dir).expanduser().resolve()
        saved = _partial_dir(out) / "config.yaml"
        if not saved.is_file():
            raise UserInputError(f"nothing to resume for {out}: no unfinished run there (no {saved})")
        cfg = UnlearnConfig.from_yaml(saved)
    if args.config is not None:
        cfg = UnlearnConfig.from_yaml(args.config, base=cfg)
    values = {key: getattr(args, flag) for flag, key in _RUN_FLAGS.items() if getattr(args, flag) is not None}
    for key in ("forget", "retain"):  # repeatable: one selector stays a string (config.yaml reads as before)
        if isinstance(values.get(key), list) and len(values[key]) == 1:
            values[key] = values[key][0]
    for flag in ("unconditional", "resume", "cuda_graphs", "grad_checkpointing", "trust_pickle", "nudity"):
        if getattr(args, flag):
            values[flag] = True
    if args.no_eval:
        values["evaluate"] = False
    if args.quiet:
        values["progress"] = False
    options = {k: getattr(args, k) for k in _OPTION_FLAGS if getattr(args, k) is not None}
    options.update(parse_option_pairs(args.option))
    if options:
        values["options"] = options
    return UnlearnConfig.from_dict(values, base=cfg)


def _run(args: argparse.Namespace) -> int:
    from fastunlearn.api import run_config

    from fastunlearn.engine.distributed import is_main_process

    cfg = _run_config(args)
    result = run_config(cfg)
    if not is_main_process():  # under torchrun the job's summary is printed once, by process 0
        return 0
    train = result.train
    print(f"\nunlearned {result.config.forget} from {result.config.model} with {result.config.method}: "
          f"{train['steps']} steps in {train['train_wall_s']:.1f}s ({train['steps_per_s']:.2f} steps/s), "
          f"job {train['job_wall_s']:.1f}s")
    print(result.table())
    print(f"wrote {result.out_dir}")
    return 0




def _zoo(args: argparse.Namespace) -> int:
    """``fastunlearn zoo list`` / ``fastunlearn zoo path NAME`` (the loadable directory; digits-t2i's is
    assembled in the cache on first use)."""
    from fastunlearn import zoo

    if args.zoo_command == "path":
        print(zoo.resolve(args.name))
        return 0
    for name, desc in zoo.DESCRIPTIONS.items():
        present = name in zoo.available()
        print(f"zoo:{name:<18} {desc}{'' if present else '  [not trained in this checkout]'}")
    return 0


def _doctor(args: argparse.Namespace) -> int:
    from fastunlearn import doctor

    return doctor.main(as_json=args.json)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fastunlearn", description="Make a trained generative model forget data.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    p_run = sub.add_parser(
        "run", help="unlearn (default: forget digit 0 from the shipped digits DDPM with EraseDiff)",
        description="Unlearn data from a model and write the result (model, metrics, sample grids) to --out.",
    )
    p_run.add_argument("--model", help="zoo:NAME, a diffusers directory or a hub id (default zoo:digits-ddpm)")
    p_run.add_argument("--forget", action="append",
                       help="class:C[,C], index:I[,I] or an image folder (DDPMs; default class:0); prompt:TEXT[;TEXT], "
                       "prompts:FILE or images:DIR (text-to-image models); repeatable")
    p_run.add_argument("--retain", action="append",
                       help="selector of the data to keep (default: the rest of the train split; on a text-to-image "
                       "model, its other concepts); repeatable")
    p_run.add_argument("--method", help="unlearning method (default erasediff)")
    p_run.add_argument("--steps", type=int, help="optimisation steps (default: the method's)")
    p_run.add_argument("--batch-size", type=int,
                       help="forget and retain rows per step, the global batch under torchrun (default: the method's)")
    p_run.add_argument("--lr", type=float, help="learning rate (default: the method's)")
    p_run.add_argument("--seed", type=int, help="seed of the batches and noise (default 0)")
    p_run.add_argument("--out", help="output directory (default ./fastunlearn-out)")
    p_run.add_argument("--config", help="YAML file of settings (flags given here override it)")
    p_run.add_argument("--checkpoint-every", type=int, metavar="N", help="write a checkpoint every N steps")
    p_run.add_argument("--keep-checkpoints", type=int, metavar="N", help="keep the newest N checkpoints (default 2)")
    p_run.add_argument("--resume", action="store_true", help="continue the run of --out from its latest checkpoint")
    p_run.add_argument("--no-eval", action="store_true", help="skip the before/after evaluation")
    p_run.add_argument("--unconditional", action="store_true",
                       help="forget the class from the model's unconditional generations")
    p_run.add_argument("--device", help="auto (default), cpu or cuda[:N]")
    fast = p_run.add_argument_group("fast path", "each defaults to what was measured fastest on the device (README, Fast path)")
    fast.add_argument("--precision", help="auto (default: bf16 autocast on CUDA and on CPUs with native bf16, else fp32), fp32 or bf16")
    fast.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                      help="torch.compile the UNet (default: on for CUDA, off on CPU)")
    fast.add_argument("--attention", help="auto (default: xformers when importable on CUDA, else sdpa), sdpa, xformers, eager")
    fast.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                      help="channels-last memory format (default: on for CUDA, off on CPU)")
    fast.add_argument("--fused-optimizer", action=argparse.BooleanOptionalAction, default=None,
                      help="fused Adam kernel (default: on where torch has one)")
    fast.add_argument("--cuda-graphs", action="store_true", help="capture the compiled UNet in CUDA graphs (CUDA only)")
    p_run.add_argument("--grad-checkpointing", action="store_true", help="recompute activations in backward to save memory")
    p_run.add_argument("--sharding", help="under torchrun: ddp (default; gradients all-reduced) or fsdp (FSDP2)")
    p_run.add_argument("--max-skipped-steps", type=int, metavar="N",
                       help="abort after N consecutive steps skipped for a non-finite gradient (default 10)")
    p_run.add_argument("--trust-pickle", action="store_true",
                       help="allow pickle weight files (.bin/.pt/.ckpt): they can run code; only for files you trust")
    p_run.add_argument("--threads", type=int, help="CPU threads (default: 1 for small models on CPU)")
    p_run.add_argument("--scope", help="parameters to train: all or attention; on text-to-image models also xattn "
                       "(ESD-x), xattn-kv (ESD-x-strict), noxattn (ESD-u), text-encoder (its layers and final norm), "
                       "text-encoder:K (its first K layers) (default: the method's, else all)")
    p_run.add_argument("--guidance", type=float, help="text-to-image: classifier-free guidance of generation and "
                       "evaluation (default: the model's)")
    p_run.add_argument("--clip", metavar="MODEL", help="text-to-image: a CLIP model (directory or hub id) whose CLIP "
                       "score of the generations is measured before and after")
    p_run.add_argument("--nudity", action="store_true", help="text-to-image: measure the nudity rate of the forget "
                       "prompts' generations (NudeNet: pip install fastunlearn[nudity])")
    p_run.add_argument("--images-per-prompt", type=int, metavar="N",
                       help="text-to-image: images the frozen model generates per prompt for methods that train on "
                       "images (default 64)")
    p_run.add_argument("--mask", metavar="KIND:K", help="image-to-image: the mask of training and evaluation, "
                       "center:K (a K×K hole in the middle is completed) or outpaint:K (the centre K×K is kept, the "
                       "rest completed) (default: the model's own, center:8 for the digits models)")
    p_run.add_argument("--eval-per-class", type=int, help="generations per class in each evaluation (default 100; "
                       "image-to-image: held-out test images completed per class, at most the test split holds)")
    p_run.add_argument("--eval-steps", type=int, help="DDIM steps of the evaluation sampler (default 10)")
    p_run.add_argument("--target", help="EraseDiff forget target: pseudo_label, uniform, or auto (default: "
                       "pseudo_label on a class-conditional model, uniform on an unconditional one)")
    p_run.add_argument("--lambda-rule", help="EraseDiff λ rule: bome (default), cosine or fixed")
    p_run.add_argument("--eta", type=float, help="η of the λ rule (default: the rule's own, 0.5 under bome and cosine, "
                       "0.1 = λ under fixed)")
    p_run.add_argument("--option", "-o", action="append", metavar="KEY=VALUE", help="a method option (repeatable)")
    p_run.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p_run.set_defaults(func=_run)
    p_doc = sub.add_parser("doctor", help="versions, devices, the C++/CUDA extension and which kernel backend each op uses")
    p_doc.add_argument("--json", action="store_true", help="print the report as JSON")
    p_doc.set_defaults(func=_doctor)
    p_zoo = sub.add_parser("zoo", help="the models shipped with fastunlearn: list them, or print one's directory")
    zoo_sub = p_zoo.add_subparsers(dest="zoo_command", metavar="list|path", parser_class=_Parser, required=True)
    zoo_sub.add_parser("list", help="the shipped models, one line each").set_defaults(func=_zoo)
    p_path = zoo_sub.add_parser("path", help="the loadable directory of a shipped model")
    p_path.add_argument("name", help="NAME or zoo:NAME (e.g. digits-t2i)")
    p_path.set_defaults(func=_zoo)
    from fastunlearn.cli_eval import add_subcommands

    add_subcommands(sub)
    from fastunlearn.cli_generate import add_subcommand as add_generate

    add_generate(sub)
    from fastunlearn.cli_attack import add_subcommand as add_attack

    add_attack(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except UserInputError as exc:
        message = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        print(f"fastunlearn: error: {message}", file=sys.stderr)
        return 2
    except FastUnlearnError as exc:  # not the input's fault but actionable (out of memory, non-finite training)
        message = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        print(f"fastunlearn: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
