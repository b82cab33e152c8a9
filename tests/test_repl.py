"""repl.py: `gptscratch chat`'s conversation, which gives way from its oldest exchange when the context fills."""

from gptscratch.chat import render_prompt
from gptscratch.repl import fit
from tests.helpers import assistant, user


def test_a_long_conversation_gives_way_from_its_oldest_exchange_keeping_the_system_message():
    system = {"role": "system", "content": "be brief"}
    exchanges = [[user(f"question {i} " + "word " * 10), assistant(f"answer {i}")] for i in range(5)]
    messages = [system, *[m for pair in exchanges for m in pair], user("last question")]
    whole = len(render_prompt(messages))
    assert fit(messages, whole + 8, 8) == messages
    kept = fit(messages, whole, 8)  # 8 tokens short: the first exchange goes, the system message stays
    assert kept == [system, *messages[3:]] and len(render_prompt(kept)) + 8 <= whole
    assert fit([system, user("word " * 100)], 64, 8) is None  # the last message alone does not fit
