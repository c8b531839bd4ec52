"""The progress heartbeat counts the calls (and tokens) of a stretch of work as they are made, not only once a
step's usage is added up at its end: a long round used to print "0 calls" while its calls were being made.

No timing thresholds: a scripted reply blocks its engine's loop until the display prints a heartbeat line,
so the counters are frozen while that line is written and its numbers are known exactly."""
from __future__ import annotations

import json
import re
import threading

import textopt as to
from textopt.datasets import Example
from textopt.run import Progress, Run

BEAT = re.compile(r"^  \.\.\. (?P<label>.+): (?P<calls>\d+) calls, (?P<tokens>\d+) tokens, \d+ s$")


class Lines:
    """A stream for Progress that keeps its lines and lets a caller wait for the next heartbeat."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._part = ""
        self._cond = threading.Condition()

    def write(self, text: str) -> int:
        with self._cond:
            self._part += text
            *done, self._part = self._part.split("\n")
            self.lines.extend(done)
            self._cond.notify_all()
        return len(text)

    def flush(self) -> None: ...

    def isatty(self) -> bool:
        return False

    def next_beat(self, timeout: float = 30.0) -> str:
        """The first heartbeat line written from now on (AssertionError if none comes within `timeout`)."""
        with self._cond:
            start = len(self.lines)
            new = lambda: [line for line in self.lines[start:] if line.startswith("  ... ")]  # noqa: E731
            assert self._cond.wait_for(lambda: bool(new()), timeout), f"no heartbeat within {timeout} s: {self.lines}"
            return new()[0]


def beat(line: str) -> dict[str, object]:
    m = BEAT.match(line)
    assert m, line
    return {"label": m["label"], "calls": int(m["calls"]), "tokens": int(m["tokens"])}


def test_heartbeat_counts_the_calls_of_both_engines_while_a_round_runs():
    """Like an AEGIS round (no tracker around the loop, the step row logged after its scope): task-model calls
    and a proposer call inside run.track(); the proposer's reply waits for a heartbeat, which must count the
    task-model calls made so far in this round (and their tokens), then the next round starts again from 0."""
    lines = Lines()
    run = Run(None, kind="aegis", callbacks=[Progress(bar=False, stream=lines, every=0.05)])
    task = to.ScriptedEngine("a reply of the task model")
    seen: list[str] = []
    expected: list[tuple[int, int]] = []

    def propose(messages):  # checked after the run: a failure in here would come back as an engine error
        seen.append(lines.next_beat())
        return "a new prompt"

    proposer = to.ScriptedEngine(propose)
    run.start(step=0, total_steps=2)
    for rnd, n in ((1, 3), (2, 2)):
        calls0, tokens0 = task.usage.calls, task.usage.total_tokens
        with run.track():
            for i in range(n):
                task.complete([{"role": "user", "content": f"round {rnd} attack {i}"}])
            expected.append((task.usage.calls - calls0, task.usage.total_tokens - tokens0))
            proposer.complete([{"role": "user", "content": "improve the prompt"}])
        run.step({"round": rnd, "side": "attack"})
    run.end(stopped="completed")

    beats = [beat(line) for line in seen]
    assert [b["label"] for b in beats] == ["aegis round 1", "aegis round 2"]
    assert [(b["calls"], b["tokens"]) for b in beats] == expected
    assert expected[0][0] == 3 and expected[0][1] > 0
    assert run.totals["calls"] == 3 + 1 + 2 + 1 and run.live.calls == run.totals["calls"]


def test_trainer_heartbeat_mid_step_reports_the_calls_made_so_far():
    """A Trainer step with progress on: when its update call (the proposer's) is in flight, the heartbeat shows
    the forward, loss and gradient calls of the step already made. Before the fix it said "0 calls"."""
    lines = Lines()
    at_step: dict[str, int] = {}
    seen: list[tuple[str, int, int]] = []

    def reply(messages):
        if '"new_value"' in messages[0]["content"]:  # the update call of step 1: counters frozen while we wait
            seen.append((lines.next_beat(), engine.usage.calls - at_step["calls"], engine.usage.total_tokens - at_step["tokens"]))
            return json.dumps({"reasoning": "r", "new_value": "Answer with the number."})
        return "It is 1."

    engine = to.ScriptedEngine(reply)
    prompt = to.Variable("Answer.", role="system prompt", requires_grad=True, name="prompt")
    llm = to.LLM(engine, system_prompt=prompt)

    async def forward(ex):
        return await llm.acall(to.Variable(ex.question, role="question"))

    async def loss(ex, out):
        return await to.TextLoss(f"The answer is {ex.answer}.", engine=engine).acall(out)

    def mark(event):  # the step-0 row begins the stretch "step 1": its counters start here
        if event.get("event") == "step" and event.get("step") == 0:
            at_step.update(calls=engine.usage.calls, tokens=engine.usage.total_tokens)

    data = [Example(f"What is {i} + 1?", str(i + 1)) for i in range(6)]
    trainer = to.Trainer(forward, loss, to.TGD([prompt], engine=engine), train=data[:4], val=data[4:], batch_size=2,
                         steps=1, progress=False, callbacks=[mark, Progress(bar=False, stream=lines, every=0.05)])
    history = trainer.fit()

    assert len(seen) == 1
    line, calls, tokens = seen[0]
    shown = beat(line)
    assert shown["label"] == "textopt step 1 of 1"
    assert calls >= 4  # 2 forwards and 2 losses at least, before the update
    assert (shown["calls"], shown["tokens"]) == (calls, tokens)
    assert history.rows[-1]["calls"] == calls + 1 + 2  # then the update and the 2 validation forwards
