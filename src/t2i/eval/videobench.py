"""VideoBench: ShapesBench for clips and for NUWA's conditional tasks, exact as ShapesBench is.

Every frame is detected as ShapesBench detects an image (palette unmixing, components, template fit), so a
clip is judged by the same eyes as a still. The rules (numbers are an interface, like the datasets'):

* **text-to-video** (a clip and its `shapes-video` caption): in all but at most one frame exactly the named
  objects are found and nothing else; each object's track moves the named way -- along its axis by at least
  0.6 x the nominal 0.05 x (T - 1), across it by at most 0.08, never a step backwards of more than 0.03;
* **predict** (a clip continued from its first frames, no caption): the whole clip passes text-to-video for
  the true caption, and the last frame's centres lie within 0.08 of the true ones;
* **sketch** (an image from a sketch and a `shapes` caption): exactly the sketched objects, each centre within
  0.05 of the sketch's, in the captioned colours and shapes (ShapesBench's judge of the caption);
* **complete** (an image from its top half and a caption): the top half kept (mean absolute error <= 8/255),
  the whole image passes ShapesBench for the caption, and every object is whole (its thresholded box is square,
  as every shape's box is: a half-drawn object is not).

A scored folder is the generated-media contract (`index.jsonl` + PNGs); a row's `task` (echoed from the
`--inputs` request) picks its rule, and the conditional tasks read the source scene from the row's `truth`
(the sample's metadata, which `write_task_inputs` puts in every request it writes).
"""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from t2i.data.shapes import BACKGROUND, KINDS, NATIVE_SIZE, Obj, parse_prompt, random_spec, render, scene_for
from t2i.data.video import (
    DIRECTIONS,
    FRAMES,
    SPEED,
    VideoSpec,
    parse_video_prompt,
    random_video_spec,
    sketch,
    sketch_objects,
)
from t2i.data.video import KINDS as VIDEO_KINDS
from t2i.errors import UserError
from t2i.eval.shapesbench import (
    DEFAULT_SCORER,
    Detection,
    detect,
    detect_v1,
    judge,
    read_index,
    result_path,
    summarize,
    tally_kinds,
    version,
    write_result,
)
from t2i.images import Clip, as_stored, frames_of, from_stored, stored_frames

PROMPT_SET = "videobench-v1"
PER_KIND, NOVEL_PER_KIND = 100, 20
MIN_TRAVEL = 0.6  # of the nominal displacement SPEED * (T - 1)
MAX_ACROSS = 0.08
MAX_BACKSTEP = 0.03
PREDICT_RADIUS = 0.08
SKETCH_RADIUS = 0.05
MAX_TOP_ERROR = 8.0  # mean absolute error over the kept top half, in 0..255
MAX_BOX_SKEW = 0.05  # |width - height| of a whole object's thresholded box, fraction of the side
TASKS = ("t2i", "t2v", "predict", "sketch", "complete")
SKETCH_KINDS = ("single_object", "counting", "two_object")
PREDICT_CONTEXT = 2  # frames a prediction request gives


# -------------------------------------------------------------------------------------------- prompts
def video_prompts(per_kind: int = PER_KIND, novel_per_kind: int = NOVEL_PER_KIND) -> list[str]:
    """`per_kind` canonical clip captions of each kind from the training split, then the novel ones (a
    hold-out (shape, direction) pair), seeded by `PROMPT_SET`. A kind with fewer distinct captions than asked
    (single_motion has 80 in the training split) cycles through all of them, each equally often."""
    out: list[str] = []
    for split, count in (("train", per_kind), ("novel", novel_per_kind)):
        for kind in VIDEO_KINDS:
            rng = random.Random(f"{PROMPT_SET}:{split}:{kind}")
            seen: dict[str, None] = {}
            for _ in range(20_000):  # enumerate the kind's caption space (single_motion exhausts it)
                seen[random_video_spec(rng, split, kind).canonical()] = None
                if len(seen) >= count:
                    break
            distinct = list(seen)
            out.extend(distinct[i % len(distinct)] for i in range(count))
    return out


# ---------------------------------------------------------------------------------------------- judge
def _center(d: Detection) -> tuple[float, float]:
    return (d.box[0] + d.box[2]) / 2, (d.box[1] + d.box[3]) / 2


def judge_clip(spec: VideoSpec, per_frame: list[list[Detection]]) -> tuple[bool, str]:
    """The text-to-video rule on a clip's per-frame detections."""
    t = len(per_frame)
    want = [(m.color, m.shape) for m in spec.objects]
    good = [len(d) == len(want) and sorted((x.color, x.shape) for x in d) == sorted(want) for d in per_frame]
    if sum(good) < t - 1:
        bad = next(i for i, g in enumerate(good) if not g)
        found = ", ".join(f"{x.color} {x.shape}" for x in per_frame[bad]) or "nothing"
        return False, f"{t - sum(good)} of {t} frames do not show exactly the named objects (frame {bad}: {found})"
    for m in spec.objects:
        dx, dy = DIRECTIONS[m.direction]
        track = [_center(next(x for x in d if (x.color, x.shape) == (m.color, m.shape)))
                 for d, g in zip(per_frame, good, strict=True) if g]
        along = [dx * x + dy * y for x, y in track]
        across = [y if dx else x for x, y in track]
        travel = along[-1] - along[0]
        if travel < MIN_TRAVEL * SPEED * (t - 1):
            return False, f"the {m.color} {m.shape} moves {travel:+.3f} {m.direction}, short of " \
                          f"{MIN_TRAVEL * SPEED * (t - 1):.3f}"
        if max(across) - min(across) > MAX_ACROSS:
            return False, f"the {m.color} {m.shape} drifts {max(across) - min(across):.3f} across its axis"
        back = min((b - a for a, b in itertools.pairwise(along)), default=0.0)
        if back < -MAX_BACKSTEP:
            return False, f"the {m.color} {m.shape} steps {-back:.3f} backwards"
    return True, ""


def detect_frames(media: Any, scorer: str = DEFAULT_SCORER) -> list[list[Detection]]:
    return [detect(f, scorer) for f in frames_of(media)]


def score_clip(clip: Any, prompt: str, scorer: str = DEFAULT_SCORER) -> tuple[bool, str]:
    return judge_clip(parse_video_prompt(prompt), detect_frames(clip, scorer))


def judge_predict(clip: Any, truth: dict, scorer: str = DEFAULT_SCORER) -> tuple[bool, str]:
    """Prediction: the clip passes text-to-video for the true caption and ends where the true clip does."""
    spec = parse_video_prompt(truth["canonical"])
    per_frame = detect_frames(clip, scorer)
    ok, why = judge_clip(spec, per_frame)
    if not ok:
        return ok, why
    last = {(d.color, d.shape): _center(d) for d in per_frame[-1]}
    t = len(per_frame)
    for o in truth["objects"]:
        cx, cy = o["cx0"] + SPEED * (t - 1) * DIRECTIONS[o["direction"]][0], \
            o["cy0"] + SPEED * (t - 1) * DIRECTIONS[o["direction"]][1]
        got = last.get((o["color"], o["shape"]))
        if got is None:
            return False, f"the {o['color']} {o['shape']} is missing from the last frame"
        if np.hypot(got[0] - cx, got[1] - cy) > PREDICT_RADIUS:
            return False, f"the {o['color']} {o['shape']} ends {np.hypot(got[0] - cx, got[1] - cy):.3f} from where " \
                          "the true clip ends it"
    return True, ""


def judge_sketch(image: Image.Image, prompt: str, truth: dict, scorer: str = DEFAULT_SCORER) -> tuple[bool, str]:
    """Sketch-to-image: ShapesBench's judge of the caption, and one detection within 0.05 of every sketched
    centre (the centres are read from the sketch the truth scene draws)."""
    dets = detect(image, scorer)
    ok, why = judge(parse_prompt(prompt), dets)
    if not ok:
        return ok, why
    left = [_center(d) for d in dets]
    for cx, cy in sketch_objects(sketch(truth)):
        dist = [np.hypot(x - cx, y - cy) for x, y in left]
        i = int(np.argmin(dist)) if dist else -1
        if i < 0 or dist[i] > SKETCH_RADIUS:
            return False, f"no object within {SKETCH_RADIUS} of the sketched one at ({cx:.2f}, {cy:.2f})"
        left.pop(i)
    return True, ""


def completion_input(meta: dict, size: int = NATIVE_SIZE) -> Image.Image:
    """The top half of a scene, rows below the middle set to the background: the request of `complete`."""
    a = np.asarray(render([Obj(**o) for o in meta["objects"]], size)).copy()
    a[size // 2:] = BACKGROUND
    return Image.fromarray(a, "RGB")


def judge_complete(image: Image.Image, prompt: str, truth: dict, scorer: str = DEFAULT_SCORER) -> tuple[bool, str]:
    """Completion: the top half kept, the caption met, every object whole."""
    im = image.convert("RGB").resize((NATIVE_SIZE, NATIVE_SIZE), Image.Resampling.BOX)
    top = NATIVE_SIZE // 2
    given = np.asarray(completion_input(truth), dtype=np.float32)[:top]
    err = float(np.abs(np.asarray(im, dtype=np.float32)[:top] - given).mean())
    if err > MAX_TOP_ERROR:
        return False, f"the given top half changed (mean absolute error {err:.1f}/255 > {MAX_TOP_ERROR:.0f})"
    ok, why = judge(parse_prompt(prompt), detect(im, scorer))
    if not ok:
        return ok, why
    for d in detect_v1(im):  # the thresholded box: a half-drawn object's is twice as wide as it is tall
        w, h = d.box[2] - d.box[0], d.box[3] - d.box[1]
        if abs(w - h) > MAX_BOX_SKEW:
            return False, f"the {d.color} {d.shape} is not whole (its box is {w:.2f} x {h:.2f})"
    return True, ""


# ----------------------------------------------------------------------------------------------- inputs
def _task_scene(task: str, rng: random.Random) -> dict:
    """A `shapes` scene for a sketch or completion request (its metadata)."""
    from t2i.data.shapes import metadata

    while True:
        spec = random_spec(rng, "all", rng.choice(SKETCH_KINDS if task == "sketch" else KINDS))
        if task == "sketch" and spec.kind == "two_object" and spec.shape == spec.shape2:
            continue
        objects = scene_for(spec, rng)
        if task == "complete" and not any(o.cy > 0.5 for o in objects):
            continue  # the hidden half must hide at least one object's centre
        return metadata(spec, objects)


def task_requests(task: str, n: int = 200, seed: int = 0, frames: int = FRAMES, size: int = NATIVE_SIZE
                  ) -> list[dict[str, Any]]:
    """`n` requests of a conditional task, each {prompt, image (a clip for predict), truth}: predict gives the
    first 2 frames of a held-out clip (its `prompt` is the true caption, which the model never reads); sketch
    and complete give a scene's sketch or top half and its canonical caption. Scenes come from their own
    seeds, never a training run's. `size`: the side the requests are drawn at (the run's)."""
    from t2i.data.video import make_clip

    if task not in ("predict", "sketch", "complete"):
        raise UserError(f"task inputs are written for predict, sketch and complete, not {task!r}")
    out = []
    for i in range(n):
        if task == "predict":
            s = make_clip(i, seed=seed + 20_000, size=size, split="all", frames=frames)
            out.append({"prompt": s.meta["canonical"], "image": Clip(s.image.frames[:PREDICT_CONTEXT]),
                        "truth": s.meta})
            continue
        meta = _task_scene(task, random.Random(f"{PROMPT_SET}:{task}:{seed}:{i}"))
        out.append({"prompt": meta["canonical"], "image": sketch(meta, size) if task == "sketch" else
                    completion_input(meta, size), "truth": meta})
    return out


def write_task_inputs(directory: str | Path, task: str, n: int = 200, seed: int = 0,
                      frames: int = FRAMES, size: int = NATIVE_SIZE) -> int:
    """An `--inputs` folder of `task_requests`, each row with its `truth` for the scorer."""
    requests = task_requests(task, n, seed, frames, size)
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, r in enumerate(requests):
        name = f"in{i:05d}.png"
        as_stored(r["image"]).save(out / name)
        extra = {"frames": len(r["image"])} if isinstance(r["image"], Clip) else {}
        rows.append({"prompt": r["prompt"], "task": task, "image": name, **extra, "seed": i, "truth": r["truth"]})
    (out / "index.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return n


def task_truth(row: dict) -> Any:
    """The exact answer to a request written by `write_task_inputs` (what a perfect model returns)."""
    truth = row["truth"]
    if row["task"] == "predict":
        return Clip(tuple(render([Obj(o["color"], o["shape"], o["size"], *o["centers"][t]) for o in truth["objects"]])
                          for t in range(truth["frames"])))
    return render([Obj(**o) for o in truth["objects"]])


# ----------------------------------------------------------------------------------------------- score
def task_of(row: dict) -> str:
    """The rule a row is judged by: its echoed `task`, else a clip (frames > 1) is text-to-video."""
    task = row.get("task")
    if task in ("predict", "sketch", "complete"):
        return task
    if task is not None:
        raise UserError(f"{row['file']}: VideoBench scores text-to-image, text-to-video, predict, sketch and "
                        f"complete rows, not task {task!r}")
    return "t2v" if row.get("frames", 1) > 1 else "t2i"


def score_media(task: str, media: Any, row: dict, scorer: str = DEFAULT_SCORER) -> tuple[bool, str]:
    if task == "t2i":
        from t2i.eval.shapesbench import score_image

        return score_image(media, row["prompt"], scorer)
    if task == "t2v":
        return score_clip(media, row["prompt"], scorer)
    if "truth" not in row:
        raise UserError(f"{row['file']}: a {task} row needs its source's `truth` to be scored (write the requests "
                        "with `t2i bench inputs --task ...`)")
    if task == "predict":
        return judge_predict(media, row["truth"], scorer)
    return (judge_sketch if task == "sketch" else judge_complete)(media, row["prompt"], row["truth"], scorer)


def summarize_video(records: Iterable[tuple[str, bool]]) -> dict:
    """Per-kind text-to-video accuracy, their mean (`overall`) and `novel` apart, as ShapesBench's."""
    return tally_kinds(records, parse_video_prompt, VIDEO_KINDS)


def score_dir(directory: str | Path, write: bool = True, progress: bool = True,
              scorer: str = DEFAULT_SCORER) -> dict:
    """Score a folder of images, clips and conditional-task outputs; writes DIR/videobench.json (under an older
    scorer DIR/videobench-SCORER.json) with one summary per task present (text-to-image as ShapesBench's)
    and one row per file."""
    from tqdm import tqdm

    version(scorer)
    directory = Path(directory)
    rows = read_index(directory)
    tasks = []
    for row in rows:  # every row checked before any is scored
        task = task_of(row)
        (parse_video_prompt if task in ("t2v", "predict") else parse_prompt)(row["prompt"])
        if not (directory / row["file"]).is_file():
            raise UserError(f"{directory / row['file']} listed in index.jsonl does not exist")
        tasks.append(task)
    per_row = []
    for row, task in tqdm(list(zip(rows, tasks, strict=True)), desc="VideoBench", disable=not progress, unit="item"):
        path = directory / row["file"]
        try:
            with Image.open(path) as im:
                im.load()
                media = from_stored(im, stored_frames(row))
        except (OSError, SyntaxError, ValueError) as e:
            raise UserError(f"cannot decode {path}: {e}; regenerate it or drop it from index.jsonl") from None
        if (task in ("t2v", "predict")) != isinstance(media, Clip):
            raise UserError(f"{path}: a {task} row needs {'a clip' if task in ('t2v', 'predict') else 'an image'}")
        ok, why = score_media(task, media, row, scorer)
        per_row.append({**{k: v for k, v in row.items() if k != "truth"}, "task": task, "ok": ok, "reason": why})
    result: dict[str, Any] = {"version": f"videobench-v1 ({version(scorer)} per frame)", "tasks": {}}
    for task in TASKS:
        mine = [r for r in per_row if r["task"] == task]
        if not mine:
            continue
        if task == "t2i":
            s = summarize(((r["prompt"], r["ok"]) for r in mine), scorer)
        elif task == "t2v":
            s = summarize_video((r["prompt"], r["ok"]) for r in mine)
        else:
            s = {"overall": sum(r["ok"] for r in mine) / len(mine), "counts": {task: len(mine)}}
        result["tasks"][task] = s
    if write:
        write_result(result_path(directory, "videobench", scorer), {**result, "items": per_row})
    return result


def format_video_table(result: dict) -> str:
    lines = [result["version"], f"{'task':<10}{'kind':<15}{'accuracy':>9}{'n':>6}"]
    for task, s in result["tasks"].items():
        for k, v in (s.get("kinds") or {}).items():
            lines.append(f"{task:<10}{k:<15}{'-' if v is None else f'{v:.3f}':>9}{s['counts'][k]:>6}")
        n = sum(v for k, v in s["counts"].items() if k != "novel")
        lines.append(f"{task:<10}{'overall':<15}{'-' if s['overall'] is None else format(s['overall'], '.3f'):>9}{n:>6}")
        if s.get("novel") is not None:
            lines.append(f"{task:<10}{'novel':<15}{s['novel']:>9.3f}{s['counts']['novel']:>6}")
    return "\n".join(lines)
