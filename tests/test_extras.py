"""litellm is an extra: without it the litellm and router engines refuse to be built in one line, a paid model's
cost is unknown (never a crash), local models stay $0, and a dollar budget that can't be held is refused before
any call. litellm's absence is simulated with sys.modules["litellm"] = None (an import then fails)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import textopt as to
from textopt.engines import pricing
from textopt.engines.usage import Usage
from textopt.run import Budgets, History

ROOT = Path(__file__).resolve().parents[1]
INSTALL = "pip install 'textopt[litellm]'"


@pytest.fixture
def no_litellm(monkeypatch):
    """litellm can't be imported, and the cost map / price cache start empty."""
    monkeypatch.setitem(sys.modules, "litellm", None)
    monkeypatch.setattr(pricing, "_cost_map", None)
    monkeypatch.setattr(pricing, "_prices", {})


@pytest.fixture
def fresh_prices(monkeypatch):
    monkeypatch.setattr(pricing, "_cost_map", None)
    monkeypatch.setattr(pricing, "_prices", {})


def test_pyproject_keeps_litellm_out_of_the_core_install():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not any(d.startswith("litellm") for d in project["dependencies"])
    extras = project["optional-dependencies"]
    assert any(d.startswith("litellm") for d in extras["litellm"])
    assert any(d.startswith("litellm") for d in extras["dev"])  # CI keeps testing the litellm paths
    assert any("litellm" in d and d.startswith("textopt[") for d in extras["all"])


@pytest.mark.parametrize("build, who", [
    (lambda: to.get_engine("litellm:openai/gpt-4o-mini", cache=False), "the litellm engine"),
    (lambda: to.get_engine("router", endpoints=[{"model": "m", "base_url": "http://127.0.0.1:9/v1"}], cache=False),
     "the router engine"),
])
def test_litellm_and_router_engines_fail_at_construction_in_one_line(no_litellm, build, who):
    assert not pricing.litellm_available()
    with pytest.raises(ImportError) as err:
        build()
    message = str(err.value)
    assert "\n" not in message and INSTALL in message and message.startswith(who)


def test_cost_of_a_paid_model_is_unknown_without_litellm(no_litellm):
    assert pricing.cost_map() == {}
    assert pricing.cost_usd(["gpt-4o-mini"], 1000, 100) is None
    usage = Usage()
    usage.add(1000, 100, cached=False, cost_usd=None)
    assert usage.cost_known is False
    text = pricing.format_cost(usage.cost_usd, usage.cost_known)
    assert text.startswith("n/a") and "textopt[litellm]" in text
    assert pricing.format_cost(0.25, False).startswith("at least $0.2500")


def test_cost_of_a_paid_model_is_priced_with_litellm(fresh_prices):
    pytest.importorskip("litellm")
    assert pricing.litellm_available()
    cost = pricing.cost_usd(["gpt-4o-mini"], 1000, 100)
    assert cost is not None and cost > 0
    assert pricing.format_cost(cost) == f"${cost:.4f}"
    assert "cost map" in pricing.format_cost(0.0, False)  # an unpriced model, litellm present: no install hint


def test_free_engines_stay_at_zero_dollars_without_litellm(no_litellm):
    eng = to.ScriptedEngine(reply="ok", cache=False, budget_usd=1.0)  # a free engine may carry a dollar budget
    eng.complete([{"role": "user", "content": "q"}])
    assert eng.usage.cost_usd == 0.0 and eng.usage.cost_known is True
    assert pricing.format_cost(eng.usage.cost_usd, eng.usage.cost_known) == "$0.0000"


def test_dollar_budget_on_a_paid_engine_is_refused_before_any_call(no_litellm):
    with pytest.raises(ImportError) as err:
        to.get_engine("openai:gpt-4o-mini", api_key="sk-test", base_url="http://127.0.0.1:9/v1", cache=False,
                      budget_usd=1.0)
    assert "\n" not in str(err.value) and INSTALL in str(err.value) and "budget_usd=" in str(err.value)
    # without a dollar budget the same engine builds (its cost is simply unknown)
    to.get_engine("openai:gpt-4o-mini", api_key="sk-test", base_url="http://127.0.0.1:9/v1", cache=False)


def test_run_dollar_budget_stops_once_a_price_is_unknown():
    """A run-level budget_usd can't be held once a call's price is unknown: the run stops instead of spending on."""
    assert Budgets(usd=1.0).exceeded({"cost_usd": 0.0, "cost_known": False}) == "budget_usd"
    assert Budgets(usd=1.0).exceeded({"cost_usd": 0.5}) is None
    assert Budgets().exceeded({"cost_usd": 0.0, "cost_known": False}) is None


def test_history_summary_shows_unknown_cost(no_litellm):
    h = History(rows=[{"step": 0, "tokens": 10, "calls": 1, "cost_usd": 0.0, "cost_known": False}])
    assert "cost: n/a (install textopt[litellm]" in h.summary()


def _cli_without_litellm(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    code = ("import sys; sys.modules['litellm'] = None; from textopt.cli import main; "
            f"raise SystemExit(main({list(args)!r}))")
    env = {**os.environ, "OPENAI_API_KEY": "sk-test"}  # a key is there: the refusal is about litellm, not the key
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, env=env, timeout=120)


def test_cli_litellm_engine_without_litellm_is_one_line(tmp_path):
    out = tmp_path / "run"
    r = _cli_without_litellm("optimize", "--engine", "litellm:openai/gpt-4o-mini", "--out", str(out), cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and INSTALL in lines[0] and "Traceback" not in r.stderr
    assert not out.exists()  # refused before a run directory was made


def test_cli_dollar_budget_without_litellm_is_one_line(tmp_path):
    out = tmp_path / "run"
    r = _cli_without_litellm("optimize", "--engine", "openai:gpt-4o-mini", "--base-url", "http://127.0.0.1:9/v1",
                             "--budget-usd", "1", "--out", str(out), cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "--budget-usd" in lines[0] and INSTALL in lines[0]
    assert not out.exists()
