"""Where an image-to-image unlearning run moved the encoder: per encoder feature map, how far the forget images'
features got towards the ``i2i`` target and how far the retained images' features moved with them.

    python benchmarks/i2i_feature_gaps.py OUT                       # OUT: a run's output (--model read from it)
    python benchmarks/i2i_feature_gaps.py OUT --base zoo:digits-inpaint --t 900,500,100 --draws 8

For the held-out test images of the run's forget and retained classes (``--per-side`` of each, the digits'
``test`` split) under the model's mask and, on the inpainter, a fixed timestep t per table with one noise draw
per row shared by every encoding:

- ``target`` = the mean over ``--draws`` noise images n of the ORIGINAL encoder's features of n: what the ``i2i``
  loss pulls a forget image's features to (its expected target; the loss's remainder is n's own variance, which
  no encoder can remove);
- ``gap before`` / ``gap after``: mean squared distance of the forget images' features to ``target`` under the
  original / the unlearned encoder, and their ratio;
- ``forget moved`` / ``retain moved``: mean squared distance between the unlearned and the original encoder's
  features, on the forget / the retained images. A map where the two are equal moved the same way for every
  class: it could not tell the forget classes from the retained ones.

The inpainter's maps are its UNet's skip connections and bottleneck (``conv_in`` first); the masked
autoencoder's one map is the ViT's last hidden state.

Then where the target sits among the classes: the mean squared distance (over the flat encoding,
:meth:`~fastunlearn.models.i2i.I2IAdapter.encode`) from the mean target to each class's mean encoding of its
held-out images under the original encoder, nearest first, beside the same for a draw of N(0, 1) features
(``random_encoder``'s target) and the closest two class means' distance for scale.

``--oracle`` (inpainter): which maps must change for the ORIGINAL model to forget. The forget images are completed
by the original model (``complete``, DDIM ``--oracle-steps``) with the DECODER reading, for a chosen set of encoder
maps, the target's mean at that step's t instead of the map (hooks on the up blocks' inputs; the encoder itself
runs on the real input), and judged by the shipped CNN: nothing replaced, the maps of each resolution, every
map but ``conv_in``, and every map. An encoder that reached its target on a set of maps would give about that
set's figure.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", help="a run's output directory (an unlearned image-to-image model)")
    ap.add_argument("--base", default=None, help="the original model (default: the run's --model, from config.yaml)")
    ap.add_argument("--t", default="900,500,100", help="inpainter timesteps, one table each")
    ap.add_argument("--draws", type=int, default=8, help="noise images averaged into the target")
    ap.add_argument("--per-side", type=int, default=96, help="held-out images of the forget and of the retained classes")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--oracle", action="store_true", help="inpainter: complete with maps replaced by the target")
    ap.add_argument("--oracle-steps", type=int, default=10, help="DDIM steps of the oracle's completions")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    import yaml

    from fastunlearn.data.digits import load_digits_split
    from fastunlearn.methods.i2i import DEFAULT_NOISE, noise_images
    from fastunlearn.models.i2i import load_i2i

    out = Path(args.out)
    config = yaml.safe_load((out / "config.yaml").read_text())
    metrics = json.loads((out / "metrics.json").read_text()) if (out / "metrics.json").exists() else {}
    options = metrics.get("options", {})
    base = load_i2i(args.base or config["model"])
    after = load_i2i(out)
    teacher = base.frozen_encoder()
    noise_kind = options.get("noise") or DEFAULT_NOISE[base.arch]
    forget = set((metrics.get("after") or {}).get("detail", {}).get("forget_classes") or [])
    if not forget:  # a run without evaluation: its class:... selector
        spec = str(config["forget"])
        if not spec.startswith("class:"):
            ap.error(f"cannot tell the forget classes of {out}: no evaluation in metrics.json, forget {spec!r}")
        forget = {int(c) for c in spec[len("class:"):].split(",") if c.strip()}
    data = load_digits_split("test")
    is_forget = torch.tensor([int(y) in forget for y in data.labels])
    x_f, x_r = data.images[is_forget][:args.per_side], data.images[~is_forget][:args.per_side]
    g = torch.Generator().manual_seed(args.seed)
    names = base.feature_names() if hasattr(base, "feature_names") else ["vit.last_hidden_state"]
    timesteps = [int(t) for t in args.t.split(",")] if base.arch == "inpaint" else [None]
    print(f"{out} vs {args.base or config['model']}: forget classes {sorted(forget)}, {len(x_f)} forget and "
          f"{len(x_r)} retained test images, noise {noise_kind!r}, target = mean of {args.draws} draws")
    for t_fixed in timesteps:
        n = min(len(x_f), len(x_r))
        if t_fixed is None:
            t = eps = None
        else:
            t = torch.full((n,), t_fixed)
            eps = torch.randn(n, *base.image_shape, generator=g)
        xf, xr = x_f[:n], x_r[:n]
        with torch.no_grad():
            draws = [teacher.encoder_features(noise_images(xf, noise_kind, g, base.mask), None, t, eps)
                     for _ in range(args.draws)]
            target = [sum(d[i] for d in draws) / len(draws) for i in range(len(draws[0]))]
            f0, f1 = teacher.encoder_features(xf, None, t, eps), after.encoder_features(xf, None, t, eps)
            r0, r1 = teacher.encoder_features(xr, None, t, eps), after.encoder_features(xr, None, t, eps)
        print(f"\n{'t = ' + str(t_fixed) if t_fixed is not None else 'deterministic encoding'}")
        print(f"  {'map':30s} {'gap before':>10s} {'gap after':>10s} {'ratio':>6s} {'forget moved':>13s} "
              f"{'retain moved':>13s}")
        for i, name in enumerate(names):
            gap0 = ((f0[i] - target[i]) ** 2).mean().item()
            gap1 = ((f1[i] - target[i]) ** 2).mean().item()
            moved_f = ((f1[i] - f0[i]) ** 2).mean().item()
            moved_r = ((r1[i] - r0[i]) ** 2).mean().item()
            print(f"  {name:30s} {gap0:10.3f} {gap1:10.3f} {gap1 / gap0:6.0%} {moved_f:13.3f} {moved_r:13.3f}")
        flat_target = base.flatten_features(target).mean(0)
        means = {}
        for c in sorted({int(y) for y in data.labels}):
            xc = data.images[data.labels == c]
            with torch.no_grad():
                means[c] = teacher.encode(xc, None, None if t is None else t[:1].expand(len(xc)),
                                          None if eps is None else eps[:1].expand(len(xc), -1, -1, -1)).mean(0)
        gaussian = torch.randn(flat_target.shape, generator=g)

        def nearest(v: torch.Tensor) -> str:
            dist = sorted((((v - m) ** 2).mean().item(), c) for c, m in means.items())
            return ", ".join(f"{c}{'*' if c in forget else ''} {d:.3f}" for d, c in dist)

        closest = min(((means[a] - means[b]) ** 2).mean().item() for a in means for b in means if a < b)
        print(f"  target's distance to each class's mean encoding (* forget class): {nearest(flat_target)}")
        print(f"  a N(0, 1) draw's (random_encoder's target):                    {nearest(gaussian)}")
        print(f"  the two closest class means: {closest:.3f} apart")
    if args.oracle:
        if base.arch != "inpaint":
            ap.error("--oracle replaces the inpainter's UNet maps; this model is a masked autoencoder")
        y_f = data.labels[is_forget][:args.per_side]
        print(f"\noracle: the original inpainter completing {len(x_f)} forget-class images (DDIM-{args.oracle_steps}) "
              "with its decoder reading the target's mean at each step for the named maps; judged their class by the CNN")
        probe = base.encoder_features(x_f[:1], None, torch.zeros(1, dtype=torch.long), torch.zeros(1, *base.image_shape))
        by_size: dict[int, list[str]] = {}
        for name, f in zip(names, probe):
            by_size.setdefault(int(f.shape[-1]), []).append(name)
        sets = [("nothing", [])] + [(f"the {k}×{k} maps ({', '.join(v)})", v) for k, v in sorted(by_size.items(),
                                                                                                 reverse=True)]
        sets.append(("every map but conv_in (a single linear convolution of the input)", names[1:]))
        sets.append(("every map", names))
        for label, chosen in sets:
            acc = oracle(base, teacher, x_f, y_f, set(chosen), noise_kind, args.draws, args.oracle_steps, args.seed)
            print(f"  replaced {label}: {acc:.1%}")
    return 0


def oracle(base, teacher, x, y, chosen: set, noise_kind: str, draws: int, steps: int, seed: int) -> float:
    """The CNN's accuracy on :func:`oracle_completions` of ``x`` (labels ``y``)."""
    from fastunlearn.eval.evaluate import digits_judges

    completed = oracle_completions(base, teacher, x, chosen, noise_kind, draws, steps, seed)
    judge = digits_judges(base, second=False)[""]
    with torch.no_grad():
        return (judge(completed).argmax(1) == y).float().mean().item()


def oracle_completions(base, teacher, x, chosen: set, noise_kind: str, draws: int, steps: int,
                       seed: int) -> torch.Tensor:
    """The original inpainter's completions of ``x`` with its decoder reading, for the maps named in ``chosen``, the
    target's mean (``draws`` noise images under the step's t and fresh noise) at every step; from the noise of
    ``seed``."""
    from fastunlearn.methods.i2i import noise_images

    unet = base.model
    names = base.feature_names()
    g = torch.Generator().manual_seed(seed + 1)
    state: dict = {}

    def at_step(module, args, kwargs):  # UNet2DModel.forward(sample, timestep): the step's target maps
        sample, t = args[0], args[1]
        n = sample.shape[0]
        maps = None
        for _ in range(draws):
            noise = noise_images(torch.zeros(n, *base.image_shape), noise_kind, g, base.mask)
            f = teacher.encoder_features(noise, None, t, torch.randn(n, *base.image_shape, generator=g))
            maps = f if maps is None else [a + b for a, b in zip(maps, f)]
        state["target"] = {name: m / draws for name, m in zip(names, maps)}
        seen.clear()

    seen: dict[int, tuple[str, torch.Tensor]] = {}  # this forward's encoder outputs: id -> (map name, the tensor)

    def record(name):
        def hook(module, args, out):
            seen[id(out)] = (name, out)
        return hook

    def record_block(first: int):
        def hook(module, args, out):  # a down block returns (h, residuals): the residuals are its skip maps
            for j, r in enumerate(out[1]):
                seen[id(r)] = (names[first + j], r)
        return hook

    def read(t: torch.Tensor) -> torch.Tensor:
        name, kept = seen.get(id(t), (None, None))
        return state["target"][name] if kept is t and name in chosen else t

    def decoder_reads(module, args):  # an up block's (h, skip maps, temb): what the decoder reads, replaced
        return (read(args[0]), tuple(read(r) for r in args[1]), *args[2:])

    hooks = [unet.register_forward_pre_hook(at_step, with_kwargs=True),
             unet.conv_in.register_forward_hook(record("conv_in"))]
    first = 1
    for block in unet.down_blocks:
        hooks.append(block.register_forward_hook(record_block(first)))
        first += len(block.resnets) + len(block.downsamplers or [])
    if unet.mid_block is not None:
        hooks.append(unet.mid_block.register_forward_hook(record("mid_block")))
    hooks += [block.register_forward_pre_hook(decoder_reads) for block in unet.up_blocks]
    try:
        with torch.no_grad():
            return base.complete(x, generator=torch.Generator().manual_seed(seed), steps=steps)
    finally:
        for h in hooks:
            h.remove()


if __name__ == "__main__":
    sys.exit(main())
