"""The textual backward pass: schedule every op's backward as soon as its output's feedback is complete.

A variable's feedback is complete when every consumer in the graph has sent its part. Ready ops run
concurrently (each engine bounds its own calls in flight), so wall time follows the graph's critical
path, not the number of calls. Feedback from many consumers is condensed before use (`feedback_text`).
"""
from __future__ import annotations

import asyncio

from .context import resolve_backward_engine
from .engines.base import Engine
from .errors import GraphError
from .feedback import Feedback
from .order import topological_order
from .prompts import elide, render_messages

#: Up to this many gradients (and this many characters together) are passed on verbatim.
DIRECT_LIMIT = 8
JOINED_CHARS = 3000
#: Larger sets are condensed by the LLM in groups of this size, level by level, until one text is left.
GROUP_SIZE = 4
#: Each gradient shown to an LLM is cut to this many characters.
GRADIENT_CHARS = 2000


def _joined(var: "Variable") -> str:
    grads = var.gradients
    if len(grads) == 1:
        return grads[0].text
    parts = [f"[feedback {i} of {len(grads)}, via {g.source_role or 'a consumer'}]\n{g.text}" for i, g in enumerate(grads, 1)]
    return "\n\n".join(parts)


async def feedback_text(var: "Variable", engine: Engine) -> str:
    """All feedback on `var` as one bounded text.

    Up to DIRECT_LIMIT gradients totalling at most JOINED_CHARS are joined as they are (no call).
    Otherwise each gradient is cut to GRADIENT_CHARS (a marker says how much was cut), and more than one
    are condensed hierarchically: groups of GROUP_SIZE are merged by one LLM call each, concurrently,
    level by level. So an update prompt holds at most GRADIENT_CHARS of feedback however many (or however
    long) gradients arrived: 64 gradients cost 16 + 4 + 1 = 21 small calls, not a 64x prompt.
    The result is cached on the variable until its gradients change.
    """
    grads = var.gradients
    if not grads:
        return ""
    if var._feedback_cache is not None and var._feedback_cache[0] == len(grads):
        return var._feedback_cache[1]
    total = sum(len(g.text) for g in grads)
    if len(grads) <= DIRECT_LIMIT and total <= JOINED_CHARS:
        text = _joined(var)
    else:
        texts = [elide(g.text, GRADIENT_CHARS) for g in grads]
        while len(texts) > 1:
            groups = [texts[i : i + GROUP_SIZE] for i in range(0, len(texts), GROUP_SIZE)]
            texts = list(await asyncio.gather(*(_condense(var, group, engine) for group in groups)))
        text = texts[0]
    var._feedback_cache = (len(grads), text)
    return text


async def _condense(var: "Variable", texts: list[str], engine: Engine) -> str:
    if len(texts) == 1:
        return texts[0]
    messages = render_messages("condense.j2", role=var.role, feedback=texts, limit=GRADIENT_CHARS)
    reply = await engine.acomplete(messages, max_tokens=GRADIENT_CHARS // 4)
    text = reply.text.strip()
    return elide(text, GRADIENT_CHARS) if text else "\n".join(t[: GRADIENT_CHARS // len(texts)] for t in texts)


async def run_backward(root: "Variable", engine: Engine | str | None = None) -> None:
    """Send textual gradients from `root` to every ancestor that requires grad.

    Each op's backward receives one message about its output: the joined feedback of its consumers when
    there is any, else the objective (`Feedback.objective`, the output's own text to improve) when the output
    is one in this pass: `root` when it has no feedback of its own, a loss's output (`is_loss`), or an input
    an op's backward handed the objective (Sum does). An op whose output got neither is skipped: there is
    nothing to send back through it.
    """
    if not hasattr(root, "grad_fn"):  # a textopt.Variable (not imported here: variable.py imports this module)
        raise TypeError(f"backward starts from a Variable, got {type(root).__name__}")
    if not root.requires_grad:
        raise GraphError(
            f"variable {root.name!r} does not require grad: no trainable Variable (requires_grad=True) leads to it, "
            "so backward has nothing to improve"
        )
    produced_by = root.ctx.engine if root.ctx is not None else None
    eng = resolve_backward_engine(engine, produced_by)
    order = topological_order(root, requires_grad_only=True)
    in_graph = {id(v) for v in order}
    pending = {id(v): 0 for v in order}
    for v in order:
        for p in v.parents:
            if id(p) in in_graph:
                pending[id(p)] += 1
    # This pass's objective messages, by variable (kept here, not on the graph: the next pass starts afresh).
    objective = {id(v): Feedback.objective(v.text) for v in order if v.is_loss}
    if not root.gradients:
        objective[id(root)] = Feedback.objective(root.text)

    tasks: set[asyncio.Task[None]] = set()
    done = asyncio.Event()
    errors: list[BaseException] = []
    remaining = [sum(1 for v in order if v.grad_fn is not None)]

    async def visit(var: "Variable") -> None:
        try:
            targets = [p for p in var.parents if id(p) in in_graph]
            fb = Feedback(text=await feedback_text(var, eng)) if var.gradients else objective.get(id(var))
            assert var.grad_fn is not None and var.ctx is not None
            grads = await var.grad_fn.backward(var.ctx, var, fb, eng) if targets and fb is not None else {}
            for p in targets:
                sent = grads.get(p)
                if isinstance(sent, Feedback):
                    if sent.is_objective:  # the input is the objective now: its own text, whatever the op wrote
                        objective[id(p)] = Feedback.objective(p.text)
                    elif sent.text:
                        p.add_gradient(sent.text, source=var)
                elif sent:
                    p.add_gradient(sent, source=var)
            for p in targets:
                pending[id(p)] -= 1
                if pending[id(p)] == 0 and p.grad_fn is not None:
                    schedule(p)
        except BaseException as exc:  # surface the first failure, naming the variable
            if isinstance(exc, Exception):
                exc.add_note(f"(textopt: while sending feedback back through {var.name!r}, role: {var.role})")
            errors.append(exc)
            done.set()
            return
        remaining[0] -= 1
        if remaining[0] == 0:
            done.set()

    def schedule(var: "Variable") -> None:
        task = asyncio.ensure_future(visit(var))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    if root.grad_fn is None:
        return  # a leaf: its own gradients are all there is
    schedule(root)  # leaves are never scheduled; an op runs once all its consumers delivered
    await done.wait()
    if errors:
        for t in list(tasks):
            t.cancel()
        exc = errors[0]
        raise exc
