"""Stored conversations as files people can read or other tools can load: JSON and Markdown."""

from __future__ import annotations

import json
import time
from typing import Any

FORMATS = ("json", "markdown")


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def to_json(conv: dict[str, Any]) -> str:
    """The conversation as stored: id, title, model, system prompt, settings, messages with stats."""
    keys = ("id", "title", "model", "system_prompt", "settings", "created_at", "updated_at", "messages")
    return json.dumps({k: conv[k] for k in keys}, indent=2, ensure_ascii=False) + "\n"


def stats_line(stats: dict[str, Any]) -> str:
    """`42 tokens · 118.3 tokens/s · first token 0.05 s` (and a note for cached or stopped replies)."""
    if not stats:
        return ""
    parts = [f"{stats.get('tokens', 0)} tokens"]
    if stats.get("from_cache"):
        parts.append("from the response cache")
    else:
        parts.append(f"{stats.get('tokens_per_s', 0.0):.1f} tokens/s")
        parts.append(f"first token {stats.get('ttft_s', 0.0):.2f} s")
        if 0 < stats.get("threads", 0) < stats.get("cores", 0):
            parts.append(f"{stats['threads']} of {stats['cores']} cores (others are busy)")
    if stats.get("finish_reason") == "interrupted":
        parts.append("stopped")
    elif stats.get("finish_reason") == "length":
        parts.append("cut at max tokens")
    return " · ".join(parts)


def to_markdown(conv: dict[str, Any]) -> str:
    lines = [f"# {conv['title']}", "",
             f"- conversation: `{conv['id']}`", f"- model: `{conv['model']}`",
             f"- started: {_when(conv['created_at'])}", ""]
    if conv.get("system_prompt"):
        lines += ["## System", "", conv["system_prompt"], ""]
    titles = {"user": "User", "assistant": "Assistant", "system": "System (changed)"}
    for m in conv["messages"]:
        lines += [f"## {titles.get(m['role'], m['role'])}", "", m["content"], ""]
        line = stats_line(m.get("stats") or {})
        if line:
            lines += [f"*{line}*", ""]
    return "\n".join(lines)


def export(conv: dict[str, Any], fmt: str) -> str:
    return to_json(conv) if fmt == "json" else to_markdown(conv)


def format_for(path: str, default: str = "markdown") -> str:
    """The export format a file name asks for (.json → json, .md/.markdown → markdown)."""
    lower = path.lower()
    if lower.endswith(".json"):
        return "json"
    if lower.endswith((".md", ".markdown")):
        return "markdown"
    return default
