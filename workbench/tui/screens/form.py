"""A stage's options as a form, generated from its Options dataclass; Run starts a worker
process through `workbench.runs.start`, exactly as the CLI would."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, ClassVar

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, VerticalScroll
from textual.content import Content
from textual.widgets import Button, Collapsible, Static

from workbench import runs
from workbench.errors import UserError
from workbench.options import Field, fields
from workbench.tui.data import Entry, fits, open_store
from workbench.tui.screens.base import WorkbenchScreen
from workbench.tui.widgets.option_field import OptionField

if TYPE_CHECKING:
    from workbench.store import Artifact
    from workbench.tui.app import WorkbenchApp


#: Options a person sets on most runs, shown first even when their stage files them in a group.
ESSENTIAL = ("model", "max_steps", "max_tokens", "epochs", "quant", "vocab_size")
#: A form this short shows every option as it is.
SHORT_FORM = 8


def essentials(options: list[Field]) -> tuple[list[Field], dict[str, list[Field]]]:
    """(what the form shows first, the rest folded by group). First come, in the stage's order,
    its inputs (required options and artifacts), the common knobs and its ungrouped options;
    grouped and advanced options fold away, advanced last."""
    if len(options) <= SHORT_FORM:
        return [f for f in options if not f.advanced], (
            {"advanced": [f for f in options if f.advanced]} if any(f.advanced for f in options) else {})
    first = [f for f in options if not f.advanced and (
        f.required or f.artifact or f.name in ESSENTIAL or f.group is None)]
    folded: dict[str, list[Field]] = {}
    for f in options:
        if f not in first and not f.advanced:
            folded.setdefault(f.group or "other", []).append(f)
    if any(f.advanced for f in options):
        folded["advanced"] = [f for f in options if f.advanced]
    return first, folded


def in_form_words(message: str, options: list[OptionField]) -> tuple[str, OptionField | None]:
    """A CLI message speaks of flags (`--vocab-size`); the form names its fields (`vocab_size`).
    Also returns the first field the message names, where the cursor belongs."""
    by_flag = {o.field.flag: o for o in options}
    named: list[OptionField] = []

    def rename(match: re.Match[str]) -> str:
        option = by_flag.get(match.group(0))
        if option is None:
            return match.group(0)
        named.append(option)
        return option.field.name

    message = re.sub(r"--[a-z0-9][a-z0-9-]*", rename, message)
    return message.replace("option ", "", 1) if message.startswith("option ") else message, next(iter(named), None)


class StageFormScreen(WorkbenchScreen):
    VIEW = "pipeline"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+r", "run", "Run", priority=True, tooltip="Start the stage with these options"),
        Binding("escape", "back", "Back"),
        Binding("ctrl+f", "find", "Find", tooltip="Search for a value of this option (the Hub, say)"),
        # Digits belong to the form: on a checkbox or a dropdown they must not leave it.
        *(Binding(str(n), "stay", show=False) for n in range(1, 10)),
    ]
    app: WorkbenchApp

    def __init__(self, entry: Entry, artifacts: list[Artifact], model_id: str | None = None) -> None:
        super().__init__()
        self.entry = entry
        self.artifacts = artifacts
        self.model_id = model_id
        self.starting = False

    def compose_body(self) -> ComposeResult:
        stage = self.entry.stage_cls
        yield Static(Content.assemble(Content.styled(self.entry.label, "bold"), f" ({self.entry.name}) — ",
                                      stage.summary), id="form-title")
        fields_box = VerticalScroll(id="form-fields")
        fields_box.can_focus = False  # focus goes to the options; the box scrolls to follow it
        with fields_box:
            if stage.description:
                with Collapsible(title="About this stage", collapsed=True, id="form-about"):
                    yield Static(stage.description.strip(), id="form-description")
            preset = self._preset()
            essential, folded = essentials(list(fields(stage.Options)))
            for f in essential:
                yield from self._option(f, preset)
            for group, group_fields in folded.items():
                with Collapsible(title=f"{group[:1].upper()}{group[1:]} options", collapsed=True, classes="option-fold"):
                    for f in group_fields:
                        yield from self._option(f, preset)
        yield Static("", id="form-error")
        with Horizontal(id="form-buttons"):
            yield Button("Run", variant="primary", id="run", compact=True)
            yield Button("Back", id="back", compact=True)

    def _option(self, f: Field, preset: dict[str, str]) -> ComposeResult:
        yield OptionField(f, self.artifacts, preset.get(f.name), self.entry.name)
        for i, finder in enumerate(self.entry.stage_cls.finders):
            if finder.option == f.name:
                yield Button(f"{finder.title}… (ctrl+f)", id=f"find-{i}", classes="finder-button", compact=True)

    def _preset(self) -> dict[str, str]:
        """The selected model (or what the run before made) goes into the first option that takes it."""
        model = next((a for a in self.artifacts if a.id == self.model_id), None)
        if model is None:
            return {}
        for f in fields(self.entry.stage_cls.Options):
            if fits(self.entry.name, f, model) and not f.is_list:
                return {f.name: model.id}
        return {}

    def on_mount(self) -> None:
        first = next(iter(self.query(OptionField)), None)
        if first is not None:
            first.control.focus()

    @property
    def options(self) -> list[OptionField]:
        return list(self.query(OptionField))

    def values(self) -> dict[str, Any]:
        return {o.field.name: o.value for o in self.options if o.changed}

    @on(OptionField.Changed)
    def _clear_error(self) -> None:
        self.query_one("#form-error", Static).update("")

    @on(Button.Pressed, "#run")
    def action_run(self) -> None:
        if self.starting:
            return
        invalid = [o for o in self.options if not o.validate()]
        if invalid:
            invalid[0].reveal()
            self._show_error(f"{len(invalid)} option{'s' if len(invalid) > 1 else ''} to fix: {invalid[0].error}")
            return
        self.starting = True
        self.query_one("#run", Button).disabled = True
        self.start(self.values())

    @on(Button.Pressed, "#back")
    def action_back(self) -> None:
        self.dismiss()

    def action_stay(self) -> None:
        self.notify("Esc leaves the form; the view keys work outside it.", timeout=3)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "find":
            return bool(self.entry.stage_cls.finders)
        return True

    @on(Button.Pressed, ".finder-button")
    def _find_pressed(self, event: Button.Pressed) -> None:
        self.action_find(int((event.button.id or "find-0").removeprefix("find-")))

    def action_find(self, index: int | None = None) -> None:
        """Open a finder: the one asked for, else the one of the focused option, else the first."""
        from workbench.tui.screens.finder import FinderScreen

        finders = self.entry.stage_cls.finders
        if not finders:
            return
        if index is None:
            around = self.focused.ancestors_with_self if self.focused is not None else []
            focused = next((a for a in around if isinstance(a, OptionField)), None)
            index = next((i for i, f in enumerate(finders) if focused and f.option == focused.field.name), 0)
        finder = finders[index]
        field = self.query_one(f"#option-{finder.option}", OptionField)
        current = field.value if isinstance(field.value, str) else ""

        def chosen(row: dict[str, Any] | None) -> None:
            if row is not None and row.get(finder.fills) is not None:
                field.set_value(str(row[finder.fills]))
                field.control.focus()

        self.app.push_screen(FinderScreen(finder, current), chosen)

    @work(thread=True, exclusive=True, group="start-run", exit_on_error=False)
    def start(self, values: dict[str, Any]) -> None:
        try:
            with open_store(create=True) as store:
                assert store is not None
                run, proc = runs.start(self.entry.name, values, store)
        except Exception as exc:  # bad options or a stage's own check: say it in the form
            message = str(exc) if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"
            self.app.call_from_thread(self._failed, message)
            return
        self.app.call_from_thread(self.app.run_started, run.id, proc, self)

    def _failed(self, message: str) -> None:
        self.starting = False
        self.query_one("#run", Button).disabled = False
        message, named = in_form_words(message, self.options)
        self._show_error(message)
        if named is not None:
            named.reveal()

    def _show_error(self, message: str) -> None:
        self.query_one("#form-error", Static).update(Content.styled(message, "$text-error"))
