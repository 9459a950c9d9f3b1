"""One stage option as a form row: the right control for its type, its help, and its error as
you type (checked by `workbench.options.parse_value`, the same code the CLI uses)."""

from __future__ import annotations

from typing import Any

from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.content import Content
from textual.message import Message
from textual.validation import ValidationResult, Validator
from textual.widgets import Checkbox, Collapsible, Input, Label, Select, Static

from workbench.errors import UserError
from workbench.options import Field, parse_value
from workbench.store import Artifact
from workbench.tui.data import fits


def format_default(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def on_off(value: bool) -> str:
    return "on" if value else "off"


def check(field: Field, value: Any) -> str | None:
    """The problem with `value` for `field`, in the CLI's words, or None."""
    if field.required and (value is None or (isinstance(value, str) and not value.strip())):
        return f"{field.name} is required: {field.help}"
    try:
        parse_value(field, value)
    except UserError as exc:  # the form names its fields, not their CLI flags
        return str(exc).replace(f"option {field.flag}", field.name)
    return None


class FieldValidator(Validator):
    def __init__(self, field: Field) -> None:
        super().__init__()
        self.field = field

    def validate(self, value: str) -> ValidationResult:
        problem = check(self.field, value)
        return self.failure(problem) if problem else self.success()


class OptionField(Horizontal):
    """A labelled control; `value` is what goes into the run's options."""

    class Changed(Message):
        def __init__(self, option: OptionField) -> None:
            super().__init__()
            self.option = option

    def __init__(self, field: Field, artifacts: list[Artifact], preset: str | None = None, stage: str = "") -> None:
        super().__init__(classes="option", id=f"option-{field.name}")
        self.field = field
        self.artifacts = [a for a in artifacts if fits(stage, field, a)]
        self.preset = preset
        self.error: str | None = None
        #: Errors show once the option was edited or a run was asked for, not on an empty form.
        self.touched = False

    def compose(self) -> ComposeResult:
        f = self.field
        name = Content.assemble(Content.styled(f.name, "bold"), Content.styled(" *", "$error") if f.required else "")
        kind = " or ".join(f.artifact) if f.artifact else f.type_name
        yield Label(Content("\n").join([name, Content.styled(kind, "$text-muted")]), classes="option-name")
        with Vertical(classes="option-body"):
            yield self._control()
            yield Static(f.help, classes="option-help")
            yield Static("", classes="option-error")

    def _control(self) -> Input | Select[Any] | Checkbox:
        f = self.field
        control_id = f"input-{f.name}"
        if f.is_bool and f.default is None:
            # Three states: "auto" (the stage decides, as when the CLI flag is left out), on, off.
            return Select([("on", True), ("off", False)], prompt="auto", value=Select.NULL, id=control_id,
                          compact=True)
        if f.is_bool:
            return Checkbox(on_off(bool(f.default)), value=bool(f.default), id=control_id, compact=True)
        if f.artifact and not f.is_list:
            options = [(f"{a.name} · {a.kind} · {a.id}", a.id) for a in reversed(self.artifacts)]
            value = self.preset if any(v == self.preset for _, v in options) else f.default
            if value is None and f.required and len(options) == 1:
                value = options[0][1]  # the only choice there is
            prompt = "choose…" if options else f"no {' or '.join(f.artifact)} in the workspace yet"
            return Select(options, prompt=prompt, value=value if value in {v for _, v in options} else Select.NULL,
                          id=control_id, compact=True)
        if f.choices is not None and not f.is_list:
            options = [(str(c), c) for c in f.choices]
            blank = f.default is None or not f.required
            return Select(options, allow_blank=blank, value=f.default if f.default in f.choices else Select.NULL,
                          id=control_id, compact=True)
        placeholder = "comma-separated ids or names" if f.artifact else f.type_name
        # Focus keeps the text: a selected default would vanish under the first key typed.
        return Input(format_default(f.default), placeholder=placeholder, id=control_id, compact=True,
                     validators=[FieldValidator(f)], valid_empty=False, select_on_focus=False)

    def on_mount(self) -> None:
        self.validate(show=False)

    @property
    def control(self) -> Input | Select[Any] | Checkbox:
        return self.query_one(f"#input-{self.field.name}")  # type: ignore[return-value]

    @property
    def value(self) -> Any:
        control = self.control
        if isinstance(control, Checkbox):
            return control.value
        if isinstance(control, Select):
            return None if control.value is Select.NULL else control.value
        text = control.value
        if not text.strip() and self.field.default is None:
            return None
        return text

    def set_value(self, text: str) -> None:
        """Fill a text option from elsewhere (a finder); it validates as if typed."""
        control = self.control
        if isinstance(control, Input):
            control.value = text
            control.cursor_position = len(text)

    @property
    def changed(self) -> bool:
        """Only options that differ from their default are passed on, like CLI flags."""
        value = self.value
        if isinstance(self.control, Input):
            return (value or "") != format_default(self.field.default)
        return bool(value != self.field.default)

    def reveal(self) -> None:
        """Unfold the section holding this option and put the cursor in it."""
        for ancestor in self.ancestors:
            if isinstance(ancestor, Collapsible):
                ancestor.collapsed = False
        self.control.focus()

    def validate(self, show: bool = True) -> bool:
        self.error = check(self.field, self.value)
        self.touched = self.touched or show
        self.query_one(".option-error", Static).update(self.error or "")
        self.set_class(self.error is not None and self.touched, "-invalid")
        return self.error is None

    @on(Input.Changed)
    @on(Select.Changed)
    @on(Checkbox.Changed)
    def _changed(self, event: Message) -> None:
        event.stop()
        if isinstance(event, Checkbox.Changed):
            event.checkbox.label = on_off(event.value)
        self.validate()
        self.post_message(self.Changed(self))
