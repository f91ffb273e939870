"""ray_fer's imports point one way: storage/config → data → models/methods → train →
tune and the command lines. No module imports another that (directly or not) imports it,
counting imports inside functions. Loading a config needs neither Ray nor torch, and the
inference paths (predict on a checkpoint or an ONNX file, export, explain on image files)
run with ``import ray`` made to fail."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import cv2
import pytest
from support.trained import synthetic_faces, train_checkpoint

PACKAGE = Path(__file__).resolve().parents[1] / "ray_fer"
#: Layers from the bottom up, by module prefix (the longest matching prefix decides).
LAYERS = (
    ("base", ("ray_fer", "ray_fer.errors", "ray_fer.storage", "ray_fer.config",
              "ray_fer.cluster")),
    ("data", ("ray_fer.data", "ray_fer.ingest", "ray_fer.reports")),
    ("models", ("ray_fer.models", "ray_fer.explain", "ray_fer.checkpoint")),
    ("methods", ("ray_fer.methods",)),
    ("train", ("ray_fer.train",)),
    ("tune", ("ray_fer.tuning",)),
    ("cli", ("ray_fer.tune", "ray_fer.train.__main__", "ray_fer.evaluate", "ray_fer.predict",
             "ray_fer.export", "ray_fer.explain.__main__", "ray_fer.ensemble")),
)


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def import_graph() -> dict[str, set[str]]:
    """Module → the ray_fer modules it imports anywhere in its source (functions too).

    ``from package import name`` depends on ``package.name`` when that is a module (as
    ``import package.name`` does), else on ``package``.
    """
    modules = _modules()

    def owner(name: str) -> str:
        while name not in modules:
            name = name.rpartition(".")[0]
        return name

    graph = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                deps |= {owner(a.name) for a in node.names if a.name.startswith("ray_fer")}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ray_fer"):
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    deps.add(full if full in modules else owner(node.module))
        graph[name] = deps - {name}
    return graph


def layer_of(module: str) -> int:
    matches = [(len(prefix), rank) for rank, (_, prefixes) in enumerate(LAYERS)
               for prefix in prefixes if module == prefix or module.startswith(prefix + ".")]
    assert matches, f"{module} is in no layer: add it to LAYERS"
    return max(matches)[1]


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_graph_sees_function_level_imports():
    graph = import_graph()
    # tune.py imports the worker (for its schedule metric) inside asha_settings only.
    assert "ray_fer.train.worker" in graph["ray_fer.tune"]
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_module_imports_itself_through_others():
    assert _cycle(import_graph()) is None


def test_layers_import_only_downwards():
    upward = sorted((module, dep) for module, deps in import_graph().items() for dep in deps
                    if layer_of(dep) > layer_of(module))
    assert not upward, [f"{m} ({LAYERS[layer_of(m)][0]}) imports {d} "
                        f"({LAYERS[layer_of(d)][0]})" for m, d in upward]


def test_the_loop_and_the_tools_name_no_method():
    """Only the registry knows the methods: no module outside ray_fer/methods imports one
    (the registry, the shared building blocks and metrics excepted)."""
    shared = {"ray_fer.methods", "ray_fer.methods.registry", "ray_fer.methods.base",
              "ray_fer.methods.classify", "ray_fer.methods.metrics", "ray_fer.methods.optim",
              "ray_fer.methods.va"}
    named = sorted((module, dep) for module, deps in import_graph().items()
                   if not module.startswith("ray_fer.methods")
                   for dep in deps if dep.startswith("ray_fer.methods") and dep not in shared)
    assert not named, named


#: Makes ``import ray`` (and its submodules) fail in the process it runs in.
NO_RAY = """
import sys

class NoRay:
    def find_spec(self, name, path=None, target=None):
        if name == "ray" or name.startswith("ray."):
            raise ImportError(f"{name} imported on a path that must not need Ray")
        return None

sys.meta_path.insert(0, NoRay())
"""


def _without_ray(code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", NO_RAY + code], cwd=cwd, capture_output=True,
                          text=True, timeout=600)


def _cli(module: str, *argv: str) -> str:
    return (f"import runpy; sys.argv = [{module!r}, *{list(argv)!r}]\n"
            f"try:\n    runpy.run_module({module!r}, run_name='__main__')\n"
            f"except SystemExit as exit:\n    assert not exit.code, exit.code\n")


def test_the_blocker_blocks(tmp_path):
    done = _without_ray("import ray_fer.data.stream", tmp_path)
    assert done.returncode != 0 and "must not need Ray" in done.stderr


def test_loading_a_config_imports_neither_ray_nor_torch(tmp_path):
    done = _without_ray(
        "from ray_fer.config import Config, build_config\n"
        "cfg = build_config('deep_emotion', {'train': {'epochs': 3}}, sets=['optim.lr=0.1'])\n"
        "assert Config.from_dict(cfg.to_dict()) == cfg\n"
        "assert 'torch' not in sys.modules, 'torch'\n", tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture(scope="module")
def checkpoint_and_faces(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("no-ray")
    checkpoint = train_checkpoint(folder / "run" / "checkpoint_epoch-0000", steps=2)
    faces, _, _, _ = synthetic_faces(subjects=1, per_subject=3)
    images = folder / "faces"
    images.mkdir()
    for i, face in enumerate(faces):
        cv2.imwrite(str(images / f"{i}.png"), face)
    return checkpoint, images


@pytest.mark.slow
def test_predict_export_and_explain_run_without_ray(checkpoint_and_faces, tmp_path):
    checkpoint, images = checkpoint_and_faces
    onnx = tmp_path / "model.onnx"
    steps = [
        _cli("ray_fer.export", str(checkpoint), "--format", "onnx", "--out", str(onnx)),
        _cli("ray_fer.predict", str(checkpoint), str(images), "--out", str(tmp_path / "p1"),
             "--detector", "haar", "--device", "cpu"),
        _cli("ray_fer.predict", str(onnx), str(images), "--out", str(tmp_path / "p2"),
             "--detector", "haar", "--device", "cpu"),
        _cli("ray_fer.explain", str(checkpoint), "--images", str(images), "--method",
             "gradcam,occlusion", "--out", str(tmp_path / "explained"), "--device", "cpu"),
    ]
    done = _without_ray("\n".join(steps), tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert onnx.is_file() and (tmp_path / "explained" / "grid.png").is_file()
    assert (tmp_path / "p1" / "predictions.jsonl").read_text().count("\n") == 3
    assert (tmp_path / "p2" / "predictions.jsonl").read_text().count("\n") == 3
