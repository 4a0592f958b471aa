"""``fastunlearn.run``: one unlearning job end to end — the one place the layers are wired together.

model (models/) → forget/retain sets (data/) → method (methods/) → loop (engine/) → before/after metrics
(eval/) → ``out_dir/``. Every user mistake is found before anything is written. The job writes into
``.<out_dir>.partial`` next to ``out_dir`` (which also holds the checkpoints ``resume`` continues from) and
moves it into place only when complete, so ``out_dir`` is never a half-written result.

Under ``torchrun`` (:mod:`fastunlearn.engine.distributed`) every process loads the model and data and
trains its share of each global batch; process 0 alone evaluates and writes the partial dir, the
checkpoints and the output, while the others wait at barriers, so ``out_dir`` is in place when any returns.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fastunlearn.config import UnlearnConfig
from fastunlearn.errors import UserInputError
from fastunlearn.eval.manifest import jsonable as _jsonable

#: Files that mark a directory as a previous fastunlearn output (safe to replace).
_OUTPUT_MARKERS = ("metrics.json", "config.yaml")


@dataclass
class UnlearnResult:
    """What a run produced: the unlearned adapter, before/after metrics and the written paths."""

    adapter: Any
    config: UnlearnConfig
    out_dir: Path
    metrics_before: dict[str, Any] | None
    metrics_after: dict[str, Any] | None
    train: dict[str, Any]
    paths: dict[str, Path] = field(default_factory=dict)

    def table(self) -> str:
        """A before/after table of the headline metrics (what the CLI prints)."""
        if self.metrics_before is None or self.metrics_after is None:
            return "evaluation skipped (--no-eval)"
        from fastunlearn.eval.evaluate import format_table

        return format_table(self.metrics_before, self.metrics_after)


def _partial_dir(out_dir: Path) -> Path:
    return out_dir.parent / f".{out_dir.name}.partial"


def _judge(adapter: Any):
    """The shipped digits classifier (the first judge), when the model draws digits (1×16×16, ≤ 10 classes);
    else None. The run evaluates with the whole panel: :func:`fastunlearn.eval.evaluate.digits_judges`."""
    from fastunlearn.eval.evaluate import digits_judges

    panel = digits_judges(adapter, second=False)
    return panel[""] if panel is not None else None


def _judges(adapter: Any):
    """The run's judge panel ``{"": CNN, "svm": RBF SVM}`` for a digits model; else None."""
    from fastunlearn.eval.evaluate import digits_judges

    return digits_judges(adapter)


#: The classes of the held-out digits an image-to-image evaluation completes (the retained ones: all but the forgotten).
_DIGIT_CLASSES = tuple(range(10))


def evaluate(adapter: Any, cfg: UnlearnConfig, forget_classes: list[int], judge: Any, sets: Any = None,
             before: dict[str, Any] | None = None) -> dict[str, Any]:
    """The run's before/after evaluation: :func:`fastunlearn.eval.evaluate.evaluate` (DDPMs),
    :func:`fastunlearn.eval.t2i.evaluate_t2i` (text-to-image; ``before``: the "before" result, whose
    prompt → class reading the "after" evaluation reuses) or :func:`fastunlearn.eval.i2i.evaluate_i2i`
    (image-to-image: completions of held-out test digits of the forgotten classes and of every other class)."""
    if getattr(adapter, "family", "ddpm") == "i2i":
        from fastunlearn.eval.i2i import evaluate_i2i

        retained = [c for c in _DIGIT_CLASSES if c not in set(forget_classes)]
        return evaluate_i2i(adapter, cfg, forget_classes, retained, judge)
    if getattr(adapter, "family", "ddpm") == "t2i":
        from fastunlearn.eval.t2i import evaluate_t2i

        # A prompt's class: the model's recorded concepts (digits-t2i), else the class the judge saw most in the
        # generations *before* unlearning (the after evaluation is scored against the same classes).
        classes = sets.prompts.concept_classes or (before["detail"]["concept_classes"] if before else None)
        return evaluate_t2i(adapter, cfg, sets.forget_prompts, sets.retain_prompts, judge,
                            concept_classes=classes, paraphrases=sets.paraphrases, clip=cfg.clip,
                            nudity=cfg.nudity)
    from fastunlearn.eval.evaluate import evaluate as _evaluate

    return _evaluate(adapter, cfg, forget_classes, judge, sets)


def _evaluates(cfg: UnlearnConfig, judge: Any) -> bool:
    """Whether the run measures before and after: a judge for the model's images, or (text-to-image) a CLIP
    model / the nudity detector asked for."""
    return judge is not None or (cfg.evaluate and bool(getattr(cfg, "clip", None) or getattr(cfg, "nudity", False)))


def _original_weights(cfg: UnlearnConfig, adapter: Any) -> Path | bytes:
    """What the manifest hashes as "before": the model's files when it came from the zoo or a directory,
    else (a module or a hub download) the serialised weights as loaded."""
    from fastunlearn import zoo

    if zoo.is_zoo_ref(cfg.model):
        return zoo.resolve(cfg.model)
    if isinstance(cfg.model, (str, Path)) and Path(cfg.model).is_dir():
        return Path(cfg.model)
    from safetensors.torch import save as save_safetensors

    return save_safetensors({k: v.detach().cpu().contiguous() for k, v in adapter.network.state_dict().items()})


def _prepare(cfg: UnlearnConfig, dist: Any = None):
    """Load and check everything (model, data, method) — raises before any file is written.

    ``dist``: the started :class:`~fastunlearn.engine.distributed.Distributed` of a multi-process run (its
    device, its gradient reduction); None for one process.
    """
    from fastunlearn.engine import resolve_device, resolve_fast_path
    from fastunlearn.models import family_of, load_model
    from fastunlearn.ops import backends

    device = dist.device if dist is not None and dist.device is not None else resolve_device(cfg.device)
    # FASTUNLEARN_BACKEND is read by the ops on every call: check it here, before the model loads, rather
    # than at the first step with the output half-made.
    if backends.requested_backend() != "auto":
        backends.select("dual_noise_loss", device, torch.float32)
    adapter = load_model(cfg.model, trust_pickle=cfg.trust_pickle)
    fast = resolve_fast_path(cfg, device, adapter)
    if family_of(adapter) == "i2i":
        return _prepare_i2i(cfg, dist, adapter, device, fast)
    if cfg.mask is not None:
        kind = "a text-to-image" if family_of(adapter) == "t2i" else "a pixel DDPM"
        raise UserInputError(f"mask {cfg.mask!r} is for image-to-image models (an inpainter or a masked autoencoder); "
                             f"{cfg.model} is {kind} model: drop --mask")
    if family_of(adapter) == "t2i":
        return _prepare_t2i(cfg, dist, adapter, device, fast)
    return _prepare_ddpm(cfg, dist, adapter, device, fast)


def _method(cfg: UnlearnConfig, dist: Any):
    from fastunlearn.methods import base as methods

    method_cls = methods.get(cfg.method)
    options = methods.parse_options(cfg.method, cfg.options)
    if dist is not None and dist.sharded:
        why = method_cls.fsdp_unsupported(options) if hasattr(method_cls, "fsdp_unsupported") else "it is not a gradient method"
        if why:
            raise UserInputError(f"method {cfg.method!r} cannot run with sharding 'fsdp': {why}; use --sharding ddp")
    return method_cls, options


def _setup_method(cfg: UnlearnConfig, dist: Any, adapter: Any, method_cls: Any, options: Any, fast: Any,
                  forget_classes: tuple[int, ...], retain_classes: tuple[int, ...]):
    from fastunlearn.methods import base as methods

    method = method_cls()
    method.setup(adapter, methods.MethodConfig(
        lr=float(cfg.lr), options=options, forget_classes=forget_classes, retain_classes=retain_classes,
        unconditional=cfg.unconditional, scope=cfg.scope, fused_optimizer=fast.fused_optimizer,
        grad_sync=dist.gradient_sync() if dist is not None else None,
    ))
    # What setup resolved against the model (EraseDiff's target 'auto'): config.yaml, the checkpoints'
    # fingerprint, metrics.json and the manifest record it.
    cfg.options.update(getattr(method, "resolved_options", dict)())
    adapter.fast_path = fast  # recorded in the manifest
    return method


def _prepare_ddpm(cfg: UnlearnConfig, dist: Any, adapter: Any, device: torch.device, fast: Any):
    from fastunlearn.data.prompts import is_prompt_selector
    from fastunlearn.data.selection import select_forget_retain
    from fastunlearn.engine import SampleSet, prepare_model

    for side, sel in (("forget", cfg.forget), ("retain", cfg.retain)):
        if sel is not None and is_prompt_selector(sel):
            raise UserInputError(f"the {side} selector {sel!r} names prompts, but {cfg.model} is a pixel DDPM with "
                                 "class labels: select by class:C, index:I or an image folder")
    c, h, w = adapter.image_shape
    if cfg.unconditional and adapter.conditional and adapter.null_label is None:
        raise UserInputError("--unconditional needs a model with a null class (or no class embedding at all)")
    sets = select_forget_retain(cfg.forget, cfg.retain, image_size=h, channels=c)
    adapter.check_images(sets.forget_images, "forget images")
    adapter.check_images(sets.retain_images, "retain images")
    adapter.check_labels(sets.forget_labels[sets.forget_labels >= 0], "forget labels")
    adapter.check_labels(sets.retain_labels[sets.retain_labels >= 0], "retain labels")

    def labels_for(labels: torch.Tensor, side: str) -> torch.Tensor:
        # Unlabelled images (a plain folder) are seen through the null class: what the model draws unprompted.
        if adapter.conditional and bool((labels < 0).any()):
            if adapter.null_label is None:
                raise UserInputError(
                    f"the {side} images have no class labels and this conditional model has no null class: "
                    f"put them in sub-folders named by class (e.g. {side}/3/img.png)"
                )
            return torch.where(labels < 0, torch.full_like(labels, adapter.null_label), labels)
        return labels

    forget = SampleSet(sets.forget_images, labels_for(sets.forget_labels, "forget"))
    retain = SampleSet(sets.retain_images, labels_for(sets.retain_labels, "retain"))
    method_cls, options = _method(cfg, dist)
    prepare_model(adapter, device, fast, shard=dist.shard if dist is not None else None)
    method = _setup_method(cfg, dist, adapter, method_cls, options, fast,
                           tuple(sets.forget_classes), tuple(sets.retain_classes))
    judge = _judges(adapter) if cfg.evaluate else None
    if cfg.evaluate and cfg.unconditional and not sets.forget_classes:
        raise UserInputError("--unconditional evaluation needs a labelled forget set (e.g. class:0)")
    return adapter, method, forget, retain, sets, judge


def _i2i_methods() -> list[str]:
    """The registered methods that unlearn an image-to-image model (Li et al.'s ``i2i`` and its baselines)."""
    from fastunlearn.methods import base as methods
    from fastunlearn.methods.i2i import I2IMethod

    return [n for n in methods.available() if issubclass(methods.get(n), I2IMethod)]


def _prepare_i2i(cfg: UnlearnConfig, dist: Any, adapter: Any, device: torch.device, fast: Any):
    """An image-to-image job: the mask (``cfg.mask``, else the model's own) → the forget and retain images
    (digits selectors, folders, ``.npy``; the retain side also ``proxy:mnist``) → an encoder-only method."""
    from fastunlearn.data.prompts import is_prompt_selector
    from fastunlearn.data.selection import select_forget_retain
    from fastunlearn.engine import SampleSet, prepare_model
    from fastunlearn.methods import base as methods
    from fastunlearn.methods.i2i import I2IMethod

    if not issubclass(methods.get(cfg.method), I2IMethod):
        raise UserInputError(f"method {cfg.method!r} does not apply to image-to-image models ({cfg.model} completes "
                             f"masked images, trained at its encoder): use {', '.join(_i2i_methods())} (i2i is Li et "
                             "al.'s method, the others the paper's baselines)")
    if cfg.unconditional:
        raise UserInputError("--unconditional is for class-conditional DDPMs; an image-to-image model forgets the "
                             "classes of the images it completes")
    for side, sel in (("forget", cfg.forget), ("retain", cfg.retain)):
        if sel is not None and is_prompt_selector(sel):
            raise UserInputError(f"the {side} selector {sel!r} names prompts, but {cfg.model} is an image-to-image "
                                 "model: select images by class:C, index:I, an image folder or a .npy file (the "
                                 "retain side also proxy:mnist)")
    if cfg.mask is not None:
        adapter.set_mask(cfg.mask)
    c, h, w = adapter.image_shape
    sets = select_forget_retain(cfg.forget, cfg.retain, image_size=h, channels=c)
    adapter.check_images(sets.forget_images, "forget images")
    adapter.check_images(sets.retain_images, "retain images")
    forget = SampleSet(sets.forget_images, sets.forget_labels)
    retain = SampleSet(sets.retain_images, sets.retain_labels)
    method_cls, options = _method(cfg, dist)
    judge = _judges(adapter) if cfg.evaluate else None
    if judge is not None and not sets.forget_classes:
        raise UserInputError("the image-to-image evaluation completes held-out test digits of the forgotten classes, "
                             "and the forget images carry no class label: put them in sub-folders named by class "
                             "(forget/3/img.png), select them by class:C, or pass --no-eval")
    if cfg.evaluate and judge is None:
        print("note: no judge for this model's images (the digits judges take 1×16×16 digits): the run is not "
              "evaluated", flush=True)
    prepare_model(adapter, device, fast, shard=dist.shard if dist is not None else None)
    method = _setup_method(cfg, dist, adapter, method_cls, options, fast,
                           tuple(sets.forget_classes), tuple(sets.retain_classes))
    return adapter, method, forget, retain, sets, judge


@dataclass
class T2ISets:
    """The text-to-image job's data, in the shape the run's later stages read (``forget_images``, ...)."""

    prompts: Any  #: :class:`fastunlearn.data.prompts.PromptSets`
    forget_ids: torch.Tensor
    retain_ids: torch.Tensor
    forget_images: torch.Tensor  #: what the method trains on (latents), ``[N, 0]`` for methods that use none
    forget_classes: list[int]
    description: str
    paraphrases: list[str]
    forget_indices: Any = None

    @property
    def forget_prompts(self) -> list[str]:
        return self.prompts.forget_prompts

    @property
    def retain_prompts(self) -> list[str]:
        return self.prompts.retain_prompts


def _t2i_samples(adapter: Any, side: Any, ids: torch.Tensor, cfg: UnlearnConfig, seed: int, what: str):
    """The latents a method trains on for one side: the user's images (``images:DIR``, VAE-encoded once) or
    ``images_per_prompt`` generations of the frozen model per prompt (DDIM at ``eval_steps``, the run's guidance)."""
    from fastunlearn.engine import SampleSet

    if side.images is not None:
        ids_of = dict(zip(side.prompts, ids.tolist()))
        labels = torch.tensor([ids_of[p] for p in side.image_prompts], dtype=torch.long)
        return SampleSet(adapter.encode_images(side.images), labels)
    labels = ids.repeat_interleave(int(cfg.images_per_prompt))
    gen = torch.Generator().manual_seed(seed)
    from fastunlearn.models.t2i import DEFAULT_GUIDANCE

    guidance = cfg.guidance if cfg.guidance is not None else DEFAULT_GUIDANCE
    if cfg.progress:
        print(f"generating {labels.numel()} {what} images with the frozen model "
              f"({len(ids)} prompt(s) × {cfg.images_per_prompt}, DDIM {cfg.eval_steps}, guidance {guidance:g})",
              flush=True)
    traj = adapter.ddim_trajectory(labels, steps=cfg.eval_steps, guidance_scale=guidance, generator=gen, record=False)
    return SampleSet(traj.final, labels)


def _prepare_t2i(cfg: UnlearnConfig, dist: Any, adapter: Any, device: torch.device, fast: Any):
    """A text-to-image job: prompts → prompt ids (the labels every later stage moves around) → the latents the
    method trains on → the method. ESD-like methods (``needs_images = False``) read prompts only."""
    from fastunlearn.data.prompts import select_prompts
    from fastunlearn.engine import SampleSet, prepare_model

    if cfg.unconditional:
        raise UserInputError("--unconditional is for class-conditional DDPMs; a text-to-image model forgets a prompt")
    method_cls, options = _method(cfg, dist)
    default_retain = getattr(method_cls, "default_retain_prompts", None)
    sets = select_prompts(cfg.forget, cfg.retain, adapter, default_retain() if default_retain else None)
    needs_images = getattr(method_cls, "needs_images", True)
    needs_retain = getattr(method_cls, "needs_retain", True)
    if needs_retain and not sets.retain_prompts:
        raise UserInputError(f"method {cfg.method!r} needs prompts to keep, and {cfg.model} records no concepts to "
                             "default to: give --retain prompt:TEXT[;TEXT] (or prompts:FILE)")
    prepare_model(adapter, device, fast, shard=dist.shard if dist is not None else None)
    forget_ids = adapter.prompt_ids(sets.forget_prompts, "forget prompt")
    retain_ids = adapter.prompt_ids(sets.retain_prompts, "retain prompt")
    if needs_images:
        forget = _t2i_samples(adapter, sets.forget, forget_ids, cfg, cfg.seed + 1, "forget")
        retain = _t2i_samples(adapter, sets.retain, retain_ids, cfg, cfg.seed + 2, "retain")
    else:
        # The method reads only the prompt ids of its batches (ESD builds its own θ-independent bank): the loop
        # draws ids, and the samples carry no image (zero-width rows).
        forget = SampleSet(torch.zeros(len(forget_ids), 0), forget_ids)
        kept = retain_ids if len(retain_ids) else forget_ids
        retain = SampleSet(torch.zeros(len(kept), 0), kept)
    method = _setup_method(cfg, dist, adapter, method_cls, options, fast,
                           tuple(forget_ids.tolist()), tuple(retain_ids.tolist()))
    from fastunlearn.data.prompts import reported_paraphrases

    paraphrases = reported_paraphrases(adapter.concepts, sets.forget_classes, exclude=sets.forget_prompts)
    t2i_sets = T2ISets(prompts=sets, forget_ids=forget_ids, retain_ids=retain_ids, forget_images=forget.images,
                       forget_classes=list(sets.forget_classes), description=sets.description, paraphrases=paraphrases)
    from fastunlearn.eval.t2i import t2i_judges

    judge = t2i_judges(adapter) if cfg.evaluate else None
    if cfg.evaluate and judge is None and not (cfg.clip or cfg.nudity):
        print("note: no judge for this model's images (the digits judges take 16×16 digits): pass --clip CLIP "
              "(a CLIP model directory or hub id) and/or --nudity to measure the erasure", flush=True)
    return adapter, method, forget, retain, t2i_sets, judge


def _check_out_dir(out_dir: Path, resume: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise UserInputError(f"output path {out_dir} exists and is a file")
    # The job writes its partial dir beside out_dir: the first existing ancestor must be a writable folder.
    ancestor = out_dir.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UserInputError(f"cannot create output directory {out_dir}: {ancestor} is a file, not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UserInputError(f"cannot create output directory {out_dir}: {ancestor} is not writable")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not any((out_dir / m).exists() for m in _OUTPUT_MARKERS):
        raise UserInputError(f"output directory {out_dir} exists and is not a fastunlearn output; choose another --out")
    if resume and not (_partial_dir(out_dir) / "checkpoints").is_dir():
        raise UserInputError(
            f"nothing to resume for {out_dir}: no checkpoints in {_partial_dir(out_dir)} "
            "(run with --checkpoint-every N first)"
        )


def _move_into_place(work: Path, out_dir: Path) -> None:
    """Replace ``out_dir`` by the finished ``work`` dir; the old output is deleted only after the swap."""
    old = out_dir.parent / f".{out_dir.name}.old"
    shutil.rmtree(old, ignore_errors=True)
    if out_dir.exists():
        out_dir.rename(old)
    work.rename(out_dir)
    shutil.rmtree(old, ignore_errors=True)


def run_config(cfg: UnlearnConfig, on_step=None) -> UnlearnResult:
    """Run a job described by an :class:`UnlearnConfig` (see :func:`run`)."""

    from fastunlearn.engine import resolve_device
    from fastunlearn.engine.distributed import Distributed

    cfg = cfg.resolved()
    out_dir = Path(cfg.out_dir).expanduser().resolve()
    dist = Distributed.from_env(cfg.sharding)
    dist.check_batch_size(cfg.batch_size)
    _check_out_dir(out_dir, cfg.resume)
    threads_before = torch.get_num_threads()
    try:
        dist.start(resolve_device(cfg.device))
        return _run_prepared(cfg, out_dir, on_step, dist)
    except BaseException:
        if dist.is_main:
            _drop_unresumable(_partial_dir(out_dir))
        raise
    finally:
        torch.set_num_threads(threads_before)  # the thread count is process-global: give it back
        dist.stop()


def _drop_unresumable(work: Path) -> None:
    """After a failed run, keep the partial dir only if it holds a checkpoint to resume from."""
    from fastunlearn.engine import checkpoint as ckpt

    if work.is_dir() and not ckpt.list_checkpoints(work / "checkpoints"):
        shutil.rmtree(work, ignore_errors=True)


def _load_eval_cache(path: Path) -> dict[str, Any] | None:
    """The cached "before" evaluation (plain numbers, strings and tensors: loads with weights_only=True);
    None when missing or unreadable, and the evaluation is run again (same seed, same result)."""
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - a truncated or foreign cache is only a cache
        return None


def _run_prepared(cfg: UnlearnConfig, out_dir: Path, on_step, dist: Any) -> UnlearnResult:
    from fastunlearn.engine import cpu_threads, train
    from fastunlearn.engine.loop import check_finite_weights
    from fastunlearn.eval.grids import save_class_grid

    adapter, method, forget, retain, sets, judge = _prepare(cfg, dist)
    threads = cpu_threads(adapter, adapter.device, cfg.threads)
    if threads is not None:
        torch.set_num_threads(threads)
    work = _partial_dir(out_dir)
    started = time.perf_counter()
    started_at = time.time()
    if not dist.is_main:
        return _run_other_process(cfg, out_dir, on_step, dist, adapter, method, forget, retain, judge, work)
    if not cfg.resume:
        shutil.rmtree(work, ignore_errors=True)  # a stale partial run that was not resumed
    work.mkdir(parents=True, exist_ok=True)
    (work / "config.yaml").write_text(cfg.to_yaml())
    weights_before = _original_weights(cfg, adapter)

    before = None
    if _evaluates(cfg, judge):
        cached = work / "eval_before.pt"  # resume must not pay for (or change) the base model's evaluation
        before = _load_eval_cache(cached) if cfg.resume else None
        if dist.sharded:  # the others join in gathering the full weights to evaluate
            dist.broadcast_object(before is None)
        if before is None:
            before = evaluate(dist.evaluation_copy(adapter, adapter.fast_path.attention), cfg,
                              sets.forget_classes, judge, sets)
            torch.save(before, cached)
    dist.barrier()  # the partial dir is made: the other processes may train
    loop = train(adapter, method, forget, retain, _loop_settings(cfg, adapter), work, on_step=on_step, dist=dist)
    method.finalize()
    dist.unshard(adapter, adapter.fast_path.attention)
    adapter.eval()
    after = evaluate(adapter, cfg, sets.forget_classes, judge, sets, before=before) if _evaluates(cfg, judge) else None

    check_finite_weights(adapter)
    adapter.save_pretrained(work)
    paths = {"model": out_dir, "config": out_dir / "config.yaml", "metrics": out_dir / "metrics.json",
             "metrics_jsonl": out_dir / "metrics.jsonl"}
    for name, res in (("before", before), ("after", after)):
        if res is not None:
            save_class_grid(res["images"], work / f"samples_{name}.png",
                            title=f"{name} unlearning {cfg.forget}" + (" (unconditional)" if cfg.unconditional else ""))
            paths[f"samples_{name}"] = out_dir / f"samples_{name}.png"
    tsne = None
    if (before or {}).get("tsne") or (after or {}).get("tsne"):  # image-to-image: the encoder's embeddings
        from fastunlearn.eval.i2i import tsne_image

        tsne = tsne_image(before, after)
        tsne.save(work / "tsne.png")
        paths["tsne"] = out_dir / "tsne.png"
    train_info = {"steps": loop.steps, "resumed_from": loop.resumed_from, "train_wall_s": loop.wall_s,
                  "steps_per_s": (loop.steps - loop.resumed_from) / max(loop.wall_s, 1e-9),
                  "last_metrics": loop.last_metrics, "skipped_steps": loop.skipped_steps,
                  "fast_path": adapter.fast_path.as_dict(), "job_wall_s": time.perf_counter() - started}
    summary = {"forget": sets.description, "model": cfg.model, "method": cfg.method,
               "options": cfg.options, "before": _jsonable(before), "after": _jsonable(after), "train": train_info}
    (work / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    paths.update(_write_report_and_manifest(work, out_dir, cfg, adapter, sets, before, after, train_info,
                                            weights_before, started_at, tsne=tsne))
    shutil.rmtree(work / "checkpoints", ignore_errors=True)
    (work / "eval_before.pt").unlink(missing_ok=True)
    _move_into_place(work, out_dir)
    dist.barrier()  # the output is in place: the other processes may return
    dist.broadcast_object((_jsonable(before), _jsonable(after), train_info, paths))
    return UnlearnResult(adapter=adapter, config=cfg, out_dir=out_dir, metrics_before=_jsonable(before),
                         metrics_after=_jsonable(after), train=train_info, paths=paths)


def _loop_settings(cfg: UnlearnConfig, adapter: Any):
    from fastunlearn.engine import LoopSettings

    return LoopSettings(
        steps=cfg.steps, batch_size=cfg.batch_size, seed=cfg.seed, precision=adapter.fast_path.precision,
        max_skipped_steps=cfg.max_skipped_steps,
        checkpoint_every=cfg.checkpoint_every, keep_checkpoints=cfg.keep_checkpoints, log_every=cfg.log_every,
        progress=cfg.progress, resume=cfg.resume, fingerprint=cfg.fingerprint(),
    )


def _run_other_process(cfg: UnlearnConfig, out_dir: Path, on_step, dist: Any, adapter: Any, method: Any,
                       forget: Any, retain: Any, judge: Any, work: Path) -> UnlearnResult:
    """A process other than 0 of a ``torchrun`` job: train its rows, then wait for process 0 to write the
    output; it returns process 0's metrics. Its collectives mirror process 0's in :func:`_run_prepared`."""
    from fastunlearn.engine import train

    if dist.sharded and _evaluates(cfg, judge) and dist.broadcast_object(None):
        dist.evaluation_copy(adapter)  # joins in gathering the full weights process 0 evaluates
    dist.barrier()  # process 0 has made the partial dir (and evaluated the model before)
    train(adapter, method, forget, retain, _loop_settings(cfg, adapter), work, on_step=on_step, dist=dist)
    method.finalize()
    dist.unshard(adapter, adapter.fast_path.attention)
    adapter.eval()
    dist.barrier()
    before, after, train_info, paths = dist.broadcast_object(None)
    return UnlearnResult(adapter=adapter, config=cfg, out_dir=out_dir, metrics_before=before,
                         metrics_after=after, train=train_info, paths=paths)


def _eval_protocol(cfg: UnlearnConfig, adapter: Any, sets: Any, after: dict | None) -> dict | None:
    """How the forget metric was measured, for ``fastunlearn verify`` to re-measure it: the DDPM protocol, or (a
    text-to-image model judged by the digits CNN) the forget prompts, their classes and the sampler; None when
    nothing was measured or no shipped judge can re-measure it."""
    from fastunlearn.eval.manifest import eval_protocol

    if after is None:
        return None
    if getattr(adapter, "family", "ddpm") == "ddpm":
        return eval_protocol(cfg, list(range(adapter.num_classes or 0)))
    if getattr(adapter, "family", "ddpm") == "i2i":
        from fastunlearn.eval.i2i import eval_protocol as i2i_protocol

        return i2i_protocol(cfg, adapter, after)
    detail = after.get("detail", {})
    if after.get("judges", {}).get("") != "zoo:digits-classifier" or "forget_accuracy" not in after:
        return None
    return {"kind": "t2i", "forget_prompts": list(sets.forget_prompts),
            "concept_classes": {p: int(detail["concept_classes"][p]) for p in sets.forget_prompts},
            "n_per_prompt": int(cfg.eval_per_class), "steps": int(cfg.eval_steps), "guidance": float(detail["guidance"]),
            "seed": int(cfg.eval_seed), "threads": cfg.threads, "judge": "zoo:digits-classifier"}


def _write_report_and_manifest(work: Path, out_dir: Path, cfg: UnlearnConfig, adapter: Any, sets: Any,
                               before: dict | None, after: dict | None, train_info: dict,
                               weights_before: Path | bytes, started_at: float, tsne: Any = None) -> dict[str, Path]:
    """``report.html`` (what a person reads) and ``manifest.json`` (what a data-protection officer files)."""
    import yaml

    inputs = None
    if "i2i" in ((before or {}).get("kind"), (after or {}).get("kind")):  # the masked originals beside completions
        from fastunlearn.eval.i2i import held_out_images

        detail = (before or after)["detail"]
        count = min(8, int(detail["n_per_class"]))  # the grids show each class's first 8 completions
        inputs = {c: adapter.mask.apply(x) for c, x in held_out_images(detail["classes"], count).items()}

    from fastunlearn.eval.manifest import build_manifest, eval_protocol, write_manifest
    from fastunlearn.eval.report import read_history, write_report

    write_report(work, config=yaml.safe_load(cfg.to_yaml()), metrics_before=_jsonable(before),
                 metrics_after=_jsonable(after), history=read_history(work / "metrics.jsonl"),
                 images_before=before["images"] if before else {}, images_after=after["images"] if after else {},
                 inputs=inputs, tsne=tsne,
                 headline={"forgotten": str(cfg.forget), "forget_classes": sets.forget_classes, "model": str(cfg.model),
                           "method": cfg.method, "steps": train_info["steps"],
                           "wall time": f"{train_info['job_wall_s']:.0f} s", "device": str(adapter.device),
                           "skipped steps (non-finite)": train_info.get("skipped_steps", 0),
                           "finished": time.strftime("%Y-%m-%d %H:%M")})
    hyperparameters = {**cfg.options, "steps": cfg.steps, "batch_size": cfg.batch_size, "lr": cfg.lr,
                       "seed": cfg.seed, "scope": cfg.scope, "unconditional": cfg.unconditional,
                       "fast_path": train_info["fast_path"]}
    manifest = build_manifest(
        selector=cfg.forget, forget_images=sets.forget_images, forget_indices=sets.forget_indices,
        retain_description=sets.description, method=cfg.method, hyperparameters=hyperparameters,
        weights_before=weights_before, weights_after=work, metrics_before=_jsonable(before),
        metrics_after=_jsonable(after), started_at=started_at, ended_at=time.time(), device=str(adapter.device),
        forget_classes=list(sets.forget_classes) or list((after or {}).get("detail", {}).get("forget_classes", [])),
        eval_protocol=_eval_protocol(cfg, adapter, sets, after),
        model=str(cfg.model),
    )
    write_manifest(work, manifest)
    return {"report": out_dir / "report.html", "manifest": out_dir / "manifest.json"}


def run(
    model: str = "zoo:digits-ddpm",
    forget: Any = "class:0",
    retain: Any = None,
    method: str = "erasediff",
    steps: int | None = None,
    out_dir: str | Path = "fastunlearn-out",
    **options: Any,
) -> UnlearnResult:
    """Make ``model`` forget ``forget`` with ``method`` and write the result to ``out_dir``.

    ``options`` are any other :class:`UnlearnConfig` keys (``batch_size``, ``lr``, ``seed``, ``unconditional``,
    ``evaluate``, ``checkpoint_every``, ``resume``, ``device``, ``precision``, ``compile``, ...) or the method's
    options (EraseDiff: ``target``, ``lambda_rule``, ``eta``, ``inner_steps``, ``ema_decay``, ...).

    >>> result = fastunlearn.run(forget="class:0", steps=100, out_dir="out")
    >>> result.metrics_after["forget_accuracy"]
    """
    values = {"model": model, "forget": forget, "retain": retain, "method": method, "steps": steps,
              "out_dir": str(out_dir), **options}
    return run_config(UnlearnConfig.from_dict(values))


__all__ = ["run", "run_config", "evaluate", "UnlearnResult"]
