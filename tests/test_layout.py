"""The package's layout holds: data flows one way, the command -> the steps -> the pieces -> the ground
(ARCHITECTURE.md draws it), with no cycle, and the model file imports nothing of ours but its error type.

Read from the source with `ast`, every import counted, those inside functions too.
"""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in (SRC / "gptscratch").rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                # `from gptscratch import plot` imports the module gptscratch.plot
                deps |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                         for a in node.names}
        graph[name] = {d for d in deps if d in modules and d != name}
    return graph


def test_nothing_imports_the_cli():
    # but `python -m gptscratch`, which runs it
    assert [m for m, deps in import_graph().items() if "gptscratch.cli" in deps] == ["gptscratch.__main__"]


def test_no_import_cycles():
    graph, done, path = import_graph(), set(), []

    def visit(m: str) -> None:
        assert m not in path, "import cycle: " + " -> ".join([*path[path.index(m):], m])
        if m in done:
            return
        path.append(m)
        for d in sorted(graph[m]):
            visit(d)
        path.pop()
        done.add(m)

    for m in sorted(graph):
        visit(m)


def test_the_model_stands_alone():
    graph = import_graph()
    assert graph["gptscratch.model"] == {"gptscratch.errors"}
    # the benchmarks live outside the package, which neither imports them nor looks for the checkout around it
    sources = {p: p.read_text() for p in (SRC / "gptscratch").rglob("*.py")}
    assert [p.name for p, text in sources.items() if "import benchmarks" in text or "from benchmarks" in text] == []
    assert [p.name for p, text in sources.items() if "parents[2]" in text] == []


# ARCHITECTURE.md's layers, top to bottom; a module may import its own layer and those below, never one above
LAYERS = {
    "the command": {"gptscratch.cli", "gptscratch.__main__"},
    "the steps": {"gptscratch.data.prepare", "gptscratch.train.command", "gptscratch.train.loop", "gptscratch.generate",
                  "gptscratch.serve", "gptscratch.serve.api", "gptscratch.serve.engine", "gptscratch.evaluate",
                  "gptscratch.evaluate.hellaswag", "gptscratch.evaluate.loss", "gptscratch.evaluate.core",
                  "gptscratch.plot", "gptscratch.repl", "gptscratch.bpe"},
    "the pieces": {"gptscratch.model", "gptscratch.tokenizer", "gptscratch.data", "gptscratch.data.sources",
                   "gptscratch.data.shards", "gptscratch.data.loader", "gptscratch.train", "gptscratch.train.config",
                   "gptscratch.train.optim", "gptscratch.train.checkpoint", "gptscratch.train.rundir",
                   "gptscratch.train.fsdp", "gptscratch.train.distributed", "gptscratch.hf", "gptscratch.hf.gpt2",
                   "gptscratch.hf.modern", "gptscratch.hf.tokenizer", "gptscratch.hf.pretrained",
                   "gptscratch.mfu", "gptscratch.chat", "gptscratch.data.conversations",
                   "gptscratch"},  # the package's __init__ hands out GPT and GPTConfig
    "the ground": {"gptscratch.errors", "gptscratch.io", "gptscratch.paths", "gptscratch.testing",
                   "gptscratch.precision", "gptscratch.device"},
}


def test_every_module_has_a_layer_and_nothing_imports_a_layer_above_its_own():
    graph = import_graph()
    rank = {m: i for i, members in enumerate(LAYERS.values()) for m in members}
    assert sorted(set(graph) - set(rank)) == [], "a new module: give it its layer here and in ARCHITECTURE.md"
    upward = [(m, d) for m, deps in graph.items() for d in deps if rank[d] < rank[m]]
    assert upward == []
