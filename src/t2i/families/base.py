"""The family contract: everything the surface (CLI, Python API, eval, server) may know about a family.

A family module ends with one `Family` record (`FAMILY = Family(...)`) and registers its module path in
`t2i.families.FAMILIES`. The surface reads only that record and the pipeline its `load` returns, so adding a
family never means an `if family == ...` anywhere above it:

* `Family`: name, kind (a `generator` makes images from prompts; a `scorer`, the lab's CLIP, embeds them),
  the Config dataclass, the stages, `train(cfg, run, progress)`, `load(run, cfg)`, the `Options` dataclass
  of its pipeline, the conditional tasks it can do, and the other runs it can build on (`uses`).
* `Pipeline`: `pipe.options(**given) -> Options` is the one validator of sampling options (its result is what
  eval records), and `pipe(prompts, seeds=..., options=..., inputs=...) -> list[image]`. A family implements
  `generate` for one image per prompt; drawing N candidates and reranking them with a CLIP run is shared.
* `Options` fields carry their CLI help, so the CLI's sampling flags are the union of every family's fields
  and an option a family does not take is a one-line error naming the families that do.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from PIL import Image

from t2i import monitor
from t2i.errors import OptionError, UserError
from t2i.images import Clip, Media

log = logging.getLogger(__name__)

MAX_SEED = 2**32 - 1  # seeds derive candidate and per-step seeds from themselves; this keeps those in range
TASKS = ("img2img", "inpaint", "variation", "sketch", "complete", "predict")
CLIP_TASKS = ("predict",)  # the tasks whose input is a clip (the frames to continue); the rest take an image
PROMPTLESS_TASKS = ("variation",)  # the tasks whose content is their image: the prompt may be empty
KINDS = ("generator", "scorer")


def option(default: Any = None, help: str = "", type: Callable[[str], Any] | None = None,
           flag: str | None = None, metavar: str | tuple[str, ...] | None = None, nargs: int | None = None) -> Any:
    """An `Options` field with what the CLI needs to offer it as a flag (`nargs`: a list of that many values)."""
    return field(default=default, metadata={"help": help, "type": type, "flag": flag, "metavar": metavar,
                                            "nargs": nargs})


def flag_of(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


@dataclass
class Options:
    """Sampling options every generator takes. None means "the run's default"; `pipe.options` fills them in."""

    steps: int | None = option(None, "sampler steps (default: the run's)", int)
    guidance: float | None = option(None, "classifier-free guidance scale (1 = none, 0 = unconditional)", float)
    sampler: str | None = option(None, "sampler (default: the run's): ddpm | ddim | euler | heun | dpmpp-2m | "
                                 "dpmpp-2m-sde for diffusion runs; a token run's own decoding (autoregressive or "
                                 "parallel)")
    candidates: int | None = option(None, "images drawn per prompt, the best kept by the --rerank CLIP", int)
    rerank: str | None = option(None, "rerank candidates with this lab CLIP run (t2i train --family clip)",
                                metavar="CLIP_RUN")

    def check(self) -> None:
        """One-line errors; the steps, guidance and sampler rules are the sampling process's own (each family's
        `Pipeline.check` applies them), so each rule is written once."""
        if self.candidates is not None and self.candidates < 1:
            raise OptionError("candidates", f"must be at least 1, got {self.candidates}")


@dataclass(frozen=True)
class Input:
    """A conditional request beside its prompt: what a row of `--inputs DIR` or `--init-image` becomes."""

    task: str = "img2img"
    image: Media | None = None  # a Clip for the video tasks (predict: the frames to continue)
    mask: Image.Image | None = None  # white = regenerate
    strength: float = 0.6  # img2img: the fraction of the noise schedule to run
    toward: Image.Image | None = None  # variation: a second image; the output's embedding is `mix` of the way to it
    mix: float = 0.0  # (unCLIP's interpolation slerps the two images' CLIP embeddings)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise UserError(f"unknown task {self.task!r}; tasks are {', '.join(TASKS)}")
        if not (math.isfinite(self.strength) and 0 < self.strength <= 1):
            raise OptionError("strength", f"must be in (0, 1], got {self.strength}")
        if not (math.isfinite(self.mix) and 0 <= self.mix <= 1):
            raise OptionError("mix", f"must be in [0, 1], got {self.mix}")
        if self.toward is not None and self.task != "variation":
            raise UserError(f"a second image (interpolation) is for task variation, not {self.task}")
        if self.image is None:  # every task starts from an image (a clip's first frames for predict)
            raise UserError(f"task {self.task} needs an input image")
        if self.task == "inpaint" and self.mask is None:
            raise UserError("task inpaint needs a mask (white = regenerate)")
        if self.mask is not None:
            if self.mask.mode not in ("L", "1"):
                raise UserError(f"the mask is a {self.mask.mode} image; it must be grayscale (mode L or 1, white = "
                                "regenerate): convert it, e.g. PIL's .convert('L')")
            if not isinstance(self.image, Clip) and self.mask.size != self.image.size:
                raise UserError(f"the mask is {self.mask.size[0]}x{self.mask.size[1]} but the image is "
                                f"{self.image.size[0]}x{self.image.size[1]}; give a mask of the image's size")
        if (self.task in CLIP_TASKS) != isinstance(self.image, Clip):
            raise UserError(f"task {self.task} takes a clip (a PNG strip with `frames` > 1 in its request)"
                            if self.task in CLIP_TASKS else
                            f"task {self.task} takes a still image, got a {len(self.image)}-frame clip")


@dataclass(frozen=True)
class Use:
    """Another run a family can build on: `--NAME RUN` on the CLI, `uses={NAME: RUN}` in the API; the path
    lands in the config at `key`, where the family validates it when it trains."""

    name: str
    key: str
    help: str


@dataclass(frozen=True)
class Family:
    name: str
    kind: str
    config: type
    stages: tuple[str, ...]
    train: Callable[[Any, Path, bool], dict[str, Any]]
    load: Callable[[Path, Any], Any]
    options: type[Options] | None = None  # generators only
    tasks: tuple[str, ...] = ()
    uses: tuple[Use, ...] = ()
    summary: str = ""
    # Config keys of runs made before stage configs were keyed by stage name: old top-level key -> stage name
    # (e.g. {"ae_train": "autoencoder", "train": "diffusion"}); `upgrade` converts them when a run is read.
    legacy: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"family {self.name}: kind must be one of {KINDS}, got {self.kind!r}")
        if (self.kind == "generator") != (self.options is not None):
            raise ValueError(f"family {self.name}: a generator has an Options class, a scorer none")
        if bad := set(self.tasks) - set(TASKS):
            raise ValueError(f"family {self.name}: unknown tasks {sorted(bad)}")

    def upgrade(self, data: dict[str, Any], where: str) -> dict[str, Any]:
        """A config mapping in today's keys. Until 2026-12 each stage's settings were a top-level key of their
        own (`ae_train`, `vq_train`, `train`, ...), each with a `seed`, and `data` had one more; now they are
        `stages.<stage>` under one top-level `seed`. Old run folders must keep loading and resuming, so the
        old keys are moved here; the seed kept is the old `train.seed` (it seeded the weights), and a run
        whose seeds differed is told that its data order now follows that one."""
        old = [k for k in self.legacy if isinstance(data.get(k), dict)]
        if not old:
            return data
        data = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
        stages = dict(data.get("stages") or {})
        seeds = {}
        for key in old:
            section = dict(data.pop(key))
            seeds[f"{key}.seed"] = section.pop("seed", 0)
            stages[self.legacy[key]] = section
        data["stages"] = stages
        if isinstance(data.get("data"), dict) and "seed" in data["data"]:
            seeds["data.seed"] = data["data"].pop("seed")
        data.setdefault("seed", seeds.get("train.seed", next(iter(seeds.values()))))
        if len(set(seeds.values())) > 1:
            log.warning("%s: an old config with several seeds (%s); every stage now follows seed %s", where,
                        ", ".join(f"{k}={v}" for k, v in seeds.items()), data["seed"])
        return data

    def check_keys(self, keys: Sequence[str], where: str) -> None:
        """A one-line error for a preset or `--set` that still uses a pre-2026-12 stage key."""
        for key in keys:
            head, _, rest = key.partition(".")
            if head in self.legacy:
                new = f"stages.{self.legacy[head]}" + (f".{rest}" if rest and rest != "seed" else "")
                raise UserError(f"{where}: {key!r} is now {'seed' if rest == 'seed' else repr(new)} (stage settings "
                                f"are keyed by stage name: {', '.join('stages.' + s for s in self.legacy.values())})")
            if key == "data.seed":
                raise UserError(f"{where}: 'data.seed' is now the run's one top-level 'seed'")


# ------------------------------------------------------------------------------------------ pipeline
def check_seeds(seeds: Sequence[int]) -> None:
    """Seeds are whole numbers in 0..MAX_SEED: a huge one would overflow the seeds derived from it."""
    bad = next((s for s in seeds if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s <= MAX_SEED), None)
    if bad is not None:
        raise OptionError("seed", f"must be a whole number in 0..{MAX_SEED}, got {bad!r}")


class Pipeline:
    """What every generator's pipeline shares: option checking, tasks, seeds, candidates and reranking.

    A family sets `family`, `Options` and `tasks`, and implements `defaults()` (the run's stored sampling
    defaults, by option name), `check(options, given)` (its own rules; returns the options with every value
    filled in) and `generate(prompts, seeds, options, inputs)` (one image per prompt, image i from seeds[i]).
    """

    family = ""
    Options: type[Options] = Options
    tasks: tuple[str, ...] = ()

    def defaults(self) -> dict[str, Any]:
        raise NotImplementedError

    def check(self, options: Options, given: dict[str, Any]) -> Options:
        return options

    def generate(self, prompts: list[str], seeds: list[int], options: Options,
                 inputs: list[Input | None]) -> list[Media]:
        raise NotImplementedError

    def suites(self) -> dict[str, dict[str, int]]:
        """Benchmarks beyond ShapesBench that `t2i eval` runs on this pipeline, by VideoBench task (t2v,
        predict, sketch, complete), each with the `frames` and `size` its requests are drawn at: none here."""
        return {}

    def phases(self, options: Options) -> int:
        """Step loops (sampler runs, decoding passes) that `generate` runs per batch, for progress with ETA
        (`t2i.monitor`): 1 here; a cascade's base and super-resolution stages make 2."""
        return 1

    def options(self, **given: Any) -> Options:
        """The effective options: the given ones (None = default) over the run's defaults, checked."""
        names = {f.name for f in fields(self.Options)}
        for k in given:
            if k not in names:
                from t2i.families import families_with_option

                flag = next((flag_of(f) for fam in families_with_option(k) for f in fields(fam.options)
                             if f.name == k), "--" + k.replace("_", "-"))
                takers = ", ".join(f.name for f in families_with_option(k)) or "no family"
                raise OptionError(k, f"does not apply to {self.family} runs (it is for {takers}); leave it out", flag)
        given = {k: v for k, v in given.items() if v is not None}
        opts = self.Options(**{**self.defaults(), **given})
        opts.check()
        return self.check(opts, given)

    def picking(self, options: Options) -> Options:
        """The options a best-of-N pick really runs with: N candidates only when a CLIP run reranks them
        (said once per pipeline when it does not), else one image per prompt."""
        if options.candidates > 1 and not options.rerank:
            if not self.__dict__.get("_rerank_notice"):
                log.warning("CLIP reranking is off: no CLIP run given (pass --rerank RUN, a run of `t2i train "
                            "--family clip`); returning 1 image per prompt instead of the best of %d",
                            options.candidates)
                self._rerank_notice = True
            return dataclasses.replace(options, candidates=1)
        return options

    def check_inputs(self, inputs: Sequence[Input | None] | None, n: int) -> list[Input | None]:
        inputs = list(inputs) if inputs is not None else [None] * n
        if len(inputs) != n:
            raise UserError(f"{len(inputs)} inputs for {n} prompts")
        for inp in inputs:
            if inp is not None and inp.task not in self.tasks:
                from t2i.families import families_with_task

                can = ", ".join(families_with_task(inp.task)) or "none yet"
                raise UserError(f"task {inp.task} is not supported by {self.family} runs (families that can: {can})")
        return inputs

    def __call__(self, prompts: list[str] | str, seeds: list[int] | None = None, seed: int = 0,
                 options: Options | None = None, inputs: Sequence[Input | None] | None = None,
                 batch_size: int = 64, **given: Any) -> list[Media]:
        """One image (or clip) per prompt (a single string is one prompt); image i uses seed `seed + i` (or `seeds[i]`),
        whatever the batch. With `candidates` N > 1 and a `rerank` CLIP run, the best of N by that CLIP."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        opts = self.picking(options or self.options(**given))
        groups = self.draw(prompts, seeds, seed, opts, inputs, batch_size)
        return self.pick(prompts, groups, opts.rerank) if opts.candidates > 1 else [g[0] for g in groups]

    def draw(self, prompts: list[str] | str, seeds: list[int] | None = None, seed: int = 0,
             options: Options | None = None, inputs: Sequence[Input | None] | None = None,
             batch_size: int = 64, **given: Any) -> list[list[Media]]:
        """Every candidate, without reranking. Candidate 0 uses the prompt's own seed, so it is the image
        `candidates=1` gives, and reranking only ever adds alternatives. Kept apart from `pick` so an
        evaluation can judge all of them: how often any is right is what a perfect reranker would reach."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        opts = options or self.options(**given)
        n = opts.candidates
        seeds = seeds if seeds is not None else [seed + i for i in range(len(prompts))]
        if len(seeds) != len(prompts):
            raise UserError(f"{len(seeds)} seeds for {len(prompts)} prompts")
        check_seeds(seeds)
        if batch_size < 1:
            raise OptionError("batch_size", f"must be at least 1, got {batch_size}")
        inputs = self.check_inputs(inputs, len(prompts))
        all_prompts = [p for p in prompts for _ in range(n)]
        all_seeds = [s if j == 0 else (s + 1) * 1_000_003 + j for s in seeds for j in range(n)]
        all_inputs = [x for x in inputs for _ in range(n)]
        monitor.plan(-(-len(all_prompts) // batch_size) * self.phases(opts))
        images: list[Media] = []
        for i in range(0, len(all_prompts), batch_size):
            images += self.generate(all_prompts[i:i + batch_size], all_seeds[i:i + batch_size], opts,
                                    all_inputs[i:i + batch_size])
        return [images[i:i + n] for i in range(0, len(images), n)]

    def pick(self, prompts: list[str], groups: list[list[Media]], clip: Any = None) -> list[Media]:
        """Each prompt's candidate that the CLIP (a run directory, or a loaded scorer) rates closest to it."""
        if not clip:
            raise UserError("reranking needs a CLIP run: pass --rerank RUN (a run of `t2i train --family clip`)")
        n = len(groups[0]) if groups else 1
        if any(len(g) != n for g in groups):
            raise UserError("every prompt needs the same number of candidates to rerank")
        scorer = self._scorer(clip)
        images = [im for g in groups for im in g]
        best = scorer.best_of(prompts, images, n)
        return [images[i * n + j] for i, j in enumerate(best)]

    def _scorer(self, clip: Any) -> Any:
        if not isinstance(clip, str | Path):
            return clip  # an already loaded scorer
        cache = self.__dict__.setdefault("_scorers", {})
        if str(clip) not in cache:
            from t2i.families import load_run, run_family

            if run_family(clip).kind != "scorer":
                raise UserError(f"--rerank {clip} is a {run_family(clip).name!r} run, not a CLIP run; train one "
                                "with `t2i train --family clip`")
            cache[str(clip)] = load_run(clip)
        return cache[str(clip)]
