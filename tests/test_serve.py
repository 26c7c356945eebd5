"""`t2i serve`: every endpoint and every refusal through FastAPI's test client on tiny runs, the worker's
cancel / queue / failure / shutdown behaviour, the CLI's one-line errors, and one real-browser test."""

import base64
import io
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from t2i import monitor
from t2i.api import train
from t2i.cli import main
from t2i.eval.shapesbench import read_index

fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from t2i.serve.app import LIMITS, MAX_BODY, create_app, load_runs  # noqa: E402


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    train("ldm", root / "ldm", preset="tiny", progress=False)
    train("ddpm", root / "ddpm", preset="tiny", progress=False)
    (root / "ldm" / "eval").mkdir(exist_ok=True)
    (root / "ldm" / "eval" / "shapesbench.json").write_text(json.dumps(
        {"version": "shapesbench-v2", "overall": 0.5, "novel": 0.25, "kinds": {}, "images": [{"x": 1}]}))
    return root


@pytest.fixture
def client(runs, tmp_path):
    loaded = load_runs([str(runs / "ldm"), str(runs / "ddpm")])
    app = create_app(loaded, tmp_path / "out", queue_size=2, preview_every=0.0)
    with TestClient(app) as c:
        c.out = tmp_path / "out"
        c.engine = app.state.t2i.engine
        yield c


def wait(c, job_id, states=("done", "failed", "cancelled"), timeout=60):
    t0 = time.time()
    while time.time() - t0 < timeout:
        job = c.get(f"/api/v1/jobs/{job_id}").json()
        if job["state"] in states:
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} still {job['state']}")


def png(size=(64, 64), color=(200, 30, 30), fmt="PNG", mode="RGB"):
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format=fmt)
    return base64.b64encode(buf.getvalue()).decode()


def test_runs_lists_families_tasks_option_schemas_and_eval(client):
    data = client.get("/api/v1/runs").json()
    by_id = {r["id"]: r for r in data["runs"]}
    assert set(by_id) == {"ldm", "ddpm"}
    ldm = by_id["ldm"]
    assert ldm["family"] == "ldm" and ldm["tasks"] == ["img2img"] and "diffusion" in ldm["stages"]
    steps = ldm["options"]["properties"]["steps"]
    assert steps["type"] == "integer" and steps["maximum"] == LIMITS["steps"] and steps["default"] == 4
    assert ldm["eval"]["overall"] == 0.5 and ldm["eval"]["novel"] == 0.25 and "images" not in ldm["eval"]
    assert by_id["ddpm"]["eval"] is None and by_id["ddpm"]["tasks"] == []


def test_generate_saves_a_scorable_folder_with_parameters_and_history(client):
    r = client.post("/api/v1/generate", json={"run": "ldm", "prompt": "a red circle", "n": 2, "seed": 7, "steps": 3})
    assert r.status_code == 202
    job = wait(client, r.json()["id"])
    assert job["state"] == "done" and job["progress"] == 1.0 and job["seeds"] == [7, 8]
    assert job["options"]["steps"] == 3 and job["preview"] is not None
    assert client.get(job["preview"]).headers["content-type"] == "image/png"
    im = Image.open(io.BytesIO(client.get(job["images"][0]).content))
    assert im.size == (64, 64)
    text = im.text["parameters"]
    assert text.startswith("a red circle\n") and "Steps: 3" in text and "Seed: 7" in text and "Model: ldm" in text
    rows = read_index(client.out)  # the ShapesBench folder contract
    assert [r["seed"] for r in rows] == [7, 8] and all((client.out / r["file"]).is_file() for r in rows)
    hist = client.get("/api/v1/history").json()["images"]
    assert {h["seed"] for h in hist} == {7, 8} and all(h["job"] == job["id"] for h in hist)
    # the same seed again gives the same image: the stored parameters re-make it
    again = wait(client, client.post("/api/v1/generate", json={"run": "ldm", "prompt": "a red circle", "seed": 7,
                                                               "steps": 3}).json()["id"])
    assert client.get(again["images"][0]).content == client.get(job["images"][0]).content or \
        Image.open(io.BytesIO(client.get(again["images"][0]).content)).tobytes() == im.tobytes()


def test_history_survives_a_restart(client, runs):
    job = wait(client, client.post("/api/v1/generate", json={"run": "ddpm", "prompt": "x", "seed": 1}).json()["id"])
    app = create_app(load_runs([str(runs / "ddpm")]), client.out)
    with TestClient(app) as c2:
        hist = c2.get("/api/v1/history").json()["images"]
        assert [h["job"] for h in hist] == [job["id"]]
        assert c2.get(hist[0]["url"]).status_code == 200


def test_img2img_upload_and_upload_rules(client):
    ok = client.post("/api/v1/generate", json={"run": "ldm", "prompt": "a red circle", "image": png(), "strength": 0.5,
                                                "steps": 3})
    assert ok.status_code == 202 and wait(client, ok.json()["id"])["task"] == "img2img"
    cases = {
        "not valid base64": {"image": "!!notbase64!!"},
        "not a readable PNG or JPEG": {"image": base64.b64encode(b"hello, not an image").decode()},
        "a GIF file": {"image": png(fmt="GIF", mode="P", color=1)},
        "at most 512 px a side": {"image": png(size=(600, 20))},
        "at most 4194304 bytes": {"image": base64.b64encode(b"\x89PNG" + b"\0" * (LIMITS["upload_bytes"] + 10)).decode()},
        "not supported by run ldm": {"image": png(), "mask": png(mode="L", color=255)},
        "needs an input image": {"task": "img2img"},
        "unknown task": {"task": "dance", "image": png()},
        "not supported by run ddpm": {"run": "ddpm", "image": png()},
    }
    for expect, extra in cases.items():
        r = client.post("/api/v1/generate", json={"run": "ldm", "prompt": "x", **extra})
        assert r.status_code == 422 and expect in r.json()["error"], (expect, r.json())


def test_every_bound_and_type_is_a_422_naming_the_field(client):
    cases = [({"n": 17}, "n"), ({"n": 0}, "n"), ({"steps": 251}, "steps: 251 is out of bounds"),
             ({"steps": 2.5}, "steps: must be an integer"), ({"guidance": "high"}, "guidance: must be a finite"),
             ({"guidance": 1e300}, "guidance: 1e+300 is out of bounds"), ({"prompt": "x" * 1001}, "prompt"),
             ({"prompt": "   "}, "prompt: empty"), ({"seed": -1}, "seed"), ({"seed": 2**40}, "seed"), ({"seed": 2**32 - 1, "n": 2}, "seed: 4294967295 + n - 1"),
             ({"n": True}, "n"), ({"sampler": "zzz"}, "sampler: 'zzz' is unknown"), ({"bogus": 1}, "unknown field"),
             ({"rerank": "/etc"}, "rerank: '/etc' is not a CLIP run on this server"),
             ({"negative_prompt": "blue", "run": "ddpm"}, "negative_prompt: ddpm runs do not take"),
             ({"strength": 0}, "strength")]
    for extra, expect in cases:
        r = client.post("/api/v1/generate", json={"run": "ldm", "prompt": "a red circle", **extra})
        assert r.status_code == 422 and expect in r.json()["error"], (extra, r.json())
    raw = client.post("/api/v1/generate", content=b'{"run": "ldm", "prompt": "x", "guidance": NaN}',
                      headers={"content-type": "application/json"})
    assert raw.status_code == 422 and "guidance" in raw.json()["error"]
    for body in (b"{not json", b"[1, 2]", b'"a string"'):
        r = client.post("/api/v1/generate", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 422 and "error" in r.json()
    big = client.post("/api/v1/generate", content=b"x" * (MAX_BODY + 1), headers={"content-type": "application/json"})
    assert big.status_code == 413 and "body over" in big.json()["error"]


def test_a_negative_prompt_replaces_the_empty_caption_of_guidance(client):
    def image(**extra):
        job = wait(client, client.post("/api/v1/generate", json={"run": "ldm", "prompt": "a red circle", "seed": 3,
                                                                 "steps": 3, "guidance": 4.0, **extra}).json()["id"])
        assert job["state"] == "done", job
        return Image.open(io.BytesIO(client.get(job["images"][0]).content)).tobytes()

    plain = image()
    assert image(negative_prompt="") == plain
    assert image(negative_prompt="a blue square") != plain
    schema = {r["id"]: r for r in client.get("/api/v1/runs").json()["runs"]}
    assert "negative_prompt" in schema["ldm"]["options"]["properties"]
    assert "negative_prompt" not in schema["ddpm"]["options"]["properties"]


def test_ids_are_looked_up_never_joined_into_paths(client):
    for path in ("/api/v1/images/..%2F..%2Frun.json", "/api/v1/images/%2Fetc%2Fpasswd", "/api/v1/jobs/..%2Fx",
                 "/api/v1/images/index.jsonl", "/api/v1/nothing", "/api/v1/jobs/none/preview"):
        r = client.get(path)
        assert r.status_code == 404 and "error" in r.json(), path
    r = client.post("/api/v1/generate", json={"run": "../ldm", "prompt": "x"})
    assert r.status_code == 404 and "no run" in r.json()["error"]
    assert client.delete("/api/v1/runs").status_code == 405


def test_training_curves_of_a_run_are_drawn_and_redrawn_when_its_log_grows(client, runs):
    listed = {r["id"]: r for r in client.get("/api/v1/runs").json()["runs"]}
    assert listed["ldm"]["curves"] is True
    r = client.get("/api/v1/runs/ldm/curves.png")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(r.content)).size[0] > 500
    png_path = client.out / "curves" / "ldm.png"
    first = png_path.stat().st_mtime
    assert client.get("/api/v1/runs/ldm/curves.png").content == r.content  # unchanged logs: the same drawing
    log = runs / "ldm" / "log.csv"
    stat = log.stat()
    try:
        time.sleep(0.02)
        log.touch()
        assert client.get("/api/v1/runs/ldm/curves.png").status_code == 200
        assert png_path.stat().st_mtime > first
    finally:
        import os

        os.utime(log, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    r = client.get("/api/v1/runs/nothing/curves.png")
    assert r.status_code == 404 and "no run 'nothing'" in r.json()["error"]
    assert client.get("/api/v1/runs/..%2Fldm/curves.png").status_code == 404  # an id, never a path


def test_cancel_a_queued_and_a_running_job_and_the_queue_bound(client):
    engine = client.engine
    with engine.compute:  # the worker cannot start anything: jobs wait in the queue
        first = client.post("/api/v1/generate", json={"run": "ldm", "prompt": "x"}).json()["id"]
        t0 = time.time()
        while engine.runs["ldm"].queue.qsize() and time.time() - t0 < 5:
            time.sleep(0.01)  # the worker holds `first`, waiting for the lock
        queued = [client.post("/api/v1/generate", json={"run": "ldm", "prompt": "x"}) for _ in range(2)]
        assert all(r.status_code == 202 for r in queued)
        full = client.post("/api/v1/generate", json={"run": "ldm", "prompt": "x"})
        assert full.status_code == 429 and full.headers["retry-after"] and "full" in full.json()["error"]
        other = client.post("/api/v1/generate", json={"run": "ddpm", "prompt": "x"})  # another run's queue
        assert other.status_code == 202
        cancelled = client.post(f"/api/v1/jobs/{queued[0].json()['id']}/cancel").json()
        assert cancelled["state"] == "cancelled"
    assert wait(client, first)["state"] == "done"
    assert wait(client, queued[1].json()["id"])["state"] == "done"

    pipe = engine.runs["ldm"].pipe
    slow = pipe.generate

    def crawl(*args, **kwargs):
        for i in range(2000):
            monitor.step(i, 2000)
            time.sleep(0.005)
        return slow(*args, **kwargs)

    pipe.generate = crawl
    try:
        job = client.post("/api/v1/generate", json={"run": "ldm", "prompt": "x"}).json()["id"]
        running = wait(client, job, states=("running",))
        t0 = time.time()
        while client.get(f"/api/v1/jobs/{job}").json()["progress"] == 0 and time.time() - t0 < 5:
            time.sleep(0.02)
        mid = client.get(f"/api/v1/jobs/{job}").json()
        assert 0 < mid["progress"] < 1 and mid["eta_s"] > 0 and running["state"] == "running"
        before = len(read_index(client.out))
        client.post(f"/api/v1/jobs/{job}/cancel")
        assert wait(client, job)["state"] == "cancelled"
        assert len(read_index(client.out)) == before  # nothing half-saved
    finally:
        pipe.generate = slow


def test_waiting_jobs_with_the_same_options_share_a_call_and_get_their_own_images(client):
    engine = client.engine
    post = lambda **b: client.post("/api/v1/generate", json={"run": "ldm", "steps": 3, **b}).json()["id"]  # noqa: E731
    with engine.compute:
        first = post(prompt="a red circle", seed=1)
        t0 = time.time()
        while engine.runs["ldm"].queue.qsize() and time.time() - t0 < 5:
            time.sleep(0.01)
        same = post(prompt="two blue squares", seed=9, n=2)
        other = post(prompt="a red circle", seed=1, steps=4)  # other options: a call of its own
    jobs = [wait(client, j) for j in (first, same, other)]
    assert [j["state"] for j in jobs] == ["done"] * 3
    assert [j["shared_with"] for j in jobs] == [1, 1, 0]
    alone = wait(client, post(prompt="two blue squares", seed=10))
    assert alone["shared_with"] == 0
    pixels = lambda url: Image.open(io.BytesIO(client.get(url).content)).tobytes()  # noqa: E731
    assert pixels(alone["images"][0]) == pixels(jobs[1]["images"][1])


def test_a_failing_generation_fails_its_job_and_the_server_keeps_serving(client):
    pipe = client.engine.runs["ddpm"].pipe
    real = pipe.generate

    def boom(*args, **kwargs):
        raise RuntimeError("the network broke")

    pipe.generate = boom
    try:
        job = wait(client, client.post("/api/v1/generate", json={"run": "ddpm", "prompt": "x"}).json()["id"])
        assert job["state"] == "failed" and "RuntimeError: the network broke" in job["error"]
    finally:
        pipe.generate = real
    assert wait(client, client.post("/api/v1/generate", json={"run": "ddpm", "prompt": "x"}).json()["id"])["state"] == "done"


def test_events_stream_the_job_until_it_ends(client):
    job = client.post("/api/v1/generate", json={"run": "ldm", "prompt": "a blue square", "steps": 3}).json()["id"]
    with client.stream("GET", f"/api/v1/jobs/{job}/events") as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[5:]) for line in r.iter_lines() if line.startswith("data:")]
    assert events[-1]["state"] == "done" and len(events[-1]["images"]) == 1
    progress = [e["progress"] for e in events]
    assert progress == sorted(progress)


def test_compare_runs_one_prompt_and_seed_on_each_run(client):
    r = client.post("/api/v1/compare", json={"runs": ["ldm", "ddpm"], "prompt": "a red circle", "seed": 5,
                                             "guidance": 2.0, "steps": 3}).json()
    by_run = {j["run"]: j for j in r["jobs"]}
    assert by_run["ddpm"]["ignored"] == ["guidance"] and by_run["ldm"]["ignored"] == []
    jobs = {run: wait(client, j["id"]) for run, j in by_run.items()}
    assert all(j["state"] == "done" and j["seeds"] == [5] and j["group"] == r["group"] for j in jobs.values())
    assert jobs["ldm"]["options"]["guidance"] == 2.0 and jobs["ddpm"]["options"]["guidance"] == 1.0
    assert client.post("/api/v1/compare", json={"runs": ["ldm", "zzz"], "prompt": "x"}).status_code == 404


def test_token_guards_the_api_and_shutdown_cancels_what_waits(runs, tmp_path):
    app = create_app(load_runs([str(runs / "ddpm")]), tmp_path / "out", token="s3cret-token")
    with TestClient(app) as c:
        assert c.get("/api/v1/runs").status_code == 401
        wrong = c.get("/api/v1/runs", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and "token" in wrong.json()["error"] and "s3cret" not in wrong.text
        ok = {"Authorization": "Bearer s3cret-token"}
        assert c.get("/api/v1/runs", headers=ok).status_code == 200
        assert c.get("/").status_code == 200  # the page itself holds no data; it asks for the token
        engine = app.state.t2i.engine
        engine.compute.acquire()
        try:
            ids = [c.post("/api/v1/generate", headers=ok, json={"run": "ddpm", "prompt": "x"}).json()["id"]
                   for _ in range(2)]
        finally:
            engine.compute.release()
        t0 = time.time()
        while engine.jobs[ids[0]].state != "running" and time.time() - t0 < 5:
            time.sleep(0.01)
        engine.compute.acquire()  # hold the second one in the queue until shutdown
        engine.compute.release()
    assert engine.jobs[ids[0]].state in ("done", "cancelled") and engine.jobs[ids[1]].state in ("done", "cancelled")
    assert not engine.accepting
    saved = read_index(tmp_path / "out") if (tmp_path / "out" / "index.jsonl").exists() else []
    assert len(saved) == sum(engine.jobs[i].state == "done" for i in ids)


def test_monitor_progress_eta_and_cancel():
    seen = []
    m = monitor.Monitor(lambda mon: seen.append(mon.progress), preview_every=0)
    with monitor.watching(m):
        monitor.plan(2)
        for _loop in range(2):
            for i in range(4):
                monitor.step(i, 4, preview=lambda: "img")
    assert seen == [0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0] and m.preview == "img" and m.eta_s == 0
    m.cancel()
    with monitor.watching(m), pytest.raises(monitor.Cancelled):
        monitor.step(0, 4)
    monitor.step(0, 4)  # outside `watching` nothing is reported


def test_cli_serve_one_line_errors(runs, tmp_path, capsys):
    assert main(["serve", str(tmp_path / "missing")]) == 2
    assert "not a run folder" in capsys.readouterr().err
    assert main(["serve", str(runs / "ldm"), "--host", "0.0.0.0"]) == 2
    assert "--token" in capsys.readouterr().err
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert main(["serve", str(runs / "ldm"), "--port", str(port)]) == 2
        assert "choose another --port" in capsys.readouterr().err
    unfinished = tmp_path / "unfinished"
    shutil.copytree(runs / "ddpm", unfinished)
    meta = json.loads((unfinished / "run.json").read_text())
    meta["stages_done"] = []
    (unfinished / "run.json").write_text(json.dumps(meta))
    assert main(["serve", str(unfinished)]) == 2
    assert "t2i train --resume" in capsys.readouterr().err


def start_server(runs, out, *extra):
    """A real `t2i serve` in a subprocess on a free port, once it answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "t2i.cli", "serve", *map(str, runs), "--port", str(port),
                               "--out", str(out), "-q", *extra], stderr=subprocess.PIPE, text=True)
    for _ in range(300):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/runs", timeout=1)
            return server, f"http://127.0.0.1:{port}"
        except OSError:
            assert server.poll() is None, f"t2i serve exited: {server.stderr.read()}"
            time.sleep(0.1)
    server.kill()
    raise AssertionError("t2i serve did not answer")


def test_ctrl_c_finishes_the_running_job_and_loses_no_result(runs, tmp_path):
    import signal

    import httpx

    server, base = start_server([runs / "ldm"], tmp_path / "out")
    try:
        job = httpx.post(base + "/api/v1/generate", json={"run": "ldm", "prompt": "x", "n": 16, "steps": 250}).json()["id"]
        queued = httpx.post(base + "/api/v1/generate", json={"run": "ldm", "prompt": "y"}).json()["id"]
        t0 = time.time()
        while httpx.get(f"{base}/api/v1/jobs/{job}").json()["state"] == "queued" and time.time() - t0 < 20:
            time.sleep(0.02)
        server.send_signal(signal.SIGINT)
        assert server.wait(60) in (0, 130)
    finally:
        if server.poll() is None:
            server.kill()
    rows = read_index(tmp_path / "out")
    assert [r["job"] for r in rows] == [job] * 16  # the running job finished; the queued one was cancelled
    assert all((tmp_path / "out" / r["file"]).is_file() for r in rows) and queued not in {r["job"] for r in rows}
    assert not list((tmp_path / "out").glob(".*.tmp"))


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium: install it (apt-get install -y chromium) to run the "
                    "browser test; .ci/run does")
def test_the_page_generates_and_compares_in_a_real_browser(runs, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api")
    server, base = start_server([runs / "ldm", runs / "ddpm"], tmp_path / "out")
    try:
        with playwright.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            page.goto(base + "/")
            page.fill("#prompt", "a red circle")
            page.fill("#n", "2")
            page.click("#go")
            page.wait_for_function("() => [...document.querySelectorAll('#results figure img')]"
                                   ".filter(i => i.complete && i.naturalWidth > 0).length == 2", timeout=60000)
            spread = page.evaluate("""() => {
                const i = document.querySelector('#results figure img'), c = document.createElement('canvas');
                c.width = i.naturalWidth; c.height = i.naturalHeight;
                const x = c.getContext('2d'); x.drawImage(i, 0, 0);
                const d = x.getImageData(0, 0, c.width, c.height).data;
                let lo = 255, hi = 0;
                for (let k = 0; k < d.length; k += 4) { lo = Math.min(lo, d[k]); hi = Math.max(hi, d[k]); }
                return [c.width, hi - lo]; }""")
            assert spread[0] == 64 and spread[1] > 20  # rendered, and not one flat colour
            assert page.inner_text("#status").startswith("Done")
            page.screenshot(path=str(tmp_path / "generate.png"))
            page.click("nav button[data-tab=cmp]")
            page.click("#cgo")
            page.wait_for_function("() => document.querySelectorAll('#cout .col img').length == 4", timeout=60000)
            assert "sampled in" in page.inner_text("#cout")
            page.screenshot(path=str(tmp_path / "compare.png"), full_page=True)
            browser.close()
        assert Path(tmp_path / "compare.png").stat().st_size > 0
    finally:
        server.terminate()
        server.wait(30)


def test_unclip_variations_and_text_diffs_through_the_api(tmp_path):
    """A pair-of-strings option (unCLIP's text_diff) is an array in the schema and checked as one."""
    train("unclip", tmp_path / "unclip", preset="tiny", progress=False)
    app = create_app(load_runs([str(tmp_path / "unclip")]), tmp_path / "out", queue_size=2, preview_every=0.0)
    with TestClient(app) as c:
        run = c.get("/api/v1/runs").json()["runs"][0]
        assert "variation" in run["tasks"]
        prop = run["options"]["properties"]["text_diff"]
        assert prop["type"] == "array" and prop["maxItems"] == 2
        r = c.post("/api/v1/generate", json={"run": "unclip", "prompt": "", "task": "variation", "image": png(),
                                             "text_diff": ["a red circle", "a blue circle"], "stop_at": "base"})
        assert r.status_code == 202, r.json()
        job = wait(c, r.json()["id"])
        assert job["state"] == "done" and job["task"] == "variation", job
        for bad in ("a red circle", ["one"], ["a", 3]):
            r = c.post("/api/v1/generate", json={"run": "unclip", "prompt": "", "task": "variation", "image": png(),
                                                 "text_diff": bad})
            assert r.status_code == 422 and "text_diff" in r.json()["error"], (bad, r.json())
