"""One report per run (`t2i eval RUN --metrics ...`) and one table across runs (`t2i compare RUN1 RUN2 ...`).

A report generates the ShapesBench prompts once (the folder `t2i eval` always wrote) and measures those
images with every requested metric, so all numbers in it describe the same images:

* `shapesbench`: exact compositional accuracy per kind (t2i.eval.shapesbench);
* `clip`: CLIP score in both conventions (t2i.eval.clipscore) with a lab CLIP run given by `clip`;
* `fid`, `kid`: against exact renders of the same prompts at the run's resolution (the distribution a
  perfect generator would produce), with the lab CLIP's image tower as the feature extractor, or the
  standard FID Inception when `inception` weights are given and chosen. Reference features are cached.

Outputs in RUN/eval/: report.json, report.md, report/grid_<kind>.png (samples per kind) and
report/kinds.png (bar charts of the per-kind scores).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from PIL import Image

from t2i.errors import UserError

METRICS = ("shapesbench", "clip", "fid", "kid")
GRID_PER_KIND = 16


def parse_metrics(text: str | None, have_clip: bool, have_inception: bool) -> list[str]:
    """`--metrics a,b` -> a checked list; the default is shapesbench, plus clip/fid/kid when a CLIP run is given."""
    if text is None:
        return ["shapesbench", "clip", "fid", "kid"] if have_clip else (
            ["shapesbench", "fid", "kid"] if have_inception else ["shapesbench"])
    out = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in out if m not in METRICS]
    if bad or not out:
        raise UserError(f"unknown metric {bad[0] if bad else text!r}; choose from {','.join(METRICS)}")
    return list(dict.fromkeys(out))


def _features_choice(metrics: list[str], clip: str | Path | None, inception: str | Path | None,
                     fid_features: str | None) -> str | None:
    if "clip" in metrics and clip is None:
        raise UserError("metric 'clip' needs a lab CLIP run: pass --clip RUN (train one with "
                        "`t2i train --family clip --preset quick --out runs/clip`)")
    if not {"fid", "kid"} & set(metrics):
        return None
    choice = fid_features or ("clip" if clip is not None else "inception")
    if choice not in ("clip", "inception"):
        raise UserError(f"--fid-features must be clip or inception, got {choice!r}")
    if choice == "clip" and clip is None:
        raise UserError("FID/KID on CLIP features need a lab CLIP run: pass --clip RUN, or --inception WEIGHTS "
                        "for the standard FID network")
    if choice == "inception" and inception is None:
        raise UserError("FID/KID need features: pass --clip RUN (lab CLIP, the default on lab data) or "
                        "--inception WEIGHTS (a local pt_inception-2015-12-05 file, see docs/eval.md)")
    return choice


def _kind_of(prompt: str) -> str:
    from t2i.data.shapes import parse_prompt

    spec = parse_prompt(prompt)
    return "novel" if spec.novel else spec.kind


def _load_folder(folder: Path) -> tuple[list[Image.Image], list[str], list[int]]:
    from t2i.eval.shapesbench import read_index

    rows = read_index(folder)
    images = []
    for r in rows:
        with Image.open(folder / r["file"]) as im:
            images.append(im.convert("RGB"))
    return images, [r["prompt"] for r in rows], [int(r.get("seed", 0)) for r in rows]


def report(run: str | Path, metrics: list[str] | None = None, clip: str | Path | None = None,
           inception: str | Path | None = None, fid_features: str | None = None, n: int | None = None,
           seed: int = 0, batch_size: int = 64, progress: bool = True, cache: Path | None = None,
           **options: Any) -> dict[str, Any]:
    """Generate the ShapesBench prompts with `run`, measure them, and write RUN/eval/report.{json,md} + PNGs.

    `options` are sampling options by name (steps, guidance, top_k, rerank, ...), checked by the run's
    pipeline as in `evaluate`."""
    from t2i.eval.runs import evaluate
    from t2i.families import load_run, run_family
    from t2i.train.rundir import read_meta

    run = Path(run)
    metrics = metrics or ["shapesbench"]
    choice = _features_choice(metrics, clip, inception, fid_features)
    meta = read_meta(run)
    clip_pipe = None
    if clip is not None and ("clip" in metrics or choice == "clip"):
        if run_family(clip).kind != "scorer":  # fail on a bad CLIP run before spending minutes generating
            raise UserError(f"--clip {clip} is a {run_family(clip).name!r} run, not a CLIP run")
        clip_pipe = load_run(clip)
    extractor = None
    if choice == "inception":
        from t2i.eval.fid import InceptionFeatures

        extractor = InceptionFeatures(inception)
    elif choice == "clip":
        from t2i.eval.fid import ClipFeatures

        extractor = ClipFeatures(clip_pipe, clip)

    from t2i.api import load_generator
    from t2i.eval.runs import evaluate_suites

    pipe = load_generator(run)
    sb = evaluate(run, seed=seed, limit=n, batch_size=batch_size, progress=progress, out_name="shapesbench",
                  pipe=pipe, **options)
    video = evaluate_suites(run, pipe, pipe.picking(pipe.options(**options)), limit=n, seed=seed,
                            batch_size=batch_size, progress=progress)
    images, prompts, seeds = _load_folder(run / "eval" / "shapesbench")
    kinds = [_kind_of(p) for p in prompts]
    out: dict[str, Any] = {"run": str(run), "family": meta.get("family"), "metrics": metrics,
                           "images": len(images), "sampling": sb["sampling"],
                           "params": meta.get("params", {}), "train_seconds": meta.get("train_seconds", {}),
                           "scores": {}, "kinds": {}}
    per_kind: dict[str, dict[str, float]] = {k: {} for k in dict.fromkeys(kinds)}
    if "shapesbench" in metrics:
        out["scores"]["shapesbench"] = sb["overall"]
        out["scores"]["shapesbench_novel"] = sb["novel"]
        for k, v in sb["kinds"].items():
            if v is not None and k in per_kind:
                per_kind[k]["shapesbench"] = v
        if sb["novel"] is not None:
            per_kind["novel"]["shapesbench"] = sb["novel"]
    for task, v in (video or {}).get("tasks", {}).items():  # VideoBench, for runs that make clips
        if task != "t2i":
            out["scores"][task] = v["overall"]
            if v.get("novel") is not None:
                out["scores"][f"{task}_novel"] = v["novel"]
    if "clip" in metrics and clip_pipe is not None:
        from t2i.eval.clipscore import clip_s_hessel, clip_score_100, clip_scores

        cs = clip_scores(clip_pipe, images, prompts)
        out["scores"].update({k: cs[k] for k in ("clip_score_100", "clip_s_hessel", "mean_cosine")})
        out["clip_run"] = str(clip)
        for k in per_kind:
            cos = [c for c, kk in zip(cs["cosines"], kinds, strict=True) if kk == k]
            per_kind[k]["clip_score_100"] = clip_score_100(cos)
            per_kind[k]["clip_s_hessel"] = clip_s_hessel(cos)
    if extractor is not None:
        out["fid_kid"] = _fid_kid(run, metrics, extractor, images, prompts, seeds, progress, cache)
        out["scores"].update({k: out["fid_kid"][k] for k in ("fid", "kid", "kid_std") if k in out["fid_kid"]})
    for k, v in per_kind.items():
        v["n"] = kinds.count(k)
    out["kinds"] = per_kind
    out["files"] = _figures(run / "eval" / "report", images, prompts, kinds, per_kind)
    if (run / "log.csv").is_file():
        curves([run], run / "eval" / "report" / "curves.png")
        out["files"]["curves"] = "report/curves.png"
    (run / "eval" / "report.json").write_text(json.dumps(out, indent=1))
    (run / "eval" / "report.md").write_text(format_markdown(out))
    if progress:
        print(format_scores(out))
        print(f"wrote {run / 'eval' / 'report.md'} and report.json")
    return out


def _fid_kid(run: Path, metrics: list[str], extractor: Any, images: list[Image.Image], prompts: list[str],
             seeds: list[int], progress: bool, cache: Path | None) -> dict[str, Any]:
    """FID/KID of the generated images against exact renders of the same prompts (cached features)."""
    from t2i.data.shapes import render_prompt
    from t2i.eval.fid import extract, fid_from_features, kid_from_features, reference_features
    from t2i.eval.shapesbench import PROMPT_SET

    res = images[0].size[0]
    digest = hashlib.sha256("\n".join(prompts).encode()).hexdigest()[:10]
    dataset = f"{PROMPT_SET}-groundtruth-{len(prompts)}p-{digest}"

    def renders() -> list[Image.Image]:
        return [render_prompt(p, seed=i, size=res)[0] for i, p in enumerate(prompts)]

    ref = reference_features(dataset, res, extractor, renders, cache=cache, progress=progress)
    fake = extract(extractor, images, progress=progress, desc="generated features")
    out: dict[str, Any] = {"features": extractor.key, "reference": dataset, "reference_cached": ref.cached,
                           "n_real": len(ref.features), "n_fake": len(fake)}
    if "fid" in metrics:
        out["fid"] = fid_from_features(ref.features, fake)
    if "kid" in metrics:
        out["kid"], out["kid_std"] = kid_from_features(ref.features, fake, subsets=100, subset_size=1000)
        out["kid_subset_size"] = min(1000, len(ref.features), len(fake))
    return out


def _figures(folder: Path, images: list[Image.Image], prompts: list[str], kinds: list[str],
             per_kind: dict[str, dict[str, float]]) -> dict[str, str]:
    """A captioned sample grid per kind and the per-kind bar charts (matplotlib, Agg, PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from t2i.data.sample import Sample
    from t2i.images import preview_grid

    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    for k in per_kind:
        sel = [Sample(im, p) for im, p, kk in zip(images, prompts, kinds, strict=True) if kk == k][:GRID_PER_KIND]
        preview_grid(sel, cols=min(len(sel), 8)).save(folder / f"grid_{k}.png")
        files[f"grid_{k}"] = f"report/grid_{k}.png"
    names = [m for m in ("shapesbench", "clip_score_100") if any(m in v for v in per_kind.values())]
    if names:
        fig, axes = plt.subplots(1, len(names), figsize=(5.5 * len(names), 3.6), squeeze=False)
        for ax, m in zip(axes[0], names, strict=True):
            ks = [k for k in per_kind if m in per_kind[k]]
            vals = [per_kind[k][m] for k in ks]
            bars = ax.bar(range(len(ks)), vals, color="#4a78c2")
            ax.set_xticks(range(len(ks)), [k.replace("_", "\n") for k in ks], fontsize=8)
            ax.set_ylim(0, 1.0 if m == "shapesbench" else 100.0)
            ax.set_title({"shapesbench": "ShapesBench accuracy", "clip_score_100": "CLIP score (100 x cos)"}[m])
            ax.bar_label(bars, fmt="%.2f" if m == "shapesbench" else "%.1f", fontsize=7)
        fig.tight_layout()
        fig.savefig(folder / "kinds.png", dpi=100)
        plt.close(fig)
        files["kinds"] = "report/kinds.png"
    return files


def _fmt(v: Any, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def format_scores(r: dict[str, Any]) -> str:
    return "  ".join(f"{k} {_fmt(v, 4)}" for k, v in r["scores"].items())


def format_markdown(r: dict[str, Any]) -> str:
    from t2i.eval.runs import describe_sampling

    s = r["sampling"]
    lines = [f"# Evaluation report: `{r['run']}` ({r['family']})", "",
             f"{r['images']} images of the ShapesBench prompts; sampler {describe_sampling(s)}, "
             f"{s['seconds'] / max(s['images'], 1):.3f} s per image.", "",
             "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {_fmt(v, 4)} |" for k, v in r["scores"].items()]
    if "fid_kid" in r:
        f = r["fid_kid"]
        lines += ["", f"FID/KID features: `{f['features']}`; reference: `{f['reference']}` "
                  f"({f['n_real']} exact renders of the same prompts), {f['n_fake']} generated images."]
    if "clip_run" in r:
        lines += ["", f"CLIP run: `{r['clip_run']}`. clip_score_100 = max(100 x mean cos, 0) (torchmetrics); "
                  "clip_s_hessel = mean 2.5 x max(cos, 0) (CLIPScore paper)."]
    cols = [c for c in ("shapesbench", "clip_score_100", "clip_s_hessel") if any(c in v for v in r["kinds"].values())]
    lines += ["", "## Per kind", "", "| kind | n | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for k, v in r["kinds"].items():
        lines.append(f"| {k} | {v['n']} | " + " | ".join(_fmt(v.get(c)) for c in cols) + " |")
    if "kinds" in r.get("files", {}):
        lines += ["", "![per-kind scores](report/kinds.png)"]
    if "curves" in r.get("files", {}):
        lines += ["", "## Training", "", f"![loss and probe score during training]({r['files']['curves']})"]
    lines += ["", "## Samples", ""]
    for k in r["kinds"]:
        if f"grid_{k}" in r.get("files", {}):
            lines += [f"### {k}", "", f"![{k}]({r['files'][f'grid_{k}']})", ""]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------- compare
def _summary(run: Path) -> dict[str, Any]:
    from t2i.train.rundir import read_meta

    meta = read_meta(run)
    rep = run / "eval" / "report.json"
    sb = run / "eval" / "shapesbench.json"
    if rep.is_file():
        r = json.loads(rep.read_text())
        scores, sampling = r["scores"], r["sampling"]
    elif sb.is_file():
        r = json.loads(sb.read_text())
        scores, sampling = {"shapesbench": r["overall"], "shapesbench_novel": r["novel"]}, r["sampling"]
    else:
        raise UserError(f"{run} has no evaluation yet; run `t2i eval {run}` first")
    params = meta.get("params", {})
    train_s = meta.get("train_seconds", {})
    return {"run": str(run), "family": meta.get("family"), **scores,
            "s_per_image": sampling["seconds"] / max(sampling["images"], 1),
            "params_m": sum(params.values()) / 1e6 if params else None,
            "train_min": sum(train_s.values()) / 60 if train_s else None}


COLUMNS = [("run", "run"), ("family", "family"), ("shapesbench", "ShapesBench"), ("shapesbench_novel", "novel"),
           ("clip_score_100", "CLIP score"), ("clip_s_hessel", "CLIP-S"), ("fid", "FID"), ("kid", "KID"),
           ("s_per_image", "s/image"), ("params_m", "params (M)"), ("train_min", "train min")]


def compare(runs: list[str | Path], out: str | Path) -> list[dict[str, Any]]:
    """One side-by-side table (markdown + JSON) and a quality-vs-speed plot for several evaluated runs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not runs:
        raise UserError("give at least one run to compare")
    rows = [_summary(Path(r)) for r in runs]
    cols = [(k, h) for k, h in COLUMNS if any(row.get(k) is not None for row in rows)]
    table = ["| " + " | ".join(h for _, h in cols) + " |", "|" + "---|" * len(cols)]
    for row in rows:
        table.append("| " + " | ".join(_fmt(row.get(k), 4 if k == "kid" else 3) for k, _ in cols) + " |")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.json").write_text(json.dumps(rows, indent=1))
    quality = "shapesbench" if all(r.get("shapesbench") is not None for r in rows) else "fid"
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        if r.get(quality) is None:
            continue
        ax.scatter(r["s_per_image"], r[quality], s=40)
        ax.annotate(Path(r["run"]).name, (r["s_per_image"], r[quality]), fontsize=8, xytext=(4, 4),
                    textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("sampling seconds per image (log)")
    ax.set_ylabel({"shapesbench": "ShapesBench overall (higher is better)", "fid": "FID (lower is better)"}[quality])
    ax.set_title("quality vs speed")
    fig.tight_layout()
    fig.savefig(out / "compare.png", dpi=100)
    plt.close(fig)
    text = "\n".join(table)
    (out / "compare.md").write_text(f"# Comparison\n\n{text}\n\n![quality vs speed](compare.png)\n")
    print(text)
    print(f"wrote {out / 'compare.md'}, compare.json and compare.png")
    return rows


# -------------------------------------------------------------------------------------------- curves
def _number(text: str | None) -> float | None:
    try:
        return float(text) if text not in (None, "") else None
    except ValueError:
        return None


def _smooth(values: list[float], n: int) -> list[float]:
    """A trailing mean over up to n logged points: a step's loss is one batch's, too noisy to read alone."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v - (values[i - n] if i >= n else 0.0)
        out.append(total / min(i + 1, n))
    return out


Line = tuple[str, list[float], list[float]]


def training_curves(runs: list[str | Path], smooth: int = 10) -> tuple[list[Line], list[Line]]:
    """(loss lines, probe lines), each (label, xs, ys): every stage's loss against its steps from log.csv,
    smoothed over `smooth` logged points, and the probe benchmark against training minutes from eval.csv
    (ShapesBench's overall where logged, else every task's column, as NUWA logs them)."""
    from t2i.train.rundir import read_log, read_meta

    if not runs:
        raise UserError("give at least one run folder")
    if smooth < 1:
        raise UserError(f"--smooth must be at least 1 logged point (1 = no smoothing), got {smooth}")
    loss_lines: list[Line] = []
    probe_lines: list[Line] = []
    for r in runs:
        run = Path(r)
        log = run / "log.csv"
        if not log.is_file():
            raise UserError(f"{run} has no log.csv: give a run folder that has trained at least one step")
        read_meta(run)  # a one-line error for a folder that is not a run
        name = run.name if len(runs) > 1 else ""
        for stage, rows in _by_stage(read_log(log)).items():
            xs, ys = _points(rows, "step", "loss")
            if xs:
                loss_lines.append((f"{name} {stage}".strip(), xs, _smooth(ys, smooth)))
        probes = run / "eval.csv"
        for stage, rows in _by_stage(read_log(probes) if probes.is_file() else []).items():
            metrics = [k for k in rows[0] if k not in ("stage", "step", "train_minutes")]
            for m in ["shapesbench"] if "shapesbench" in metrics else metrics:
                xs, ys = _points(rows, "train_minutes", m)
                if xs:
                    probe_lines.append((" ".join(p for p in (name, stage, "" if m == "shapesbench" else m) if p),
                                        xs, ys))
    return loss_lines, probe_lines


def _by_stage(rows: list[dict[str, str]]) -> dict[str, list[dict[str, str]]]:
    groups: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        groups.setdefault(row["stage"], []).append(row)
    return groups


def _points(rows: list[dict[str, str]], x: str, y: str) -> tuple[list[float], list[float]]:
    """The rows' (x, y) pairs where both are numbers: a stage logs only some of the file's columns."""
    pairs = [(_number(r.get(x)), _number(r.get(y))) for r in rows]
    kept = [(a, b) for a, b in pairs if a is not None and b is not None]
    return [a for a, _ in kept], [b for _, b in kept]


def curves(runs: list[str | Path], out: str | Path, smooth: int = 10) -> Path:
    """One PNG of how runs trained (`training_curves`): loss on the left, the probe score on the right.

    Several runs overlay, so arms of one choice read side by side; where the probe stops rising is what a
    longer run would not buy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loss_lines, probe_lines = training_curves(runs, smooth)
    panels = 2 if probe_lines else 1
    fig, axes = plt.subplots(1, panels, figsize=(6.2 * panels, 4), squeeze=False)
    ax = axes[0][0]
    for label, xs, ys in loss_lines:
        ax.plot(xs, ys, label=label, lw=1.2)
    ax.set_yscale("log")
    ax.set_xlabel("step (of each stage)")
    ax.set_ylabel(f"training loss (mean of {smooth} logged points, log)")
    ax.set_title("loss")
    ax.legend(fontsize=7)
    if probe_lines:
        ax = axes[0][1]
        for label, xs, ys in probe_lines:
            ax.plot(xs, ys, marker="o", ms=3, label=label)
        ax.set_ylim(0, 1)
        ax.set_xlabel("training minutes (of each stage)")
        ax.set_ylabel("probe score (higher is better)")
        ax.set_title("probe benchmark during training (eval.csv)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
