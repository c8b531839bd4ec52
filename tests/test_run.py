"""The run layer (textopt.run), the recipes registry, the offline fake engine, and the package's import rules."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

import textopt as to
from textopt import recipes
from textopt.engines.base import Request
from textopt.engines.fake import FakeEngine, fake_reply
from textopt.run import (
    BACKUP, CHECKPOINT, AuthenticationFailed, Budgets, Callback, CheckpointError, Run, RunError, RunLocked, read_log,
)

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "textopt"


# -- budgets and usage ------------------------------------------------------------------------------
def test_stop_reasons_for_every_budget_and_completion():
    run = Run(None, kind="t", budgets=Budgets(tokens=100, calls=3, usd=0.5, metric_calls=10))
    assert run.stop_reason(step=0, total_steps=5) is None
    assert run.stop_reason(step=5, total_steps=5) == "completed"
    run.add_usage({"total_tokens": 100, "calls": 1})
    assert run.stop_reason(step=1, total_steps=5) == "budget_tokens"
    run = Run(None, kind="t", budgets=Budgets(calls=3))
    run.add_usage({"calls": 3})
    assert run.stop_reason(step=1, total_steps=None) == "budget_calls"
    run = Run(None, kind="t", budgets=Budgets(usd=0.5))
    run.add_usage({"cost_usd": 0.3})
    assert run.stop_reason(step=1, total_steps=None) is None
    run.add_usage({"cost_usd": 0.25})
    assert run.stop_reason(step=1, total_steps=None) == "budget_usd"
    run = Run(None, kind="t", budgets=Budgets(metric_calls=10))
    run.metric_calls = 9
    assert run.stop_reason(step=1, total_steps=None) is None
    assert run.stop_reason(step=1, total_steps=None, metric_calls=10) == "budget_metric_calls"
    with pytest.raises(ValueError, match="usd"):
        Budgets(usd=-1)


def test_track_counts_tokens_calls_and_cost_of_what_runs_inside():
    engine = to.ScriptedEngine("hello there")
    run = Run(None, kind="t")
    with run.track() as usage:
        engine.complete([{"role": "user", "content": "hi"}])
        engine.complete([{"role": "user", "content": "hi again"}])
    engine.complete([{"role": "user", "content": "outside"}])
    assert run.totals["calls"] == 2 == usage.calls
    assert run.totals["total_tokens"] == usage.total_tokens > 0
    assert run.totals["cost_usd"] == 0.0
    run.add_usage({"calls": 1, "cost_usd": 0.0123, "cost_known": False})
    assert run.totals["cost_usd"] == pytest.approx(0.0123) and run.totals["cost_known"] is False


# -- checkpoints ------------------------------------------------------------------------------------
def test_checkpoint_keeps_the_previous_one_and_falls_back_to_it(tmp_path, capsys):
    with Run(tmp_path / "r", kind="t") as run:
        run.add_usage({"total_tokens": 7, "calls": 1})
        run.save_checkpoint({"step": 1})
        run.save_checkpoint({"step": 2})
    newest = json.loads((tmp_path / "r" / CHECKPOINT).read_text())
    backup = json.loads((tmp_path / "r" / BACKUP).read_text())
    assert (newest["step"], backup["step"]) == (2, 1)
    assert newest["usage"]["total_tokens"] == 7 and newest["format"] == "textopt.checkpoint" and newest["kind"] == "t"

    (tmp_path / "r" / CHECKPOINT).write_bytes(b'{"format": "textopt.checkpoint", "step": \xff\xfe')  # torn + bad UTF-8
    again = Run(tmp_path / "r", kind="t", resume=True)
    assert again.load_checkpoint()["step"] == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and CHECKPOINT in err and "backup" in err
    assert again.totals["total_tokens"] == 7

    # a newest checkpoint that reads as JSON but that the owner can't apply (missing keys) also falls back
    (tmp_path / "r" / CHECKPOINT).write_text(json.dumps({"format": "textopt.checkpoint", "nostep": 1}))
    seen = []
    assert Run(tmp_path / "r", kind="t", resume=True).load_checkpoint(lambda s: seen.append(s["step"]))["step"] == 1
    assert seen == [1]


def test_unreadable_checkpoint_without_backup_is_one_line_naming_file_and_fix(tmp_path):
    folder = tmp_path / "r"
    folder.mkdir()
    (folder / CHECKPOINT).write_text("{not json")
    with pytest.raises(CheckpointError) as info:
        Run(folder, kind="t", resume=True).load_checkpoint()
    msg = str(info.value)
    assert "\n" not in msg and str(folder / CHECKPOINT) in msg and "delete" in msg
    assert Run(tmp_path / "empty", kind="t").load_checkpoint() is None


def test_lone_surrogate_in_state_still_checkpoints(tmp_path):
    with Run(tmp_path / "r", kind="t") as run:
        run.save_checkpoint({"value": "Answer \ud83d carefully."})
        run.log({"event": "step", "value": "x \udc00"})
    state = Run(tmp_path / "r", kind="t", resume=True).load_checkpoint()
    assert state["value"] == "Answer \ud83d carefully."
    assert len(read_log(tmp_path / "r")) == 1


# -- the lock ---------------------------------------------------------------------------------------
def test_second_run_on_a_directory_fails_at_once_and_reentry_is_fine(tmp_path):
    first = Run(tmp_path / "r", kind="t")
    with first:
        with first:  # re-entrant for the same Run (a job around a trainer)
            pass
        start = time.monotonic()
        with pytest.raises(RunLocked, match="in use by another run"):
            with Run(tmp_path / "r", kind="t", resume=True):
                pass
        assert time.monotonic() - start < 1.0
        code = ("import sys; from textopt.run import Run, RunLocked\n"
                f"try:\n    Run({str(tmp_path / 'r')!r}, kind='t', resume=True).open()\n"
                "except RunLocked as e:\n    print('LOCKED', e); sys.exit(3)\n")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        assert out.returncode == 3 and "LOCKED" in out.stdout
    with Run(tmp_path / "r", kind="t", resume=True):  # released at the end
        pass


def test_existing_run_needs_resume_and_kind_must_match(tmp_path):
    with Run(tmp_path / "r", kind="trainer", spec={"recipe": None}) as run:
        run.save_checkpoint({"step": 0})
        run.save_checkpoint({"step": 1})  # the same Run may go on writing
    with pytest.raises(FileExistsError, match="textopt resume"):
        Run(tmp_path / "r", kind="trainer").open()
    with pytest.raises(RunError, match="'trainer' run"):
        Run(tmp_path / "r", kind="aegis", resume=True).open()


# -- events and callbacks ---------------------------------------------------------------------------
class Recorder(Callback):
    def __init__(self):
        self.seen = []

    def on_start(self, run, info):
        self.seen.append(("start", info["step"]))

    def on_step(self, run, row):
        self.seen.append(("step", row["step"]))

    def on_eval(self, run, name, report):
        self.seen.append(("eval", name, report.mean))

    def on_candidate(self, run, candidate):
        self.seen.append(("candidate", candidate["id"]))

    def on_end(self, run, summary):
        self.seen.append(("end", summary["stopped"]))


def test_events_reach_the_log_and_every_callback_kind(tmp_path):
    from textopt.evaluate import EvalReport, EvalRow

    rec, lines = Recorder(), []
    with Run(tmp_path / "r", kind="t", callbacks=[rec, lines.append]) as run:
        run.start(step=0, total_steps=2)
        run.step({"step": 1, "val": 0.5})
        run.candidate({"id": 3, "parents": [0]})
        path = run.save_eval("val_step1", EvalReport([EvalRow({"q": 1}, "out", 1.0, "good"), EvalRow({"q": 2}, "x", 0.0, "bad")]))
        run.end(stopped="completed")
    assert rec.seen == [("start", 0), ("step", 1), ("candidate", 3), ("eval", "val_step1", 0.5), ("end", "completed")]
    assert [e["event"] for e in lines] == ["start", "step", "candidate", "eval", "end"]
    assert [e["event"] for e in read_log(tmp_path / "r")] == ["start", "step", "candidate", "eval", "end"]
    assert path == tmp_path / "r" / "evals" / "val_step1.jsonl" and len(path.read_text().splitlines()) == 2
    with pytest.raises(TypeError, match="callback"):
        Run(None, kind="t", callbacks=[42])


def test_plots_are_best_effort_one_line(tmp_path, capsys):
    run = Run(tmp_path / "r", kind="t")
    run.dir.mkdir(parents=True)

    def missing(path):
        raise ImportError("no matplotlib", name="matplotlib")

    def broken(path):
        raise RuntimeError("bad figure")

    assert run.plot(missing) is None and run.plot(broken) is None
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "matplotlib is not installed" in err[0] and "results are saved" in err[0]
    assert run.plot(lambda p: p.write_bytes(b"png")) == tmp_path / "r" / "curves.png"


def test_spec_checkpoint_and_log_are_scrubbed(tmp_path, monkeypatch):
    key = "sk-test-1234567890abcdefghij"
    monkeypatch.setenv("OPENAI_API_KEY", key)
    with Run(tmp_path / "r", kind="t", spec={"base_url": "http://user:hunter22@10.0.0.1/v1"}) as run:
        run.save_checkpoint({"failures": [{"error": f"401: Incorrect API key provided: {key}"}]})
        run.log({"event": "error", "error": f"Bearer {key}"})
        run.write_json("result.json", {"note": key})
    for name in ("spec.json", CHECKPOINT, "log.jsonl", "result.json"):
        text = (tmp_path / "r" / name).read_text()
        assert key not in text and "hunter22" not in text, name


def test_auth_failures_stop_the_run():
    run = Run(None, kind="t")
    run.check_failures([{"error": "parse error"}, "value did not change"])
    from textopt.optim.base import UpdateFailure

    with pytest.raises(AuthenticationFailed, match="credentials"):
        run.check_failures([UpdateFailure(1, "p", "openai engine 'm' failed (not retried): AuthenticationError: Error code: 401")])


# -- recipes ----------------------------------------------------------------------------------------
def test_recipe_registry_builds_resumes_and_refuses_unknowns(tmp_path):
    spec = recipes.RunSpec("optimize", {"engine": "fake", "task": "object_counting", "optimizer": "tgd", "steps": 1, "batch_size": 1, "eval_size": 2, "val_size": 1})
    job = recipes.build(spec, run_dir=tmp_path / "r", progress=False)
    result = job.fit().summary
    assert result["stopped"] == "completed" and result["steps"] == 1
    saved = json.loads((tmp_path / "r" / "spec.json").read_text())
    assert saved["recipe"] == "optimize" and saved["kind"] == "trainer" and saved["args"]["engine"] == "fake"

    more = recipes.resume(tmp_path / "r", steps=2)
    assert more.trainer.global_step == 1 and more.fit().summary["steps"] == 2
    assert json.loads((tmp_path / "r" / "spec.json").read_text())["args"]["steps"] == 2  # the override is kept
    with pytest.raises(RunError, match="cannot override"):
        recipes.resume(tmp_path / "r", rounds=3)
    with pytest.raises(RunError, match="unknown recipe"):
        recipes.build({"recipe": "nope", "args": {}})
    with pytest.raises(FileExistsError, match="textopt resume"):
        recipes.build(spec, run_dir=tmp_path / "r")
    seen = []
    again = to.resume(tmp_path / "r", callbacks=[seen.append], steps=3)  # the library's resume looks the recipe up too
    assert again.global_step == 2 and again.fit().rows[-1]["step"] == 3 and seen[0]["event"] == "start"

    @recipes.register("custom-test")
    def custom(spec, **kw):
        class Done(recipes.Job):
            async def afit(self):
                return recipes.JobResult({"echo": spec.args["x"]})
        return Done()

    done = recipes.build({"recipe": "custom-test", "args": {"x": 5}}).fit()
    assert done.summary == done.to_dict() == {"echo": 5} and done.best == {} and done.run_dir is None


def test_python_made_run_is_not_a_recipe(tmp_path):
    engine = to.ScriptedEngine('{"reasoning": "r", "new_value": "p2"}')
    p = to.Variable("p", role="prompt", requires_grad=True, name="p")
    llm = to.LLM(engine, system_prompt=p)
    to.Trainer(lambda ex: llm(ex.question), lambda ex, out: to.TextLoss("judge", engine=engine)(out),
               to.TGD([p], engine=engine), train=[to.datasets.Example("q", "a")], steps=1, run_dir=tmp_path / "r").fit()
    with pytest.raises(RunError, match="made from Python"):
        recipes.resume(tmp_path / "r")


# -- the run protocol -------------------------------------------------------------------------------
def test_trainer_search_and_coevolution_follow_one_run_protocol(tmp_path):
    from textopt.aegis import CoEvolution, Result
    from textopt.run import FitResult, Fittable
    from textopt.search import SearchResult

    for runner in (to.Trainer, to.Search, CoEvolution):
        assert callable(getattr(runner, "fit", None)) and callable(getattr(runner, "afit", None)), runner
    for result in (to.History, SearchResult, Result):
        fields = result.__dataclass_fields__
        assert all(hasattr(result, a) or a in fields for a in ("best", "history", "run_dir")) and "run_dir" in fields, result
    engine = to.ScriptedEngine('{"reasoning": "r", "new_value": "p2"}')
    p = to.Variable("p", role="prompt", requires_grad=True, name="p")
    llm = to.LLM(engine, system_prompt=p)
    trainer = to.Trainer(lambda ex: llm(ex.question), lambda ex, out: to.TextLoss("judge", engine=engine)(out),
                         to.TGD([p], engine=engine), train=[to.datasets.Example("q", "a")], steps=1, run_dir=tmp_path / "r")
    assert isinstance(trainer, Fittable)
    history = trainer.fit()
    assert isinstance(history, FitResult)
    assert history.best == {"p": p.value} and history.history[-1]["step"] == 1 and history.run_dir == str(tmp_path / "r")


def test_recipe_jobs_follow_the_run_protocol_and_carry_the_result_json_summary(tmp_path):
    from textopt.run import FitResult, Fittable

    assert not hasattr(recipes.Job, "run") and not hasattr(recipes.Job, "arun")  # one verb: fit
    for args, kind in (({"optimizer": "tgd", "steps": 1}, "trainer"), ({"optimizer": "search", "steps": 1}, "search")):
        spec = recipes.RunSpec("optimize", {"engine": "fake", "task": "object_counting", "batch_size": 1, "eval_size": 1,
                                            "val_size": 1, **args})
        job = recipes.build(spec, run_dir=tmp_path / kind, progress=False)
        assert isinstance(job, Fittable)
        result = job.fit()
        assert isinstance(result, FitResult) and isinstance(result, recipes.JobResult)
        saved = json.loads((tmp_path / kind / "result.json").read_text())
        assert result.to_dict() == result.summary and json.loads(json.dumps(result.summary)) == saved, kind
        assert result.summary["steps"] == 1, kind
        assert result.best == {"system_prompt": result.summary["final_prompt"]} and result.history, kind
        assert result.run_dir == str(tmp_path / kind) == result.summary["run_dir"], kind
    job = recipes.build(recipes.RunSpec("aegis", {"engine": "fake", "rounds": 1, "iterations": 1, "pool_size": 2,
                                                  "essays": 2}), run_dir=tmp_path / "aegis", progress=False)
    result = job.fit()
    assert isinstance(result, FitResult) and result.run_dir == str(tmp_path / "aegis")
    assert result.best["defense"] == result.summary["defense_prompt"] and result.history == result.summary["history"]
    assert json.loads(json.dumps(result.summary)) == json.loads((tmp_path / "aegis" / "result.json").read_text())


# -- the fake engine --------------------------------------------------------------------------------
def test_fake_engine_answers_the_requested_schema_not_the_prose():
    schema = {"type": "object", "properties": {"reasoning": {"type": "string"}, "new_value": {"type": "string"}},
              "required": ["reasoning", "new_value"]}
    nested = {"type": "object", "properties": {"suggestion": {"type": "object", "properties": {"a": {"type": "string"},
              "b": {"type": "string"}}}, "flag": {"type": "boolean"}, "score": {"type": "number"}}}
    for prose in ("Reply with JSON: new_value", "Totally different wording, no field names"):
        msgs = [{"role": "user", "content": prose}]
        reply = json.loads(fake_reply(Request(msgs, schema)))
        assert set(reply) == {"reasoning", "new_value"} and reply["new_value"]
        obj = json.loads(fake_reply(Request(msgs, nested)))
        assert set(obj["suggestion"]) == {"a", "b"} and isinstance(obj["flag"], bool) and isinstance(obj["score"], float)
        assert not fake_reply(Request(msgs)).startswith("{")
    one = fake_reply(Request([{"role": "user", "content": "x"}], schema))
    assert one == fake_reply(Request([{"role": "user", "content": "x"}], schema))  # deterministic
    engine = FakeEngine(cache=False)
    assert json.loads(engine.complete([{"role": "user", "content": "x"}], json_schema=schema).text)["new_value"]


# -- package rules ----------------------------------------------------------------------------------
def _imports(path: Path) -> list[tuple[int, str]]:
    """Every import in a module, module-level and inside functions, as absolute module names."""
    package = list(path.relative_to(ROOT).with_suffix("").parts)[:-1]  # a module's (or __init__'s) package
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.append((node.lineno, mod))
            out += [(node.lineno, f"{mod}.{a.name}") for a in node.names]
    return out


def test_only_the_cli_imports_commands():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel == "cli.py" or rel.startswith("commands/"):
            continue
        for line, mod in _imports(path):
            if mod == "textopt.commands" or mod.startswith("textopt.commands."):
                offenders.append(f"textopt/{rel}:{line} imports {mod}")
    assert offenders == []
    # the walker itself sees relative imports
    assert any(m.startswith("textopt.commands.") for _, m in _imports(PACKAGE / "cli.py"))  # relative imports
    assert "textopt.recipes" not in {m for _, m in _imports(PACKAGE / "train.py")}  # the Trainer never imports recipes
    assert "textopt.train.Trainer" in {m for _, m in _imports(PACKAGE / "recipes" / "registry.py")}  # relative, two dots


def test_modules_and_classes_stay_small():
    """Every module of textopt/ is at most 500 lines and every class at most 250 (the run layer's classes,
    once the largest, are held under 250 too)."""
    sizes, lines = {}, {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = path.relative_to(PACKAGE).as_posix()
        text = path.read_text(encoding="utf-8")
        lines[name] = len(text.splitlines())
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef):
                sizes[f"{name}:{node.name}"] = node.end_lineno - node.lineno + 1
    assert {"run/rundir.py", "recipes/__init__.py", "train.py", "aegis/loop.py", "engines/fake.py"} <= set(lines)
    assert max(sizes.values()) <= 250, sorted(sizes.items(), key=lambda kv: -kv[1])[:3]
    assert max(lines.values()) <= 500, sorted(lines.items(), key=lambda kv: -kv[1])[:3]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> tuple[dict[str, set[str]], list[str]]:
    """(module -> textopt modules it imports, in-function imports of textopt modules as "module:line").

    Every import counts toward the graph, at module level, under `if TYPE_CHECKING:` or inside a function:
    a circle a type checker or a late import hides is still a circle. `from pkg import name` is an edge to
    the submodule pkg.name when that is a module, else to the package itself (its `__init__`); importing a
    submodule is not counted as importing its package's `__init__` (Python runs it, but that is not a choice
    the importing module made)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    in_function: list[str] = []
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        nested = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                  for n in ast.walk(f) if isinstance(n, (ast.Import, ast.ImportFrom))}
        package = list(path.relative_to(ROOT).with_suffix("").parts)[:-1]
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else [])) \
                    if node.level else (node.module or "")
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
            ours = {t for t in targets if t in modules and t != name}
            if ours and id(node) in nested:
                in_function.append(f"{name}:{node.lineno} imports {', '.join(sorted(ours))}")
            graph[name] |= ours
    return graph, in_function


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each as a closed path."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(_path(graph, sorted(comp)))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _path(graph: dict[str, set[str]], comp: list[str]) -> list[str]:
    """One circle through the component's first module, for the failure message (a -> b -> a)."""
    start, inside = comp[0], set(comp)
    paths = {start: [start]}
    todo = [start]
    while todo:
        v = todo.pop(0)
        for w in sorted(graph[v] & inside):
            if w == start:
                return paths[v] + [start]
            if w not in paths:
                paths[w] = paths[v] + [w]
                todo.append(w)
    return comp


def test_the_cycle_check_sees_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_among_textopt_modules():
    graph, _ = _import_graph()
    assert "textopt.run.rundir" in graph and "textopt.run" in graph["textopt.train"]  # the walker sees packages
    assert _cycles(graph) == [], "import circles: " + "; ".join(" -> ".join(c) for c in _cycles(graph))


def test_no_textopt_module_is_imported_inside_a_function():
    """Imports inside functions are for optional heavy dependencies only (litellm, networkx, matplotlib,
    mlflow, llama_cpp...); a textopt module imported there would hide the real dependency graph."""
    _, in_function = _import_graph()
    assert in_function == []


def test_import_textopt_stays_light():
    code = ("import sys, textopt\nheavy = [m for m in ('filelock', 'tqdm', 'matplotlib', 'textopt.run', "
            "'textopt.recipes', 'textopt.commands') if m in sys.modules]\nprint(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_mlflow_callback_logs_params_metrics_and_artifacts_to_a_local_store(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    from textopt.run import MLflowCallback

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps the file store behind this switch
    uri = f"file:{tmp_path / 'mlruns'}"
    cb = MLflowCallback(uri, experiment="tests")
    spec = recipes.RunSpec("optimize", {"engine": "fake", "task": "object_counting", "optimizer": "tgd", "steps": 2, "batch_size": 1, "eval_size": 1, "val_size": 2})
    recipes.build(spec, run_dir=tmp_path / "run", callbacks=[cb], progress=False).fit()
    client = MlflowClient(uri)
    (found,) = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    assert found.info.status == "FINISHED" and found.data.tags["textopt.stopped"] == "completed"
    assert found.data.params["steps"] == "2" and found.data.params["engine"] == "fake" and found.data.params["kind"] == "trainer"
    val = client.get_metric_history(found.info.run_id, "val")
    assert [m.step for m in val] == [0, 1, 2]
    artifacts = {a.path for a in client.list_artifacts(found.info.run_id)}
    assert {"parameters.json", "history.json", "spec.json", "evals", "parameters"} <= artifacts
    evals = {a.path for a in client.list_artifacts(found.info.run_id, "evals")}
    assert {"evals/test_before.jsonl", "evals/val_step0.jsonl", "evals/val_step2.jsonl"} <= evals
    saved = json.loads(Path(client.download_artifacts(found.info.run_id, "parameters.json", str(tmp_path / "dl"))).read_text())
    assert saved["parameters"]["system_prompt"] == json.loads((tmp_path / "run" / "result.json").read_text())["final_prompt"]
