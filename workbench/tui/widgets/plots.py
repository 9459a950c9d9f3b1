"""Terminal plots (textual-plotext): metric curves for the run monitor, bars for comparisons."""

from __future__ import annotations

from textual import events
from textual_plotext import PlotextPlot


class Replotting(PlotextPlot):
    """Draws its figure afresh at every size: plotext keeps layout from an earlier size."""

    def replot(self) -> None:
        raise NotImplementedError

    def on_mount(self) -> None:
        self.replot()

    def on_resize(self, event: events.Resize) -> None:
        self.replot()


class CurvePlot(Replotting):
    """Lines of (step, value) points, one per metric."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._series: dict[str, list[tuple[float, float]]] = {}
        self._xlabel = "step"

    def show(self, series: dict[str, list[tuple[float, float]]], xlabel: str = "step") -> None:
        self._series = {name: list(points) for name, points in series.items()}
        self._xlabel = xlabel
        self.replot()

    def replot(self) -> None:
        plt = self.plt
        plt.clear_figure()
        if not self._series:
            plt.title("no metrics yet")
        for name, points in self._series.items():
            plt.plot([x for x, _ in points], [y for _, y in points], label=name, marker="braille")
        plt.xlabel(self._xlabel)
        self.refresh()


class BarPlot(Replotting):
    """One bar per model for one metric."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._labels: list[str] = []
        self._values: list[float] = []
        self._title = ""

    def show(self, title: str, labels: list[str], values: list[float]) -> None:
        self._title, self._labels, self._values = title, labels, values
        self.replot()

    def replot(self) -> None:
        plt = self.plt
        plt.clear_figure()
        plt.title(self._title)
        if self._labels:
            plt.bar(self._labels, self._values, width=0.4, orientation="horizontal")
        self.refresh()
