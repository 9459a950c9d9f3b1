"""`workbench arena`: side-by-side votes, the leaderboard, and the judge.

Only argparse is imported here: building the parser stays instant, and the engines (llama_cpp,
torch) and numpy load inside `main` when they are needed.
"""

from __future__ import annotations

import argparse

from workbench.errors import UserError
from workbench.options import finite_float
from workbench.stages import Command

DESCRIPTION = """\
Two anonymised models answer the same prompt side by side, as "A" (left) and "B" (right); you
vote, and only then see which model was which. Each round picks the pair and their sides at
random, from a seed that is printed and stored with the vote. Votes are kept in the workspace;
`workbench arena ratings` fits Bradley–Terry ratings over them (Elo scale, 95% bootstrap
intervals). See docs/eval.md.

forms:
  workbench arena MODEL MODEL [MODEL ...] [--prompts FILE]   vote on prompts you type or a file's
  workbench arena ratings [--json]                          the leaderboard
  workbench arena votes [--json]                            the stored votes
  workbench arena judge JUDGE [--models MODEL ...]          an LLM judge re-asks the human votes
  workbench arena judge JUDGE --models M M --prompts FILE   the judge votes on new comparisons

votes: 1 or left (A is better), 2 or right (B is better), t or tie, b or both bad, s or skip.

examples:
  workbench arena tiny-q4 tiny-q8 base-q4 --prompts prompts.txt
  printf 'Say hi\\n1\\n' | workbench arena tiny-q4 tiny-q8 --temperature 0
  workbench arena judge judge-q8 --json
"""

def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("models", nargs="+", metavar="MODEL",
                   help="two or more gguf or model artifacts, .gguf files or checkpoint directories; "
                   "or ratings, votes, judge JUDGE (a model named like one of these: give its id)")
    p.add_argument("--prompts", metavar="FILE",
                   help="Prompts to compare on: text (one per line) or .jsonl (a string or "
                   '{"prompt": ...} per line); default: type them')
    p.add_argument("--seed", type=int, help="Seed for the pairs, their sides and sampling (default: random; "
                   "printed, and stored with each vote)")
    g = p.add_argument_group("answers")
    g.add_argument("--temperature", type=finite_float, help="Sampling temperature (default 0.8; 0: greedy)")
    g.add_argument("--max-tokens", type=int, help="Longest answer in tokens (default 256)")
    g.add_argument("--threads", type=int, metavar="N",
                   help="CPU threads per model (default: half the free cores, as two models answer at once)")
    g.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"],
                   help="Device for LitGPT checkpoints (GGUF runs through llama.cpp)")
    r = p.add_argument_group("ratings and judge")
    r.add_argument("--voter", choices=["human", "judge", "all"],
                   help="Whose votes to count (ratings' default: human; votes' default: all)")
    r.add_argument("--bootstrap", type=int, default=1000, metavar="N",
                   help="Resamples for the 95%% intervals (default 1000; 0: none)")
    r.add_argument("--models", dest="judge_models", nargs="+", metavar="MODEL",
                   help="judge: only comparisons between these models; with --prompts, the models "
                   "that answer the new comparisons")


def main(args: argparse.Namespace) -> int:
    first, rest = args.models[0], args.models[1:]
    if first == "ratings" or first == "votes":
        if rest:
            raise UserError(f"`workbench arena {first}` takes no models; got {' '.join(rest)}")
        from workbench_arena.report import show_ratings, show_votes

        return show_ratings(args) if first == "ratings" else show_votes(args)
    if first == "judge":
        if len(rest) != 1:
            raise UserError("name one judge model: `workbench arena judge JUDGE [--models MODEL ...]`")
        from workbench_arena.judging import run_judge

        return run_judge(rest[0], args)
    if args.judge_models:
        raise UserError("--models belongs to `workbench arena judge`; list the arena's models as arguments")
    from workbench_arena.play import run_arena

    return run_arena(args)


arena = Command("arena", "Compare two anonymised models side by side and vote; Bradley–Terry leaderboard",
                configure, main, description=DESCRIPTION)
