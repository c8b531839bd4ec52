"""Issue 24: no reply can crash or stall a step, ordinary text survives a checkpoint, and what users' metrics
and graphs really look like is taken in. Each case failed before the fix (a bare RecursionError, a stall of
minutes, a NUL byte in a prompt, a prompt rewritten on disk, a file outside the run, a hung Search, a refused
numpy value, a RecursionError when pickling, an unrenderable template accepted)."""
from __future__ import annotations

import copy
import json
import os
import pickle
import time

import pytest

import textopt as to
from textopt.optim.parse import MAX_REPLY_CHARS, parse_reply
from textopt.run import CHECKPOINT, Run


def tgd_param(value="Q: {input}\nA:"):
    p = to.Variable(value, role="prompt template", requires_grad=True, name="tmpl")
    p.add_gradient("be more precise")
    return p


def step_with(reply: str, value="Q: {input}\nA:"):
    p = tgd_param(value)
    opt = to.TGD([p], engine=to.ScriptedEngine(reply))
    t0 = time.monotonic()
    report = opt.step()  # must not raise
    return p, opt, report, time.monotonic() - t0


# -- 7, 8: hostile shapes of reply ------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_deeply_nested_json_is_a_recorded_failure_not_a_recursion_error():
    p, opt, report, _ = step_with('{"new_value": ' + "[" * 100_000)
    assert p.value == "Q: {input}\nA:" and report.failures and report.failures[0].kind == "reply"


@pytest.mark.timeout(60)
def test_a_deep_but_decodable_value_is_a_recorded_failure_too():
    depth = 950  # decodes, but rendering it as text again would overflow
    p, opt, report, _ = step_with('{"new_value": ' + "[" * depth + "1" + "]" * depth + "}")
    assert report.failures or p.value != "Q: {input}\nA:"  # either kept as text or refused, never raised


@pytest.mark.timeout(60)
@pytest.mark.parametrize("reply", ["{" * 500_000, '{"a": ' * 200_000, "```" * 300_000, '{"' * 300_000,
                                   "<new_value>" * 90_000 + "x"],
                         ids=["braces", "unclosed-objects", "fences", "open-strings", "open-tags"])
def test_half_a_megabyte_of_hostile_structure_is_parsed_in_linear_time(reply):
    p, opt, report, seconds = step_with(reply)
    assert seconds < 15, f"step took {seconds:.1f} s"  # was > 150 s for the braces
    assert report.failures or p.value != "Q: {input}\nA:"


@pytest.mark.timeout(30)
def test_a_reply_over_the_cap_is_refused_naming_the_cap():
    with pytest.raises(to.ParseError, match="MAX_REPLY_CHARS"):
        parse_reply('{"new_value": "' + "x" * (MAX_REPLY_CHARS + 10) + '"}', ["new_value"])
    p, opt, report, seconds = step_with('{"new_value": "' + "x" * (MAX_REPLY_CHARS + 10) + '"}')
    assert p.value == "Q: {input}\nA:" and "cap" in report.failures[0].error and seconds < 15


@pytest.mark.timeout(30)
def test_objects_amid_prose_are_still_found():
    text = 'Sure! {not json {"new_value": "a}b \\" c", "x": {"y": 1}} and a tail {"z": 2}'
    assert parse_reply(text, ["new_value"]) == {"new_value": 'a}b " c', "x": {"y": 1}}
    assert parse_reply('Use "quotes {" then {"new_value": "v"}', ["new_value"]) == {"new_value": "v"}
    assert parse_reply("```json\n{\"new_value\": \"fenced\"}\n```", ["new_value"]) == {"new_value": "fenced"}


# -- 9: control characters ------------------------------------------------------------------------
@pytest.mark.timeout(30)
@pytest.mark.parametrize("char", ["\\u0000", "\\u001b", "\\u0007", "\\u007f", "\\u0085", "\\r"],
                         ids=["NUL", "ESC", "BEL", "DEL", "NEL", "CR"])
def test_a_control_character_in_a_new_value_is_refused(char):
    p, opt, report, _ = step_with(json.dumps({"reasoning": "r", "new_value": "Q: {input}" + "X" + "A:"}).replace("X", char))
    assert p.value == "Q: {input}\nA:"
    assert report.failures and report.failures[0].kind == "control" and "U+" in report.failures[0].error


@pytest.mark.timeout(30)
def test_newlines_and_tabs_are_still_fine():
    p, opt, report, _ = step_with(json.dumps({"reasoning": "r", "new_value": "Q:\t{input}\nThink.\nA:"}))
    assert p.value == "Q:\t{input}\nThink.\nA:" and not report.failures


@pytest.mark.timeout(30)
def test_optoprime_refuses_a_control_character_too():
    p = to.Variable("start", role="instruction", requires_grad=True, name="instruction")
    out = to.Variable("out", role="output", parents=[p], requires_grad=True)
    opt = to.OptoPrime([p], engine=to.ScriptedEngine('{"suggestion": {"instruction": "go\\u0000on"}, "reasoning": "r"}'))
    opt.backward(out, "bad")
    opt.step()
    assert p.value == "start" and opt.failures[-1].kind == "control"


# -- 11: masking by value --------------------------------------------------------------------------
LOOKALIKES = ["Use an sk-learn-compatible-estimator-api for this.", "Send the Bearer token in the header.",
              "Clone ssh://git@host/repo first.", "See https://user@example.org/docs."]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("text", LOOKALIKES, ids=["sk-", "Bearer", "ssh-user", "https-user"])
def test_ordinary_text_that_looks_like_a_credential_round_trips_through_a_checkpoint(tmp_path, text):
    with Run(tmp_path / "r", kind="t") as run:
        run.save_checkpoint({"parameters": {"p": text}, "log": [text]})
        run.log({"event": "step", "value": text})
        run.write_json("parameters.json", {"p": text})
    state = json.loads((tmp_path / "r" / CHECKPOINT).read_text())
    assert state["parameters"]["p"] == text and state["log"] == [text]
    assert json.loads((tmp_path / "r" / "parameters.json").read_text())["p"] == text
    assert text in (tmp_path / "r" / "log.jsonl").read_text()


@pytest.mark.timeout(60)
def test_real_keys_are_still_masked_by_value(tmp_path, monkeypatch):
    env_key = "sk-issue24-env-key-0123456789abcdef"
    configured = "configured-key-not-in-env-42"
    monkeypatch.setenv("OPENAI_API_KEY", env_key)
    to.get_engine("openai:m", api_key=configured, base_url="http://bob:pw-issue24-url@127.0.0.1:9/v1", cache=False)
    with Run(tmp_path / "r", kind="t", spec={"base_url": "http://alice:hunter2-issue24@10.0.0.1/v1"}) as run:
        run.save_checkpoint({"failures": [f"401 for {env_key}", f"bad {configured}", "pw-issue24-url"],
                             "parameters": {"p": LOOKALIKES[0]}})
    written = "".join(p.read_text() for p in (tmp_path / "r").iterdir() if p.is_file() and p.name != ".lock")
    for secret in (env_key, configured, "bob:pw-issue24-url", "hunter2-issue24"):
        assert secret not in written, secret
    assert LOOKALIKES[0] in written


@pytest.mark.timeout(30)
def test_provider_error_text_keeps_its_patterns():
    from textopt.secrets import scrub

    out = scrub("401: Bearer abc.def-ghijkl for sk-abcdefghijklmnopqrstuv at https://u:p@h/v1")
    assert "abc.def" not in out and "sk-abcdefghij" not in out and "u:p@" not in out


# -- 15: Run.write_json stays inside the run ------------------------------------------------------
@pytest.mark.timeout(30)
@pytest.mark.parametrize("name", ["../escaped.json", "/tmp/escaped-issue24.json", "sub/../../escaped.json"])
def test_write_json_refuses_a_name_outside_the_run(tmp_path, name):
    with Run(tmp_path / "r", kind="t") as run:
        with pytest.raises(ValueError, match="run directory"):
            run.write_json(name, {"x": 1})
        with pytest.raises(ValueError, match="run directory"):
            run.write_text(name, "x")
    assert not (tmp_path / "escaped.json").exists() and not os.path.exists("/tmp/escaped-issue24.json")


@pytest.mark.timeout(30)
def test_write_json_refuses_a_symlink_out_of_the_run(tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "link.json").symlink_to(tmp_path / "outside.json")
    with Run(tmp_path / "r", kind="t") as run:
        with pytest.raises(ValueError, match="outside the run directory"):
            run.write_json("link.json", {"x": 1})
        assert run.write_json("sub.json", {"x": 1}) == tmp_path / "r" / "sub.json"
    assert not (tmp_path / "outside.json").exists()


# -- 13: KeyboardInterrupt inside a metric --------------------------------------------------------
@pytest.mark.timeout(60)
def test_a_keyboard_interrupt_in_a_metric_stops_search_instead_of_hanging_it():
    p = to.Variable("Answer.", role="instruction", requires_grad=True, name="instr")
    calls = {"n": 0}

    def metric(example, output):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return 1.0

    search = to.Search([p], forward=lambda ex: to.Variable(p.value + ex, role="answer"), train=["a"] * 4,
                       val=["b"] * 4, metric=metric, engine=to.ScriptedEngine("x"), iterations=2)
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        search.fit()
    assert time.monotonic() - t0 < 10 and p.value == "Answer."
    assert to.evaluate(lambda ex: ex, ["x"], metric=lambda e, o: 1.0).mean == 1.0  # the textopt loop still serves


@pytest.mark.timeout(60)
def test_a_keyboard_interrupt_in_an_evaluate_metric_reaches_the_caller():
    def metric(example, output):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        to.evaluate(lambda ex: ex, ["a", "b", "c"], metric=metric)
    assert to.evaluate(lambda ex: ex, ["a"], metric=lambda e, o: 0.5).mean == 0.5


# -- 14: numpy metric values -----------------------------------------------------------------------
@pytest.mark.timeout(30)
def test_numpy_metric_values_are_numbers():
    np = pytest.importorskip("numpy")
    values = {"a": np.int64(1), "b": np.bool_(True), "c": np.float32(0.5), "d": np.bool_(False)}
    report = to.evaluate(lambda ex: ex, list(values), metric=lambda e, o: values[e])
    assert [r.score for r in report.rows] == [1.0, 1.0, 0.5, 0.0]
    assert to.Score(np.int64(1), "ok").value == 1.0
    with pytest.raises(TypeError, match="must return a number"):
        to.evaluate(lambda ex: ex, ["a"], metric=lambda e, o: np.array([1, 2]))


# -- 16: deep graphs pickle ------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_a_ten_thousand_node_chain_pickles_and_copies():
    v = to.Variable("x0", role="step", requires_grad=True)
    for i in range(10_000):
        v = to.Variable(f"x{i + 1}", role="step", parents=[v], requires_grad=True)
    v.add_gradient("feedback")
    back = pickle.loads(pickle.dumps(v))
    depth, node = 0, back
    while node.parents:
        node, depth = node.parents[0], depth + 1
    assert depth == 10_000 and node.value == "x0" and back.gradients[0].text == "feedback"
    assert copy.deepcopy(v).parents[0].value == "x9999"


@pytest.mark.timeout(30)
def test_a_pickled_graph_keeps_shared_nodes_and_ops():
    a = to.Variable("a", role="input")
    b = to.Variable("b", role="mid", parents=[a, a])
    c = to.aggregate([b, a])
    back = pickle.loads(pickle.dumps(c))
    assert back.parents[0].parents[0] is back.parents[0].parents[1] is back.parents[1]
    assert back.value == c.value and type(back.grad_fn).__name__ == type(c.grad_fn).__name__


@pytest.mark.timeout(30)
def test_a_loss_pickled_before_the_objective_marker_moved_loads_as_a_loss():
    loss = to.Variable("verdict", role="evaluation")
    del loss.__dict__["is_loss"]
    loss.__dict__["is_objective"] = True  # the state an older textopt pickled for a loss
    back = pickle.loads(pickle.dumps(loss))
    assert back.is_loss is True and "is_objective" not in back.__dict__


# -- 17: a template the sandbox can't render is refused when it is set -----------------------------
@pytest.mark.timeout(30)
def test_an_unrenderable_template_is_refused_at_update_time_and_the_old_one_kept():
    call = to.FormattedLLMCall("Q: {{ question }}", fields={"question": "question"}, engine=to.ScriptedEngine("a"),
                               trainable=True)
    call.template.add_gradient("better")
    bad = "{{ question }}{{ ''.__class__.__mro__[1].__subclasses__() }}"
    opt = to.TGD([call.template], engine=to.ScriptedEngine(json.dumps({"reasoning": "r", "new_value": bad})))
    report = opt.step()
    assert call.template.value == "Q: {{ question }}"
    assert report.failures[0].kind == "refused" and "could not be rendered" in report.failures[0].error
    assert call(question="x").value == "a"  # later calls still work
