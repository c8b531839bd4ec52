"""The optimizer contract: feedback comes in through one hook, subclasses only propose, the base applies.

    opt.zero_grad()
    await opt.abackward(output, feedback=None)   # the one way feedback reaches any optimizer
    report = await opt.astep()                   # propose -> check -> apply -> memory -> report

Every subclass implements `propose()`; the base checks each proposed value (valid Unicode, size cap, no
placeholder or null, a known parameter, a change), applies it with `set_value` (which may refuse it),
records every rejection as an UpdateFailure with its reason, asks once more at a higher temperature
(naming the rejected values) when a proposal left a parameter unchanged, keeps the memory window, and
logs a StepReport (reasoning and diff) per step.
"""
from __future__ import annotations

import difflib
import os
import re
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterable, Mapping, Sequence

from .._sync import run_sync, sync_twin
from ..backward import run_backward
from ..context import resolve_backward_engine
from ..errors import EngineError, EngineUnavailable, ParseError, UpdateError
from ..module import Module, parameter_list
from ..prompts import RESERVED_TAGS, VALUE_TAGS, elide, load_overrides, render_messages, unescape_tags, using_templates
from ..variable import Variable, missing_fields
from .parse import parse_reply

if TYPE_CHECKING:
    from ..engines.base import Engine

Message = dict[str, str]

#: Values that are a template's placeholder, not a value (compared stripped and lower-cased).
PLACEHOLDERS = frozenset({"...", "…", "null", "none", "new value", "<new value>", "<new_value>", "<value>", "value",
                          "<the full new text>", "<why>", "<reasoning>", "todo", "tbd"})
#: A rejected reply is kept in its failure record up to this many characters (head and tail).
REPLY_CHARS = 4000
_PLACEHOLDER_RE = re.compile(r"<\s*(new[ _]?value|value|why|reasoning|the full new text|a few sentences[^>]*)\s*>", re.I)


@dataclass
class UpdateFailure:
    """A proposal that could not be used (the variable kept its value). kind: "no change", "placeholder", "tag",
    "null", "empty", "unicode", "too long", "not text", "unknown parameter", "refused", "reply", "engine",
    "no feedback", "control"."""

    step: int
    variable: str
    error: str
    reply: str = ""
    kind: str = ""


@dataclass
class Proposal:
    """A subclass's proposal for one parameter: the complete new value and why."""

    value: Any  # the complete new text (anything else is rejected with a reason)
    reasoning: str = ""
    feedback: str = ""  # what it answers; kept in the memory window
    reply: str = ""  # the raw reply, kept with a failure


@dataclass
class PastStep:
    """One earlier step in the memory window: values it started from and the feedback it acted on."""

    step: int
    values: dict[str, str]
    feedback: dict[str, str]


@dataclass
class StepReport:
    """What one step did: per changed parameter (old, new) and the optimizer's reasoning; its failures."""

    step: int
    changed: dict[str, tuple[str, str]] = field(default_factory=dict)
    reasoning: dict[str, str] = field(default_factory=dict)
    failures: list[UpdateFailure] = field(default_factory=list)

    def diff(self, name: str | None = None) -> str:
        """Unified diff of the changed values (one parameter, or all)."""
        names = [name] if name is not None else list(self.changed)
        out: list[str] = []
        for n in names:
            old, new = self.changed[n]
            out.extend(difflib.unified_diff(old.splitlines(), new.splitlines(), f"{n} (before)", f"{n} (step {self.step})", lineterm=""))
        return "\n".join(out)

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.step, "changed": {k: list(v) for k, v in self.changed.items()}, "reasoning": dict(self.reasoning),
                "failures": [asdict(f) for f in self.failures]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "StepReport":
        return cls(int(d["step"]), {k: (v[0], v[1]) for k, v in d.get("changed", {}).items()}, dict(d.get("reasoning", {})),
                   [UpdateFailure(**f) for f in d.get("failures", [])])


class Optimizer:
    """Base class. memory=k shows the last k steps (values and their feedback) in update prompts;
    temperatures: the first ask, then one re-ask per further entry for parameters a proposal left
    unchanged (None = the engine's own); max_value_chars caps a new value; strict=True raises UpdateError
    after a step with failures instead of only recording them. templates={"tgd_update.j2": text or path}
    replaces prompt templates for this optimizer's calls (checked here: a bad one fails before any call)."""

    #: Placeholders of this optimizer's own templates, on top of PLACEHOLDERS.
    placeholders: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, parameters: Iterable[Variable] | Module, *, engine: "Engine | str | None" = None, strict: bool = False,
                 memory: int = 0, temperatures: Sequence[float | None] = (None, 0.7), max_value_chars: int = 20_000,
                 templates: "Mapping[str, str | os.PathLike[str]] | None" = None) -> None:
        self.templates = load_overrides(templates)  # checked now (and the override directory): a bad one fails here
        params = parameter_list(parameters)  # a Module stands for its parameters()
        if not params:
            raise ValueError("the optimizer got no parameters: pass the trainable Variables to optimize")
        names: set[str] = set()
        for p in params:
            if not isinstance(p, Variable):
                raise TypeError(f"optimizer parameters must be Variables, got {type(p).__name__}")
            if not p.requires_grad:
                raise ValueError(f"parameter {p.name!r} has requires_grad=False; create it with requires_grad=True to optimize it")
            if p.name in names:
                raise ValueError(f"two parameters share the name {p.name!r}; names must be unique")
            names.add(p.name)
        if memory < 0:
            raise ValueError(f"memory must be >= 0, got {memory}")
        if not temperatures:
            raise ValueError("temperatures needs at least one entry (None: the engine's own temperature)")
        if max_value_chars < 1:
            raise ValueError(f"max_value_chars must be >= 1, got {max_value_chars}")
        self.parameters = params
        self.engine = engine
        self.strict = strict
        self.memory = memory
        self.temperatures = tuple(temperatures)
        self.max_value_chars = max_value_chars
        self.failures: list[UpdateFailure] = []
        self.steps = 0
        self.past: list[PastStep] = []  # the memory window (last `memory` steps)
        self.reports: list[StepReport] = []  # every step's report, in order

    @property
    def last(self) -> StepReport | None:
        """The report of the latest step (None before the first)."""
        return self.reports[-1] if self.reports else None

    # -- 1. feedback --------------------------------------------------------------------------
    async def abackward(self, output: Variable, feedback: str | None = None, *, engine: "Engine | str | None" = None) -> None:
        """Feedback on `output` reaches the parameters. Given `feedback` is added as the output's gradient
        (None: the output is the objective itself, e.g. a loss, and backward sends its ops `Feedback.objective`,
        the output's own text to improve); then a textual backward pass runs from it.
        engine overrides the optimizer's engine for the gradient calls."""
        if feedback is not None:
            if not isinstance(feedback, str) or not feedback.strip():
                raise ValueError("feedback must be non-empty text saying how the output fell short (or None)")
            output.add_gradient(feedback)
        with using_templates(self.templates):
            await run_backward(output, engine if engine is not None else self.engine)

    def backward(self, output: Variable, feedback: str | None = None, *, engine: "Engine | str | None" = None) -> None:
        """Sync `abackward`."""
        run_sync(self.abackward(output, feedback, engine=engine))

    def zero_grad(self) -> None:
        """Forget the feedback this optimizer would read (here: the parameters' gradients)."""
        for p in self.parameters:
            p.zero_grad()

    # -- 2. what subclasses implement ---------------------------------------------------------
    async def propose(self, params: list[Variable], *, temperature: float | None,
                      rejected: dict[str, list[str]]) -> Mapping[Variable | str, Proposal | BaseException]:
        """New values for (some of) `params` from the feedback collected. Keys are parameters (or names as
        the model wrote them); a value that is an exception is recorded as that parameter's failure.
        rejected: name -> values already proposed this step and not kept, e.g. the current value repeated (tell
        the model, and ask for something different)."""
        raise NotImplementedError

    # -- 3. applying proposals ----------------------------------------------------------------
    async def astep(self, params: Sequence[Variable] | Module | None = None) -> StepReport:
        """One update of `params` (default: all; a Module: its parameters). Failures are recorded, never raised (unless strict)."""
        todo = self._targets(params)
        self.steps += 1
        report = StepReport(step=self.steps)
        rejected: dict[str, list[str]] = {}
        before = {p.name: p.text for p in todo}
        answered: dict[str, str] = {}
        for temperature in self.temperatures:
            if not todo:
                break
            try:
                with using_templates(self.templates):
                    proposals = await self.propose(todo, temperature=temperature, rejected=rejected)
            except EngineUnavailable:
                raise  # a stop for the run (a crashed local runtime), not one failed proposal
            except (ParseError, EngineError, RecursionError) as exc:  # RecursionError: a reply nested past any parser
                who = todo[0].name if len(todo) == 1 else "*"
                kind = "engine" if isinstance(exc, EngineError) else "reply"
                self._fail(report, who, str(exc) if not isinstance(exc, RecursionError) else
                           "the reply is nested too deeply to read (RecursionError)", getattr(exc, "reply", ""), kind)
                break
            todo = self._apply(proposals, todo, report, rejected, answered)
        if self.memory and answered:
            self.past.append(PastStep(self.steps, {n: before[n] for n in answered}, answered))
            del self.past[: -self.memory]
        self.reports.append(report)
        if self.strict and report.failures:
            raise UpdateError(f"{type(self).__name__} step {self.steps}: " + "; ".join(f"{f.variable}: {f.error}" for f in report.failures))
        return report

    step = sync_twin(astep)

    def check(self, param: Variable, value: Any) -> tuple[str, str] | None:
        """(kind, reason) when `value` can't be `param`'s new value, else None. Never runs or stores it."""
        return (check_value(value, max_chars=self.max_value_chars, placeholders=self.placeholders)
                or control_characters(value) or missing_fields(param, value))

    def _targets(self, params: Sequence[Variable] | Module | None) -> list[Variable]:
        if params is None:
            return list(self.parameters)
        params = parameter_list(params)
        mine = {id(p) for p in self.parameters}
        for p in params:
            if id(p) not in mine:
                raise ValueError(f"{getattr(p, 'name', p)!r} is not a parameter of this optimizer")
        return list(params)

    def _apply(self, proposals: Mapping[Variable | str, Proposal | BaseException], todo: list[Variable],
               report: StepReport, rejected: dict[str, list[str]], answered: dict[str, str]) -> list[Variable]:
        """Check and apply proposals for `todo`; returns the parameters to ask again (left unchanged)."""
        by_name = {p.name: p for p in todo}
        known = {p.name for p in self.parameters}
        again: list[Variable] = []
        for key, prop in proposals.items():
            name = key.name if isinstance(key, Variable) else str(key)
            param = by_name.get(name)
            if param is None:
                if name not in known:
                    reply = prop.reply if isinstance(prop, Proposal) else getattr(prop, "reply", "")
                    self._fail(report, name, f"the proposal names {name!r}, which is not a parameter of this optimizer "
                               f"({', '.join(sorted(known))})", reply, "unknown parameter")
                continue  # a parameter not asked about in this round: ignored
            if isinstance(prop, BaseException):
                kind = getattr(prop, "kind", None) or ("reply" if isinstance(prop, ParseError) else
                                                        "engine" if isinstance(prop, EngineError) else type(prop).__name__)
                self._fail(report, name, str(prop), getattr(prop, "reply", ""), kind)
                continue
            value = proposed_value(param, prop.value)
            problem = self.check(param, value)
            if problem is None and value == param.text:
                problem = ("no change", "the proposed value is the current value unchanged")
            if problem is not None and problem[0] in RE_ASK and isinstance(value, str):
                rejected.setdefault(name, []).append(Rejected(value, problem[1]))
                again.append(param)
            if problem is not None:
                self._fail(report, name, problem[1], prop.reply or (value if isinstance(value, str) else ""), problem[0])
                continue
            old = param.text
            try:
                param.set_value(value)  # a variable may refuse a value (e.g. trainable code that doesn't parse)
            except (ValueError, TypeError) as exc:
                self._fail(report, name, f"new value refused: {exc}", value, "refused")
                continue
            if param.text == old:  # equal once the variable normalised it (e.g. code without its fences)
                rejected.setdefault(name, []).append(Rejected(value, "it is the current value unchanged"))
                again.append(param)
                self._fail(report, name, "the proposed value is the current value unchanged", prop.reply or value, "no change")
                continue
            report.changed[name] = (old, param.text)
            report.reasoning[name] = str(prop.reasoning or "")
            answered[name] = prop.feedback
        return again

    def _fail(self, report: StepReport, variable: str, error: str, reply: str, kind: str) -> None:
        failure = UpdateFailure(self.steps, variable, _storable(error, 2000), _storable(reply, REPLY_CHARS), kind)
        report.failures.append(failure)
        self.failures.append(failure)

    # -- helpers for subclasses ---------------------------------------------------------------
    def window(self, name: str) -> list[tuple[str, str]]:
        """(value, feedback) of `name` in the last `memory` steps that updated it, oldest first."""
        if not self.memory:
            return []
        hits = [(s.values[name], s.feedback.get(name, "")) for s in self.past if name in s.values]
        return hits[-self.memory :]

    def notes(self, names: Iterable[str] | None = None) -> list[str]:
        """What went wrong with the last step's proposals (for the next prompt), one line each."""
        if self.last is None:
            return []
        wanted = set(names) if names is not None else None
        return [f"Your proposal for {f.variable} in the last step was rejected: {f.error}. The old value was kept."
                for f in self.last.failures if wanted is None or f.variable in wanted or f.variable == "*"]

    async def ask_json(self, messages: list[Message], schema: dict[str, Any], required: Sequence[str], *, engine: "Engine",
                       temperature: float | None = None, shape: str | None = None,
                       parse: Callable[[str], dict[str, Any]] | None = None, **options: Any) -> tuple[dict[str, Any], str]:
        """Ask for a JSON object; if the reply can't be parsed, send it back once with the error.
        Returns (object, raw reply); raises ParseError after the repair fails too."""
        return await ask_json(messages, schema, required, engine=engine, temperature=temperature, shape=shape,
                              parse=parse, **options)

    def resolve_engine(self) -> "Engine":
        """The engine for update calls: this optimizer's, else the scoped backward default."""
        return resolve_backward_engine(self.engine)

    # -- checkpoints --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Plain-JSON state for checkpoints (values are saved separately)."""
        return {"steps": self.steps, "failures": [asdict(f) for f in self.failures], "past": [asdict(s) for s in self.past],
                "reports": [r.to_dict() for r in self.reports]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = int(state.get("steps", 0))
        self.failures = [UpdateFailure(**f) for f in state.get("failures", [])]
        self.past = [PastStep(**s) for s in state.get("past", []) if isinstance(s, dict) and "values" in s and "step" in s]
        self.reports = [StepReport.from_dict(r) for r in state.get("reports", [])]


def check_value(value: Any, *, max_chars: int, placeholders: Iterable[str] = ()) -> tuple[str, str] | None:
    """(kind, reason) when `value` is no usable new value: null, not text, empty, invalid Unicode (a lone
    surrogate would crash cache keys and checkpoints later), over `max_chars`, or a template placeholder."""
    if value is None:
        return "null", "the proposed value is null, not text"
    if not isinstance(value, str):
        return "not text", f"the proposed value is a {type(value).__name__}, not text"
    stripped = value.strip()
    if not stripped:
        return "empty", "the proposed value is empty"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        return "unicode", f"the proposed value is not valid Unicode ({exc.reason} at position {exc.start})"
    if len(value) > max_chars:
        return "too long", f"the proposed value has {len(value):,} characters, over the cap of {max_chars:,} (max_value_chars)"
    low = stripped.lower()
    if low in PLACEHOLDERS or low in placeholders or _PLACEHOLDER_RE.fullmatch(stripped):
        return "placeholder", f"the proposed value {stripped[:60]!r} is the reply template's placeholder, not a value"
    opened = _OPENING_TAG.match(stripped)
    if opened and f"</{opened.group(1)}>" not in stripped:
        return "tag", (f"the proposed value starts with the update prompt's <{opened.group(1)}> tag and never closes "
                       f"it: write the value alone, without tags")
    return None


async def ask_json(messages: list[Message], schema: dict[str, Any], required: Sequence[str], *, engine: "Engine",
                   temperature: float | None = None, shape: str | None = None,
                   parse: Callable[[str], dict[str, Any]] | None = None, **options: Any) -> tuple[dict[str, Any], str]:
    """See Optimizer.ask_json: one JSON ask, one repair request quoting the error."""
    read = parse or (lambda text: parse_reply(text, list(required)))
    if temperature is not None:
        options["temperature"] = temperature
    reply = await engine.acomplete(messages, json_schema=schema, **options)
    try:
        return read(reply.text), reply.text
    except ParseError as first:
        shape = shape or "{" + ", ".join(f'"{k}": "..."' for k in schema.get("properties", required)) + "}"
        repair = render_messages("repair.j2", error=str(first), shape=shape)
        retry = messages + [{"role": "assistant", "content": reply.text}] + repair
        second = await engine.acomplete(retry, json_schema=schema, **options)
        try:
            return read(second.text), second.text
        except ParseError as exc:
            raise ParseError(f"{exc} (after one repair request; first error: {first})", second.text) from exc


def _storable(text: str, limit: int) -> str:
    """Text safe to keep in failures and checkpoints: bounded, and valid UTF-8 (lone surrogates escaped)."""
    return elide(text, limit).encode("utf-8", "backslashreplace").decode("utf-8")


#: Failures asked again at once (the next temperature), naming the reason: a fixable slip, not a bad idea.
RE_ASK = frozenset({"no change", "missing field", "invalid", "tag"})


def _unescape(value: Any) -> Any:
    return unescape_tags(value) if isinstance(value, str) else value


_FENCED = re.compile(r"```[\w+-]*[ \t]*\n(.*?)\n?[ \t]*```", re.S)
#: The tags an update prompt shows a value in; a proposal that opens one and never closes it copied the
#: wrapping and was cut off or left it open (AEGIS on the 1.5B: `<value>` + the old prompt + the critique).
_OPENING_TAG = re.compile(r"<(" + "|".join(VALUE_TAGS) + r")>")
_WRAPPING_TAG = re.compile(r"<(" + "|".join(RESERVED_TAGS) + r")>(.*)</\1>", re.S)


def unwrap(value: Any) -> Any:
    """A proposed value as small models send it -> the value: without a code fence around it (```text ... ```)
    or backticks around it (`...`, ``...``), or one of our structure tags the update prompt showed it in
    (<value> in TGD's, <variable> in OptoPrime's). Only wrapping is removed; backticks inside the value stay."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    fence = _FENCED.fullmatch(text)
    if fence:
        return fence.group(1).strip("\n")
    tag = _WRAPPING_TAG.fullmatch(text)
    if tag and text.count(f"<{tag.group(1)}>") == 1:
        return tag.group(2).strip()  # one of the update prompt's own structure tags (<value>, <variable>), copied back
    for mark in ("```", "``", "`"):
        if len(text) > 2 * len(mark) and text.startswith(mark) and text.endswith(mark):
            inner = text[len(mark):-len(mark)]
            if "`" not in inner:
                return inner.strip()
    return value


def clean_value(value: Any) -> Any:
    """What an optimizer applies of a proposed value: tags unescaped, wrapping fences and backticks removed."""
    return unwrap(_unescape(value))


def proposed_value(param: Variable, value: Any) -> Any:
    """`clean_value`, then the variable's own `normalize` when it has one (trainable code: the fenced block
    out of the prose around it, without example calls), before any check."""
    value = clean_value(value)
    normalize = getattr(param, "normalize", None)
    return normalize(value) if normalize is not None and isinstance(value, str) else value


class Rejected(str):
    """A value already proposed and not kept, with why (`reason`), so the next prompt can say it."""

    reason: str

    def __new__(cls, value: str, reason: str = "") -> "Rejected":
        obj = super().__new__(cls, value)
        obj.reason = reason
        return obj


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def control_characters(value: Any) -> tuple[str, str] | None:
    """("control", reason) when text `value` holds a control character other than newline and tab (a NUL, an
    escape sequence, a carriage return...): it would reach every later prompt, terminal and log. Else None."""
    if not isinstance(value, str):
        return None
    m = _CONTROL.search(value)
    if m is None:
        return None
    return "control", (f"the proposed value holds the control character U+{ord(m.group()):04X} at position {m.start()}; "
                       "only newlines and tabs may appear in a value")

