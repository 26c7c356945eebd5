"""Imports run one way, downward (docs/architecture.md): a part never imports a family, the trainer, a report
or the surface. Read from the source, so a new upward import fails here before it tangles anything."""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "t2i"
BOTTOM = {"errors", "config", "configs", "runtime", "images", "monitor"}
PARTS = {"nn", "data", "codecs", "diffusion", "tokens", "text"}
ORDER = [BOTTOM, PARTS, {"train"}, {"families"}, {"eval", "api", "cli", "serve", "__init__"}]
ALLOWED = {"eval.shapesbench", "eval.videobench"}  # the exact scorers: the measure parts low enough for probes


def layer_of(module: str) -> int:
    top = module.split(".")[0]
    return next(i for i, names in enumerate(ORDER) if top in names)


def t2i_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module under t2i) for every import in a file, function-local ones included."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name[4:] or "__init__") for a in node.names if a.name.split(".")[0] == "t2i"]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "t2i":
            base = node.module[4:]
            if base:
                out.append((node.lineno, base))
            else:  # from t2i import runtime, load
                out += [(node.lineno, a.name) for a in node.names]
    return out


def modules() -> list[Path]:
    return sorted(p for p in SRC.rglob("*.py"))


def violations(path: Path) -> list[str]:
    rel = path.relative_to(SRC).with_suffix("")
    me = ".".join(rel.parts)
    mine = layer_of(me)
    bad = []
    for line, mod in t2i_imports(path):
        if mod in ALLOWED or any(mod.startswith(a + ".") for a in ALLOWED):
            continue
        try:
            theirs = layer_of(mod)
        except StopIteration:
            bad.append(f"{rel}:{line} imports t2i.{mod}, which is in no layer")
            continue
        if theirs > mine:
            bad.append(f"{rel}:{line} imports t2i.{mod} (layer {theirs} above its own {mine})")
    return bad


def test_every_module_is_in_a_layer():
    for p in modules():
        layer_of(".".join(p.relative_to(SRC).with_suffix("").parts))


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(SRC)))
def test_imports_run_downward(path):
    assert violations(path) == []


def test_the_check_catches_an_upward_import(tmp_path, monkeypatch):
    bad = tmp_path / "t2i" / "nn" / "x.py"
    bad.parent.mkdir(parents=True)
    bad.write_text("def f():\n    from t2i.train.trainer import Trainer\n    import t2i\n    return t2i.load\n")
    monkeypatch.setattr(__import__(__name__), "SRC", tmp_path / "t2i")
    assert len(violations(bad)) == 2
