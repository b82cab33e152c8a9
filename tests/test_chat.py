"""The chat format: ids and the assistant's mask against hand-built conversations, bad conversations refused,
and the format carried by an export's tokenizer (transformers' chat template renders what we render)."""

import numpy as np
import pytest
import torch

from gptscratch.chat import (
    ASSISTANT_END,
    ASSISTANT_START,
    CHAT_VOCAB_SIZE,
    USER_END,
    USER_START,
    ChatFormatError,
    assistant_mask,
    decode_reply,
    encode_conversation,
    get_chat_encoding,
    is_chat_model,
    render_prompt,
)
from gptscratch.hf import load_hf, save_hf
from gptscratch.model import GPT, GPTConfig
from gptscratch.tokenizer import EOT_TOKEN, get_encoding
from tests.helpers import assistant, user

CONVERSATION = [
    {"role": "system", "content": "Answer in one word."},
    {"role": "user", "content": "Capital of France?"},
    {"role": "assistant", "content": "Paris"},
    {"role": "user", "content": "And of Italy?"},
    {"role": "assistant", "content": "Rome, I think."},
]


def text(s: str) -> list[int]:
    return get_encoding().encode_ordinary(s)


def test_the_mask_is_one_exactly_on_the_assistants_text_and_its_end_token():
    ids, mask = encode_conversation(CONVERSATION)
    # built by hand: <|endoftext|> opens, the system text opens the first user turn, the turns follow
    parts = [
        ([EOT_TOKEN, USER_START, *text("Answer in one word.\n\nCapital of France?"), USER_END, ASSISTANT_START], 0),
        ([*text("Paris"), ASSISTANT_END], 1),
        ([USER_START, *text("And of Italy?"), USER_END, ASSISTANT_START], 0),
        ([*text("Rome, I think."), ASSISTANT_END], 1),
    ]
    assert ids == [t for part, _ in parts for t in part]
    assert mask == [m for part, m in parts for _ in part]
    assert get_chat_encoding().decode(ids) == ("<|endoftext|><|user_start|>Answer in one word.\n\nCapital of France?"
                                               "<|user_end|><|assistant_start|>Paris<|assistant_end|><|user_start|>"
                                               "And of Italy?<|user_end|><|assistant_start|>Rome, I think."
                                               "<|assistant_end|>")


def test_the_prompt_is_the_conversation_up_to_the_replys_first_token():
    ids, mask = encode_conversation(CONVERSATION)
    prompt = render_prompt(CONVERSATION[:-1])
    assert prompt[-1] == ASSISTANT_START
    assert ids[:len(prompt)] == prompt and mask[len(prompt) - 1] == 0 and mask[len(prompt)] == 1
    assert decode_reply(ids[len(prompt):] + text(" ignored")) == "Rome, I think."


def test_the_mask_follows_from_the_ids_alone_whole_or_cut_into_rows():
    ids, mask = encode_conversation(CONVERSATION)
    stream = np.array(ids * 3)
    want = np.array(mask * 3, dtype=bool)
    assert (assistant_mask(stream) == want).all()
    # rows cut anywhere, each told whether it starts inside an assistant turn, as the loader tells it: whether
    # the hand-built mask holds its first token (the assistant's own text and end token are inside its turn)
    starts = np.arange(0, len(stream) - 8, 5)
    rows = np.stack([stream[s:s + 8] for s in starts])
    got = assistant_mask(rows, want[starts])
    assert (got == np.stack([want[s:s + 8] for s in starts])).all()


def test_text_that_spells_a_chat_token_stays_text():
    messages = [{"role": "user", "content": "say <|assistant_end|> <|endoftext|>"},
                {"role": "assistant", "content": "<|user_start|>"}]
    ids, mask = encode_conversation(messages)
    assert ids.count(ASSISTANT_END) == 1 and ids.count(USER_START) == 1 and ids.count(EOT_TOKEN) == 1
    assert sum(mask) == len(text("<|user_start|>")) + 1


@pytest.mark.parametrize(("messages", "message"), [
    ([], "messages is an empty list"),
    ({"role": "user"}, "messages is dict; expected a non-empty list"),
    (["hi"], "messages[0] is str"),
    ([{"role": "bot", "content": "hi"}], "messages[0]: role 'bot'"),
    ([user("  "), assistant("x")], "messages[0]: the user's content is empty"),
    ([user("a"), {"role": "assistant"}], "messages[1]: content is null; expected text"),
    ([{"role": "user", "content": ["parts"]}, assistant("x")], "content is list"),
    ([user("a"), user("b")], "messages[1] is the user's turn where the assistant's was due"),
    ([assistant("a")], "messages[0] is the assistant's turn where the user's was due"),
    ([user("a"), {"role": "system", "content": "b"}], "messages[1]: a system message may only come first"),
    ([{"role": "system", "content": "a"}], "only a system message"),
    ([user("a")], "ends with the user's turn"),
])
def test_bad_conversations_are_refused_naming_the_message(messages, message):
    with pytest.raises(ChatFormatError) as e:
        encode_conversation(messages)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_prompt_must_end_with_the_users_message():
    with pytest.raises(ChatFormatError, match="ends with the assistant's turn"):
        render_prompt(CONVERSATION)


def test_an_export_of_a_chat_model_carries_the_chat_tokens_and_a_template_that_renders_as_ours(tmp_path, monkeypatch):
    transformers = pytest.importorskip("transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    chat = GPT(GPTConfig(block_size=64, n_layer=1, n_head=2, n_embd=32, vocab_size=CHAT_VOCAB_SIZE, vocab_multiple=64))
    out = save_hf(chat, tmp_path / "chat")
    tok = transformers.AutoTokenizer.from_pretrained(out)
    assert len(tok) == CHAT_VOCAB_SIZE
    rendered = tok.apply_chat_template(CONVERSATION[:-1], add_generation_prompt=True, tokenize=True)
    rendered = rendered["input_ids"] if isinstance(rendered, dict) or hasattr(rendered, "keys") else rendered
    assert rendered == render_prompt(CONVERSATION[:-1])
    assert tok.decode(encode_conversation(CONVERSATION)[0]) == get_chat_encoding().decode(
        encode_conversation(CONVERSATION)[0])
    model = transformers.AutoModelForCausalLM.from_pretrained(out)
    assert model.config.vocab_size == CHAT_VOCAB_SIZE and ASSISTANT_END in model.generation_config.eos_token_id
    assert is_chat_model(load_hf(str(out)).config)  # and it reads back as a chat model
    x = torch.tensor([render_prompt(CONVERSATION[:3] + CONVERSATION[3:4])])
    with torch.no_grad():
        assert (model(x).logits - chat(x)[0][..., :CHAT_VOCAB_SIZE]).abs().max() < 1e-4
    # a base model's export has none of it: its embedding has no rows for the chat tokens
    base = save_hf(GPT(GPTConfig(block_size=64, n_layer=1, n_head=2, n_embd=32, vocab_multiple=64)), tmp_path / "base")
    tok = transformers.AutoTokenizer.from_pretrained(base)
    assert len(tok) == EOT_TOKEN + 1 and not tok.chat_template
