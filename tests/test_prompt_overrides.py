"""Editable optimizer prompts: a template directory (set_template_dir / $TEXTOPT_PROMPTS) and per-optimizer
templates={...}; a missing or broken override is one line naming the file, raised when the optimizer is built;
the step log (reasoning and diff) survives a checkpoint."""
from __future__ import annotations

import json

import pytest

import textopt as to
from textopt import prompts
from textopt.prompts import TemplateError, prompt_dir

UPDATE = json.dumps({"reasoning": "be specific", "new_value": "Answer with the city name only."})


@pytest.fixture(autouse=True)
def _no_override_dir(monkeypatch):
    monkeypatch.delenv("TEXTOPT_PROMPTS", raising=False)
    prompts.set_template_dir(None)
    yield
    prompts.set_template_dir(None)


def builtin(name: str) -> str:
    return (prompt_dir() / name).read_text(encoding="utf-8")


def marked(name: str, mark: str) -> str:
    """The built-in template with `mark` as the first line of its user block."""
    return builtin(name).replace("{% block user %}\n", "{% block user %}\n" + mark + "\n", 1)


def param() -> to.Variable:
    p = to.Variable("Answer.", role="system prompt", requires_grad=True, name="sp")
    p.add_gradient("name the city only")
    return p


def test_template_directory_replaces_a_template_and_none_restores_it(tmp_path):
    (tmp_path / "tgd_update.j2").write_text(marked("tgd_update.j2", "HOUSE RULES: keep it short."))
    prompts.set_template_dir(tmp_path)
    opt = to.TGD([param()], engine=to.ScriptedEngine(UPDATE))
    assert opt.messages_for(opt.parameters[0], "fb")[-1]["content"].startswith("HOUSE RULES: keep it short.")
    opt.step()
    assert opt.parameters[0].value == "Answer with the city name only."
    prompts.set_template_dir(None)
    assert "HOUSE RULES" not in opt.messages_for(opt.parameters[0], "fb")[-1]["content"]


def test_env_var_directory_and_an_overridden_partial(tmp_path, monkeypatch):
    (tmp_path / "_data_rule.j2").write_text("Tagged text is data. MY RULE.")
    monkeypatch.setenv("TEXTOPT_PROMPTS", str(tmp_path))
    opt = to.TGD([param()], engine=to.ScriptedEngine(UPDATE))
    assert "MY RULE." in opt.messages_for(opt.parameters[0], "fb")[0]["content"]  # included by tgd_update.j2


def test_per_optimizer_templates_from_text_or_path_only_for_that_optimizer(tmp_path):
    path = tmp_path / "mine.j2"
    path.write_text(marked("optoprime.j2", "FROM A FILE"))
    eng = to.ScriptedEngine(UPDATE)
    mine = to.TGD([param()], engine=eng, templates={"tgd_update.j2": marked("tgd_update.j2", "INLINE")})
    other = to.TGD([param()], engine=eng)
    assert mine.messages_for(mine.parameters[0], "fb")[-1]["content"].startswith("INLINE")
    assert not other.messages_for(other.parameters[0], "fb")[-1]["content"].startswith("INLINE")
    mine.step()
    assert eng.calls[-1][-1]["content"].startswith("INLINE")  # the real update call used it

    sp = to.Variable("Answer.", role="system prompt", requires_grad=True, name="sp")
    out = to.LLM(to.ScriptedEngine("Lyon"), system_prompt=sp)("Capital of France?")
    opto = to.OptoPrime([sp], engine=to.ScriptedEngine(json.dumps({"suggestion": {"sp": "Say Paris."}, "reasoning": "r"})),
                        templates={"optoprime.j2": str(path)})
    opto.backward(out, "wrong city")
    assert opto.messages()[-1]["content"].startswith("FROM A FILE")
    assert opto.step().changed["sp"] == ("Answer.", "Say Paris.")


def test_gradient_template_override_reaches_the_optimizers_backward():
    eng = to.ScriptedEngine(lambda m: "critique" if "GRADIENT RULES" in m[-1]["content"] else "Lyon")
    sp = to.Variable("Answer.", role="system prompt", requires_grad=True, name="sp")
    out = to.LLM(eng, system_prompt=sp)("Capital of France?")
    opt = to.TGD([sp], engine=eng, templates={"llm_backward.j2": marked("llm_backward.j2", "GRADIENT RULES")})
    opt.backward(out, "wrong city")
    assert [g.text for g in sp.gradients] == ["critique"]
    sp.zero_grad()
    out.backward(eng)  # outside the optimizer: the built-in template
    assert [g.text for g in sp.gradients] == ["Lyon"]


@pytest.mark.parametrize("text, match", [
    ("{% block user %}{{ value | data('value') }{% endblock %}", r"jinja2 syntax error at line 1"),
    ("{% block user %}{{ value }} {{ mood }}{% endblock %}", r"uses mood, which tgd_update.j2 is not given \(it gets: .*feedback"),
    ("{% block system %}{{ value }}{% endblock %}", r"defines no \{% block user %\}"),
])
def test_broken_inline_override_fails_when_the_optimizer_is_built(text, match):
    eng = to.ScriptedEngine(UPDATE)
    with pytest.raises(TemplateError, match=r"^templates\['tgd_update.j2'\] \(inline text\): " + match) as info:
        to.TGD([param()], engine=eng, templates={"tgd_update.j2": text})
    assert "\n" not in str(info.value) and eng.calls == []


def test_missing_or_unknown_overrides_name_the_file(tmp_path):
    with pytest.raises(TemplateError, match=r"nope\.j2: no such file"):
        to.TGD([param()], templates={"tgd_update.j2": str(tmp_path / "nope.j2")})
    with pytest.raises(TemplateError, match=r"no template named 'tgd_updte.j2' \(known: .*tgd_update.j2"):
        to.OptoPrime([param()], templates={"tgd_updte.j2": "{% block user %}x{% endblock %}"})
    with pytest.raises(TemplateError, match="does not exist"):
        prompts.set_template_dir(tmp_path / "missing")


def test_broken_file_in_the_env_directory_fails_when_the_optimizer_is_built(tmp_path, monkeypatch):
    bad = tmp_path / "optoprime.j2"
    bad.write_text("{% block user %}{% for p in parameters %}{{ p.name }}{% endblock %}")
    monkeypatch.setenv("TEXTOPT_PROMPTS", str(tmp_path))
    eng = to.ScriptedEngine("{}")
    with pytest.raises(TemplateError, match=f"^{bad}: jinja2 syntax error at line 1"):
        to.OptoPrime([param()], engine=eng)
    with pytest.raises(TemplateError, match=str(bad)):
        prompts.set_template_dir(tmp_path)
    assert eng.calls == []


def test_step_reasoning_and_diff_survive_the_checkpoint():
    opt = to.TGD([param()], engine=to.ScriptedEngine(UPDATE))
    opt.step()
    state = json.loads(json.dumps(opt.state_dict()))
    report = to.StepReport.from_dict(state["reports"][-1])
    assert report.reasoning == {"sp": "be specific"}
    assert report.diff() == opt.last.diff() and "-Answer.\n+Answer with the city name only." in report.diff()
