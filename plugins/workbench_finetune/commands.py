"""`workbench predict CLASSIFIER TEXT...`: label texts with a trained classifier.

Light module: torch and the model load only when the command runs.
"""

from __future__ import annotations

import argparse
import json
import sys

from workbench.errors import UserError
from workbench.stages import Command


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("classifier", metavar="CLASSIFIER", help="classifier id or name")
    parser.add_argument("texts", metavar="TEXT", nargs="+", help="text(s) to label; '-' reads one text from stdin")
    parser.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda", "mps"],
                        help="where to run the model (default: cpu)")


def main(args: argparse.Namespace) -> int:
    from workbench.store import Store

    texts = [sys.stdin.read() if t == "-" else t for t in args.texts]
    if any(not t.strip() for t in texts):
        raise UserError("a text to label is empty")
    store = Store()
    art = store.find_artifact(args.classifier, ("classifier",))
    spec = json.loads((art.path / "classifier.json").read_text())
    try:
        base = store.find_artifact(spec["base_model"], ("model",))
    except UserError:
        raise UserError(
            f"classifier {art.id} needs its base model {spec['base_model']}, which is no longer in the workspace"
        ) from None

    from workbench.hardware import choose_device
    from workbench_finetune.classifier import load_classifier
    from workbench_finetune.classifier import predict as label_texts

    loaded = load_classifier(art.path, base.path, choose_device(args.device))
    results = label_texts(loaded, texts)
    if getattr(args, "json", False):
        out = [{"text": t, **r} for t, r in zip(texts, results, strict=True)]
        sys.stdout.write(json.dumps(out[0] if len(out) == 1 else out, indent=2) + "\n")
        return 0
    for text, r in zip(texts, results, strict=True):
        prefix = f"{text[:40]!r}\t" if len(texts) > 1 else ""
        sys.stdout.write(f"{prefix}{r['label']}\t{r['probability']:.4f}\n")
    return 0


predict = Command(
    name="predict",
    summary="Label text with a trained classifier (label and probability)",
    configure=configure,
    main=main,
    description=(
        "Prints the most likely label and its probability for each text.\n"
        "With --json: an object {text, label, probability, probabilities} (a list for several texts).\n\n"
        "example: workbench predict tiny-chat-classifier \"WIN a FREE prize, click now\""
    ),
)
