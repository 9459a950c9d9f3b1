"""Supervised examples: the prompt is encoded exactly as at chat time, the loss is on the answer."""

import pytest

from workbench.errors import UserError
from workbench.ml.checkpoint import load_tokenizer
from workbench.ml.examples import IGNORE, collate, encode_messages
from workbench.prompts import get_style


def test_prompt_tokens_match_chat_time_and_are_masked(tiny_model):
    tok = load_tokenizer(tiny_model)
    style = get_style("chatml")
    msgs = [{"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": "5"}]
    enc = encode_messages(tok, style, msgs)
    prompt_ids = tok.encode(style.render(msgs[:1]))
    assert enc.input_ids[: enc.n_prompt].tolist() == prompt_ids.tolist()
    assert (enc.labels[: enc.n_prompt] == IGNORE).all()
    answer = enc.input_ids[enc.n_prompt:].tolist()
    assert answer[-2] == tok.processor.token_to_id("<|im_end|>")  # the model learns to end its turn
    assert tok.decode(enc.input_ids[enc.n_prompt:]) == "5\n"
    ids, labels = collate([enc, encode_messages(tok, style, [*msgs[:1], {"role": "assistant", "content": "five"}])], 0)
    assert ids.shape == labels.shape and ids.shape[0] == 2


def test_too_long_example_is_refused_with_its_place(tiny_model):
    tok = load_tokenizer(tiny_model)
    msgs = [{"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "ok"}]
    with pytest.raises(UserError, match=r"train\.jsonl:7"):
        encode_messages(tok, get_style("chatml"), msgs, max_length=64, where="train.jsonl:7")
