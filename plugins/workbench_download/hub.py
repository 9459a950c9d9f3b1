"""Searching the Hugging Face Hub by name: the download stage's finder and `workbench search`.

Light module: `huggingface_hub` is imported when a search runs. Honours HF_ENDPOINT, HF_TOKEN
and HF_HUB_OFFLINE like every other Hub call in workbench.
"""

from __future__ import annotations

from typing import Any

from workbench.errors import UserError

_EXPAND = ["downloads", "likes", "cardData", "usedStorage", "gated", "pipeline_tag", "library_name",
           "tags", "safetensors", "gguf", "lastModified"]
#: What a search row shows, as the download stage's finder and `workbench search` print it.
COLUMNS = (("id", "repository", "text"), ("downloads", "downloads", "count"), ("likes", "likes", "count"),
           ("size", "size", "bytes"), ("params", "params", "count"), ("license", "licence", "text"),
           ("gguf", "GGUF", "flag"), ("gated", "gated", "flag"))


def search(query: str, limit: int = 20) -> list[dict[str, Any]]:
    """Models whose id contains `query`, most downloaded first.

    Each row: id, downloads, likes, size (bytes the repository stores, None if the Hub does not
    say), license, gated, params (from the safetensors metadata), gguf (whether it ships GGUF
    files), pipeline_tag, last_modified.
    """
    import httpx
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if constants.is_offline_mode():
        raise UserError("searching the Hub needs the network, but HF_HUB_OFFLINE=1 is set")
    try:
        models = list(HfApi().list_models(search=query.strip(), limit=limit, sort="downloads", expand=_EXPAND))
    except (httpx.ConnectError, httpx.TimeoutException, OfflineModeIsEnabled) as exc:
        raise UserError(f"cannot reach {constants.ENDPOINT} to search ({exc}); check the network") from None
    except HfHubHTTPError as exc:
        raise UserError(f"{constants.ENDPOINT} refused the search: {str(exc).splitlines()[0]}") from None
    return [_row(m) for m in models]


def _row(model: Any) -> dict[str, Any]:
    card = model.card_data.to_dict() if model.card_data is not None else {}
    tags = model.tags or []
    license_ = card.get("license") or next((t.split(":", 1)[1] for t in tags if t.startswith("license:")), None)
    return {
        "id": model.id,
        "downloads": model.downloads,
        "likes": model.likes,
        "size": getattr(model, "usedStorage", None),
        "license": license_,
        "gated": bool(model.gated),
        "params": model.safetensors.total if model.safetensors is not None else None,
        "gguf": model.gguf is not None or "gguf" in tags,
        "pipeline_tag": model.pipeline_tag,
        "last_modified": model.last_modified.isoformat() if model.last_modified else None,
    }
