"""FormattedLLMCall: one LLM call whose prompt is a jinja2 template filled with several named fields.

Each field is a Variable with its own role; backward asks one critic call per trainable input (a field,
the template, the system prompt), concurrently, each naming its target, so each gets its own gradient.
Field values are always inserted through the `data` filter (between tags named after the field, our tags and
the field's own tag escaped), so a value can't close its block or pose as instructions. Templates render
in jinja2's sandbox (a trainable template is LLM-written text). An image field (to.Image) goes to the model
as image content at its place in the prompt.
"""
from __future__ import annotations

import asyncio
import functools
import keyword
import re
import secrets
from typing import Any, Mapping

from ..context import resolve_engine
from ..engines.base import Engine
from ..function import Feedback, Function, OpContext, OpDescription
from ..image import Image
from ..prompts import data, render_messages
from ..variable import Variable
from .llm import FEEDBACK_MAX_TOKENS, SHOWN_CHARS

#: Names a field can't have: jinja2 literals and the op's own argument names.
_RESERVED = {"true", "false", "none", "True", "False", "None", "loop", "self", "data", "template", "system_prompt"}
TEMPLATE_CHARS = 600


class FieldTemplateError(ValueError):
    """A field template can't be used: a jinja2 syntax error, an unknown name, or a field it never shows."""


class FieldTemplate(Variable):
    """A trainable field template: refuses a new value that doesn't parse, names an unknown field or leaves one
    out (an optimizer records that as a "refused" update and keeps the old value)."""

    def __init__(self, value: str, *, fields: Mapping[str, str], role: str, requires_grad: bool = True,
                 name: str | None = None) -> None:
        super().__init__(value, role=role, requires_grad=requires_grad, name=name)
        self.fields = dict(fields)

    def set_value(self, value: str) -> None:
        if isinstance(value, str):
            try:
                check_template(value, self.fields)
            except FieldTemplateError as exc:
                raise ValueError(str(exc)) from None
        super().set_value(value)


class _Field:
    """What a template sees for a field: `{{ name }}` is the value between <name> tags, escaped;
    `{{ name | data("tag", 500) }}` picks the tag and a length cap; `{{ name.role }}`, `{{ name.name }}`."""

    __slots__ = ("name", "role", "_value", "_images", "_nonce")

    def __init__(self, name: str, role: str, value: Any, images: list[Image], nonce: str) -> None:
        self.name, self.role, self._value, self._images, self._nonce = name, role, value, images, nonce

    def wrap(self, tag: str | None = None, limit: int | None = None) -> str:
        tag = tag or self.name
        if isinstance(self._value, Image):
            self._images.append(self._value)
            return f"<{tag}>\n\x00{self._nonce}:{len(self._images) - 1}\x00\n</{tag}>"
        return data(self._value, tag, limit)

    def __str__(self) -> str:
        return self.wrap()


def _data_filter(value: Any, tag: str | None = None, limit: int | None = None) -> str:
    return value.wrap(tag, limit) if isinstance(value, _Field) else data(value, tag or "data", limit)


@functools.lru_cache(maxsize=1)
def _env() -> Any:
    from jinja2 import StrictUndefined  # jinja2 loads on first use: `import textopt` stays light
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False, trim_blocks=True, lstrip_blocks=True)
    env.filters["data"] = _data_filter
    return env


@functools.lru_cache(maxsize=256)
def _compile(source: str) -> Any:
    return _env().from_string(source)


def check_template(source: str, fields: Mapping[str, str]) -> None:
    """Raise FieldTemplateError (one line) unless `source` parses and uses exactly the given field names."""
    import jinja2  # jinja2 loads on first use: `import textopt` stays light
    from jinja2 import meta

    try:
        ast = _env().parse(source)
    except jinja2.TemplateSyntaxError as exc:
        raise FieldTemplateError(f"field template: jinja2 syntax error at line {exc.lineno}: {exc.message}") from None
    used = meta.find_undeclared_variables(ast)
    unknown = sorted(used - set(fields))
    if unknown:
        raise FieldTemplateError(f"field template uses {', '.join(unknown)}, which are not fields "
                                 f"(fields: {', '.join(fields)})")
    unused = [f for f in fields if f not in used]
    if unused:
        raise FieldTemplateError(f"field template never shows field(s) {', '.join(unused)}; put {{{{ {unused[0]} }}}} "
                                 "where the value belongs")
    _test_render(source, tuple(fields.items()))


@functools.lru_cache(maxsize=256)
def _test_render(source: str, fields: tuple[tuple[str, str], ...]) -> None:
    """Render `source` once with sample values: a template the sandbox refuses to render (one that reaches for
    `''.__class__.__mro__`, say) fails here, when it is set, not at every later call."""
    try:
        render_fields(source, {name: (role, f"sample {name}") for name, role in fields})
    except FieldTemplateError as exc:
        raise FieldTemplateError(f"{exc} (when test-rendered with sample values)") from None


def render_fields(source: str, fields: Mapping[str, tuple[str, Any]]) -> str | list[Any]:
    """The prompt: `source` rendered with each field {name: (role, value)}. Text, or a list of text and Image
    parts when a field holds an image. Deterministic for the same template and values."""
    import jinja2  # jinja2 loads on first use: `import textopt` stays light

    images: list[Image] = []
    nonce = secrets.token_hex(6)  # image markers can't be forged by a field's text
    ns = {name: _Field(name, role, value, images, nonce) for name, (role, value) in fields.items()}
    try:
        text = _compile(source).render(**ns)
    except (jinja2.TemplateError, TypeError, ValueError, AttributeError, ArithmeticError, LookupError, RecursionError) as exc:
        raise FieldTemplateError(f"field template could not be rendered: {type(exc).__name__}: {exc}") from None
    if not images:
        return text
    parts: list[Any] = []
    for i, piece in enumerate(re.split("\x00" + nonce + r":(\d+)\x00", text)):
        if i % 2:
            parts.append(images[int(piece)])
        elif piece:
            parts.append(piece)
    return parts


class FormattedLLMCall(Function):
    """Fills a prompt template with named fields and calls a language model: one field per Variable, each with
    its own role; backward gives each trainable field (and a trainable template or system prompt) its own feedback.

        call = to.FormattedLLMCall("Context: {{ context }}\\nQuestion: {{ question }}",
                                   fields={"question": "question to answer", "context": "retrieved passage"})
        answer = call(question=q, context=c)

    template: jinja2 text, or a Variable holding it. trainable=True makes `call.template` a trainable Variable (pass
    it to an optimizer) that refuses rewrites which break the template; a trainable Variable of your own works too,
    and a broken rewrite of it makes the next call an error node. `{{ field }}` inserts the field's value between
    tags named after it, escaped. system_prompt: optional (str or Variable). Other keyword options (max_tokens=...)
    go to the engine."""

    def __init__(self, template: str | Variable, fields: Mapping[str, str], engine: Engine | str | None = None, *,
                 system_prompt: str | Variable | None = None, role: str | None = None, trainable: bool = False,
                 **options: Any) -> None:
        if not fields:
            raise ValueError("FormattedLLMCall needs fields={name: role}, e.g. {'question': 'question to answer'}")
        for name, frole in fields.items():
            if not (isinstance(name, str) and name.isidentifier()) or keyword.iskeyword(name) or name.startswith("_") \
                    or name in _RESERVED:
                raise ValueError(f"field name {name!r} can't be used: use a Python identifier, not starting with '_' "
                                 f"nor one of {', '.join(sorted(_RESERVED))}")
            if not isinstance(frole, str) or not frole.strip():
                raise ValueError(f"field {name!r} needs a role: a short description of what it holds")
        self.fields = dict(fields)
        if isinstance(template, str):
            check_template(template, self.fields)
            template = FieldTemplate(template, fields=self.fields, requires_grad=trainable,
                                     role="prompt template (fields: " + ", ".join(self.fields) + ")")
        elif trainable:
            raise ValueError("trainable=True is for a template given as text; a Variable is trainable when it has requires_grad=True")
        if not isinstance(template, Variable):
            raise TypeError(f"template must be jinja2 text or a Variable holding it, got {type(template).__name__}")
        check_template(template.text, self.fields)  # a bad template fails here, before any call
        self.template = template
        if isinstance(system_prompt, str):
            system_prompt = Variable(system_prompt, role="system prompt of the language model")
        self.system_prompt = system_prompt
        self.engine = engine
        self.role = role or "response from the language model"
        self.options = options

    # -- calling ------------------------------------------------------------------------------
    def _bind(self, values: Mapping[str, Variable | str | Image]) -> tuple[list[Variable], OpContext]:
        missing = [f for f in self.fields if f not in values]
        unknown = [k for k in values if k not in self.fields]
        if missing or unknown:
            raise TypeError(f"{self.op_name} takes the fields {', '.join(self.fields)} by name"
                            + (f"; missing: {', '.join(missing)}" if missing else "")
                            + (f"; unknown: {', '.join(unknown)}" if unknown else ""))
        bound: dict[str, Variable] = {}
        for name, frole in self.fields.items():
            v = values[name]
            if isinstance(v, (str, Image)):
                v = Variable(v, role=frole)
            if not isinstance(v, Variable):
                raise TypeError(f"field {name!r} takes a Variable, str or to.Image, got {type(v).__name__}")
            bound[name] = v
        head = [("template", self.template)] + ([("system_prompt", self.system_prompt)] if self.system_prompt is not None else [])
        inputs: list[Variable] = []
        for _, v in head + list(bound.items()):
            if all(v is not u for u in inputs):
                inputs.append(v)
        return inputs, OpContext(args=head + list(bound.items()), saved={"fields": bound})

    async def acall(self, **fields: Variable | str | Image) -> Variable:  # type: ignore[override]
        """The response Variable; parents: the template, the system prompt (if any) and the field Variables."""
        inputs, ctx = self._bind(fields)
        return await self.apply(inputs, ctx)

    def __call__(self, **fields: Variable | str | Image) -> Variable:  # type: ignore[override]
        inputs, ctx = self._bind(fields)
        return self.apply_sync(inputs, ctx)

    def render(self, **fields: Variable | str | Image) -> str | list[Any]:
        """The user message this call would send (for reading and tests)."""
        _, ctx = self._bind(fields)
        return render_fields(self.template.text, self._values(ctx))

    def _values(self, ctx: OpContext) -> dict[str, tuple[str, Any]]:
        return {name: (self.fields[name], v.value) for name, v in ctx.saved["fields"].items()}

    # -- the op -------------------------------------------------------------------------------
    async def forward(self, ctx: OpContext, *inputs: Variable) -> str:
        try:
            check_template(self.template.text, self.fields)  # a trainable template may have been rewritten
            prompt = render_fields(self.template.text, self._values(ctx))
        except FieldTemplateError as exc:
            ctx.error = exc
            return f"the prompt template could not be filled in: {exc}"
        messages: list[dict[str, Any]] = []
        if self.system_prompt is not None:
            messages.append({"role": "system", "content": self.system_prompt.text})
        messages.append({"role": "user", "content": prompt})
        engine = resolve_engine(self.engine)
        reply = await engine.acomplete(messages, **self.options)
        ctx.engine = engine
        return reply.text

    def output_role(self, *inputs: Variable) -> str:
        return self.role

    def describe(self, ctx: OpContext, output: Variable) -> OpDescription:
        model = f" ({ctx.engine.kind} model {ctx.engine.model!r})" if ctx.engine is not None else ""
        fields = "; ".join(f"{n} ({r})" for n, r in self.fields.items())
        return OpDescription(
            name=self.op_name, args=list(ctx.args),
            doc=f"Fills the prompt template with the fields {fields} (each value between tags named after its field) "
                f"and calls a language model{model} with it as the user message (after the system prompt, if any); "
                "returns its reply.",
        )

    async def backward(self, ctx: OpContext, output: Variable, feedback: Feedback, engine: Engine) -> Mapping[Variable, str]:
        fields: dict[str, Variable] = ctx.saved["fields"]
        shown = [(n, self.fields[n], v.text) for n, v in fields.items()]
        targets = [v for v in output.parents if v.requires_grad]

        def naming(target: Variable) -> tuple[str, str]:
            names = [n for n, v in fields.items() if v is target]
            if names:
                return ("the field " + " and the field ".join(names), target.role)
            if target is self.template:
                return ("the prompt template", target.role)
            return ("the system prompt", target.role)

        async def one(target: Variable) -> str:
            what, role = naming(target)
            messages = render_messages("formatted_backward.j2", system=self.system_prompt, template=self.template,
                                       fields=shown, output=output, feedback=feedback, target=what, target_role=role,
                                       limit=SHOWN_CHARS)
            return (await engine.acomplete(messages, max_tokens=FEEDBACK_MAX_TOKENS)).text.strip()

        texts = await asyncio.gather(*(one(t) for t in targets))
        return dict(zip(targets, texts))

    def parameters(self) -> list[Variable]:
        """The trainable template and system prompt (fields are passed per call)."""
        return [v for v in (self.template, self.system_prompt) if v is not None and v.requires_grad]
