"""One short real call of the 1.5B reflection model (Qwen2.5-Coder-1.5B-Instruct through the worker): a TGD
step on a label template either applies a parsed proposal that keeps {input} or records why it failed."""
from __future__ import annotations

import pytest

import textopt as to

pytestmark = pytest.mark.local


def test_a_reflection_proposal_parses_or_its_failure_is_recorded(tmp_path):
    from textopt.datasets import template_problem
    from textopt.engines.models import ModelFileError

    try:
        engine = to.get_engine("local:reflect", cache=str(tmp_path / "cache"), max_tokens=120, n_ctx=2048, timeout=240)
    except ModelFileError as exc:
        pytest.fail(f"the 1.5B model comes with textopt[local] and must be installed here: {exc}")
    labels = ("positive", "negative")
    tpl = to.Variable("{input}", role="instruction template for a small sentiment classifier", requires_grad=True,
                      name="tpl", validate=lambda v: template_problem(v, labels))
    tpl.add_gradient("Text: The soup was cold.\nReply: The soup was cold and the waiter was rude.\n"
                     "Verdict: reply named no label (it must say one of 'positive' or 'negative'); expected exactly 'negative'")
    opt = to.TGD([tpl], engine=engine, max_tokens=120)
    try:
        report = opt.step()
    finally:
        engine.close()
    assert engine.usage.completion_tokens > 0  # the model really answered
    if report.changed:
        assert "{input}" in tpl.value and tpl.value != "{input}" and not tpl.value.startswith("`")
        assert template_problem(tpl.value, labels) is None
    else:
        assert report.failures and all(f.kind and f.error for f in report.failures), report
