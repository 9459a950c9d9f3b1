"""A Tree whose labels that do not fit end in "…" rather than being cut mid-word."""

from __future__ import annotations

from typing import TypeVar

from rich.style import Style
from rich.text import Text
from textual.widgets import Tree
from textual.widgets.tree import TreeNode

T = TypeVar("T")


class FittedTree(Tree[T]):
    def render_label(self, node: TreeNode[T], base_style: Style, style: Style) -> Text:
        label = super().render_label(node, base_style, style)
        depth, parent = 0, node.parent
        while parent is not None:
            depth, parent = depth + 1, parent.parent
        # The guides in front of a label take `guide_depth` cells per level (the hidden root's none).
        room = self.scrollable_content_region.width - max(0, depth - (0 if self.show_root else 1)) * self.guide_depth
        if room > 0 and label.cell_len > room:
            label.truncate(room, overflow="ellipsis")
        return label
