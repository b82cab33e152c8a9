"""An export carries its tokenizer, GPT-2's or one trained by `gptscratch tokenizer train`: transformers loads it
offline and encodes exactly as gptscratch does.

A trained tokenizer's files are checked against what does not go through the translation: its own
`tiktoken.Encoding` for ids, tiktoken's regex for where text is cut, GPT-2's published vocab.json for the byte
alphabet, and ids built by hand for the chat template."""

import json
import random
from pathlib import Path

import pytest
import tiktoken
import torch

from gptscratch import bpe
from gptscratch.generate import generate
from gptscratch.hf import save_hf
from gptscratch.hf.tokenizer import FILES, TRAINED_FILES, byte_alphabet, trained_tokenizer_json, write_trained_tokenizer
from gptscratch.model import GPT, GPTConfig
from gptscratch.tokenizer import EOT_TOKEN, GPT2_PATTERN, get_encoding, vocab_files

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

TEXTS = [
    "Hello, I'm a language model,",
    "héllo wörld, ünïcode: 日本語のテキスト 🙂 and ﬁ ligatures",
    "digits 1234567890, 3.14159, 2026-12-02 and 10,000,000",
    "   leading   spaces,\ttabs\t\tand\n\n\nnewlines   \n",
    "trailing spaces    ",
    "<|endoftext|>a special token, then text<|endoftext|>",
    "a\u00a0no-break space, a\u200bzero-width one, and\r\nCRLF",
    "it's they're we've I'd y'all",
]
MODERN = dict(bias=False, pos_embedding="rope", norm="rmsnorm", norm_weight=False, qk_norm=True, mlp="swiglu",
              tie_embeddings=False)


@pytest.mark.parametrize("options", [{}, MODERN], ids=["gpt2", "qwen3"])
def test_an_export_loads_with_autotokenizer_offline_and_encodes_as_ours(tmp_path, monkeypatch, options):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    out = save_hf(GPT(GPTConfig(block_size=64, n_layer=1, n_head=2, n_embd=32, vocab_multiple=64, **options)),
                  tmp_path / "export")
    assert all((out / name).is_file() for name in FILES)
    tok = transformers.AutoTokenizer.from_pretrained(out)
    enc = get_encoding()
    for text in TEXTS:
        ids = tok(text)["input_ids"]
        assert ids == enc.encode(text, allowed_special="all"), text
        assert tok.decode(ids) == text
    assert (tok.eos_token_id, tok.bos_token_id, tok.model_max_length, len(tok)) == (EOT_TOKEN, EOT_TOKEN, 64, 50257)


def test_pipeline_generates_from_an_export_with_no_network_as_our_generate_does(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=64, n_layer=2, n_head=2, n_embd=32)).eval()
    out = save_hf(model, tmp_path / "export")
    pipe = transformers.pipeline("text-generation", model=str(out), device="cpu")
    prompt = "The king said"
    text = pipe(prompt, max_new_tokens=8, do_sample=False, return_full_text=False)[0]["generated_text"]
    enc = get_encoding()
    ids = torch.tensor([enc.encode(prompt)])
    ours = generate(model, ids, 8, temperature=0.0)[0, ids.size(1):].tolist()
    assert text == enc.decode(ours)


# --- a tokenizer of the model's own: tokenizer.json translated from tiktoken's ranks --------------

# text to learn from: accents, CJK, emoji, Arabic, digit runs, whitespace runs, indented code, contractions
FRAGMENTS = ["the", " the", "tokenizer", "naïve café", "déjà vu", "日本語のテキスト", "東京", "😀", "🚀🚀", "👩‍👩‍👧",
             "مرحبا بالعالم", "12345", "3.14159", "2026", "  ", "    ", "\t", "\t\t", "\n", "\n\n\n", "\r\n",
             "trailing   \n", "I'm", "DON'T", "we've", "they'll", "def f(x):\n    return x + 1\n",
             "if x:\n        y = [1, 2]\n", "====", "----", "!!!", "...", "aaaa", " ", " x"]
UNSEEN = [
    "Hello, I'm a language model, and YOU'RE not; she'd've said THEY'LL'D",
    "Ωμέγα ∑ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ﬁ ligature, ſ long s, Kelvin K, İstanbul, straße",
    "한국어 텍스트 and ไทย and हिन्दी, עברית, русский текст, العَرَبِيَّة",
    "emoji 🙂🙃 flags 🇫🇷🇯🇵 skin 👍🏽 ZWJ 🧑‍💻 keycap 1️⃣",
    "digits 0123456789 3.14159265358979 -42 1e10 1,000,000 ٣٤٥ ２０２６ ½ Ⅻ",
    "   leading, trailing and\t\ttabs \n\n\r\n  ",
    "a\u00a0no-break space, a\u200bzero-width one, \u3000ideographic, \u2028line separator, \x0b\x0c",
    "\x00\x01\x7f\ufffd control bytes",
    "class A:\n\tdef f(self):\n\t\treturn {'k': [1, 2, 3]}  # comment\n\n\n",
    "x" * 40 + " " * 17 + "=" * 23 + "\n" * 9,
    "'s 's'S 'Ss ''' '' ' a'b",
    "",
]
WHITESPACE_RUNS = [c * n for c in (" ", "\t", "\n") for n in range(1, 17)] + [" " * n + "x" for n in range(1, 12)]


def training_text() -> str:
    rng = random.Random(0)
    return "\n".join("".join(rng.choice(FRAGMENTS) + rng.choice(["", " ", "\n"]) for _ in range(rng.randint(3, 30)))
                     for _ in range(600))


@pytest.fixture(scope="module", params=["gpt2", "gpt4"])
def trained(request, tmp_path_factory):
    """A tokenizer trained on `training_text` with the param's split pattern, its files written, and transformers'
    tokenizer loaded from them offline."""
    pytest.importorskip("rustbpe")
    root = tmp_path_factory.mktemp(f"trained-{request.param}")
    (root / "corpus.txt").write_text(training_text(), encoding="utf-8")
    enc, manifest = bpe.train(str(root / "corpus.txt"), 500, pattern=request.param, progress=False)
    (root / "export").mkdir()
    write_trained_tokenizer(root / "export", enc, manifest, block_size=128)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        tok = transformers.AutoTokenizer.from_pretrained(root / "export")
    return enc, manifest, tok, root / "export"


def test_a_trained_tokenizer_loads_with_autotokenizer_offline_and_encodes_as_its_encoding(trained):
    enc, manifest, tok, out = trained
    assert sorted(p.name for p in out.iterdir()) == sorted(TRAINED_FILES)
    texts = [*UNSEEN, *WHITESPACE_RUNS, *training_text().splitlines()[:200], *(t for t in TEXTS if "<|" not in t)]
    for text in texts:
        ids = tok.encode(text, add_special_tokens=False)
        assert ids == enc.encode_ordinary(text), text
        assert tok(text)["input_ids"] == ids  # no BOS or EOS added
        assert tok.decode(ids) == text
    eot = manifest["special_tokens"]["<|endoftext|>"]
    assert (len(tok), tok.eos_token_id, tok.bos_token_id, tok.model_max_length) == (500, eot, eot, 128)


def test_the_special_tokens_are_their_single_ids_as_tiktoken_allows_them(trained):
    enc, manifest, tok, _ = trained
    assert [manifest["special_tokens"][s] for s in bpe.SPECIAL_TOKENS] == list(range(495, 500))
    for special in bpe.SPECIAL_TOKENS:
        assert tok.encode(special, add_special_tokens=False) == enc.encode(special, allowed_special="all") \
            == [manifest["special_tokens"][special]]
    text = "<|endoftext|>naïve 12345<|user_start|>  I'm\n\n<|user_end|><|assistant_start|>日本語 😀<|assistant_end|>x"
    ids = tok.encode(text, add_special_tokens=False)
    assert ids == enc.encode(text, allowed_special="all")
    assert tok.decode(ids) == text
    assert tok.decode(ids, skip_special_tokens=True) == "naïve 12345  I'm\n\n日本語 😀x"


def test_apply_chat_template_gives_the_ids_built_from_the_encoding(trained):
    enc, manifest, tok, _ = trained
    special = manifest["special_tokens"]
    eot, user_start, user_end, assistant_start, assistant_end = (special[s] for s in bpe.SPECIAL_TOKENS)
    ask = "What is 3.14159 × 2?  Answer in  日本語 😀"
    ids = tok.apply_chat_template([{"role": "user", "content": ask}], add_generation_prompt=True,
                                  tokenize=True, return_dict=False)
    assert ids == [eot, user_start, *enc.encode_ordinary(ask), user_end, assistant_start]
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi, I'm Ada"},
                {"role": "assistant", "content": "Hello\tAda!"}, {"role": "user", "content": ask}]
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    assert ids == [eot, user_start, *enc.encode_ordinary("Be brief.\n\nHi, I'm Ada"), user_end,
                   assistant_start, *enc.encode_ordinary("Hello\tAda!"), assistant_end,
                   user_start, *enc.encode_ordinary(ask), user_end, assistant_start]


BYTES_ONLY = tiktoken.Encoding("bytes", pat_str=r"\S+|\s+", mergeable_ranks={bytes([b]): b for b in range(256)},
                               special_tokens={})


def tiktoken_pieces(pattern: str, text: str) -> list[bytes]:
    """The pieces tiktoken's regex cuts `text` into, read off an encoding that has every substring of `text` as a
    token: tiktoken encodes a piece that is a token as that one token."""
    data = text.encode()
    ranks = {bytes([b]): b for b in range(256)}
    for i in range(len(data)):
        for j in range(i + 2, len(data) + 1):
            ranks.setdefault(data[i:j], len(ranks))
    enc = tiktoken.Encoding("pieces", pat_str=pattern, mergeable_ranks=ranks, special_tokens={})
    return [enc.decode_single_token_bytes(t) for t in enc.encode_ordinary(text)]


@pytest.mark.parametrize("pattern", sorted(bpe.PATTERNS))
def test_the_pre_tokenizer_cuts_text_where_tiktokens_regex_does(pattern):
    # the `tokenizers` library's regex engine is Oniguruma, tiktoken's fancy-regex: both read the pattern as it is
    pat = bpe.PATTERNS[pattern]
    pre = tokenizers.Tokenizer.from_str(json.dumps(trained_tokenizer_json(BYTES_ONLY, pat, {}))).pre_tokenizer
    unspell = {c: b for b, c in enumerate(byte_alphabet())}
    for text in [*UNSEEN, *WHITESPACE_RUNS[::3], "it's IT'S it'LL we'Ve 'ſ 'K x'd", "1234567 ab12cd 3.14"]:
        for line in text.splitlines(keepends=True) or [text]:
            pieces = [bytes(unspell[c] for c in piece) for piece, _ in pre.pre_tokenize_str(line)]
            assert pieces == tiktoken_pieces(pat, line), line


def test_the_byte_alphabet_spells_gpt2s_vocabulary_as_its_vocab_json_does():
    vocab_bpe, encoder_json = vocab_files()
    encoder = json.loads(Path(encoder_json).read_text(encoding="utf-8"))
    translated = trained_tokenizer_json(get_encoding(), GPT2_PATTERN, {"<|endoftext|>": EOT_TOKEN})
    assert translated["model"]["vocab"] == {t: i for t, i in encoder.items() if i != EOT_TOKEN}
    published = Path(vocab_bpe).read_text(encoding="utf-8").splitlines()[1:]
    assert set(published) <= set(translated["model"]["merges"])  # the merges learned, among every split
    assert byte_alphabet()[ord(" ")] == "Ġ" and byte_alphabet()[ord("\n")] == "Ċ"
    assert len(set(byte_alphabet())) == 256


def test_every_split_is_a_merge_and_a_piece_that_is_a_token_is_that_token():
    # "   " can be made as " " + "  " or "  " + " ": seven spaces end as "    " + "   " in tiktoken, which a BPE
    # with only the first of the two splits would leave as "    " + "  " + " ". "abcd" is a token its bytes
    # never merge into ("bc" goes first, then nothing joins "a" + "bc" or "bc" + "d"): tiktoken takes the
    # whole piece, which a BPE only does with `ignore_merges`
    ranks = {bytes([b]): b for b in range(256)}
    for token in (b"  ", b"    ", b"   ", b"bc", b"ab", b"cd", b"abcd"):
        ranks[token] = len(ranks)
    enc = tiktoken.Encoding("hand", pat_str=bpe.GPT4_PATTERN, mergeable_ranks=ranks, special_tokens={})
    spec = trained_tokenizer_json(enc, bpe.GPT4_PATTERN, {})
    # in the order of the tokens made, then of their parts' ranks: "    " is also " " + "   ", a later token
    assert spec["model"]["merges"] == ["Ġ Ġ", "Ġ ĠĠĠ", "ĠĠ ĠĠ", "ĠĠĠ Ġ", "Ġ ĠĠ", "ĠĠ Ġ", "b c", "a b", "c d", "ab cd"]
    texts = [" " * n for n in range(1, 13)] + ["abcd", "abcde", "xabcd", "abc", "bcd", "abab cdcd"]

    def unlike_tiktoken(spec: dict) -> list[str]:
        tok = tokenizers.Tokenizer.from_str(json.dumps(spec))
        return [t for t in texts if tok.encode(t).ids != enc.encode_ordinary(t)]

    assert unlike_tiktoken(spec) == []
    assert enc.encode_ordinary(" " * 7) == [ranks[b"    "], ranks[b"   "]] and enc.encode_ordinary("abcd") == [262]
    one_split = {**spec, "model": {**spec["model"], "merges": [m for m in spec["model"]["merges"] if m != "ĠĠ Ġ"]}}
    assert unlike_tiktoken(one_split) == [" " * 7, " " * 11]
    whole_last = {**spec, "model": {**spec["model"], "ignore_merges": False}}
    assert unlike_tiktoken(whole_last) == ["abcd"]
