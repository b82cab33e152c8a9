"""TokenLoader on shards written by hand in llm.c's format.

Token i of the split's stream is the id i (the streams stay below the vocab size), so a batch says
exactly which stream positions it read: coverage and overlap are plain set arithmetic.

Chat data and SFT: `prepare --chat`, the loader's targets on packed conversations, training on the assistant's
tokens only, `eval loss` on conversations, `gptscratch chat`, and the effect: after SFT, greedy replies follow a
rule the model could not have guessed, which the same model before SFT does not.

References are independent of the code under test: token streams are read back with numpy at llm.c's offsets,
which tokens the assistant wrote comes from a state machine written here, and losses from plain cross-entropy.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from gptscratch.data.loader import RowPermutation, TokenLoader
from gptscratch.data.prepare import prepare
from gptscratch.errors import UserError
from gptscratch.tokenizer import EOT_TOKEN
from tests.helpers import hand_mask, read_stream, varied_conversations, write_jsonl, write_llmc_shard

SIZES = [1000, 37, 0, 2011, 500, 1]  # windows straddle shards; one shard is shorter than a window


def numbered_shards(root: Path, sizes: list[int], split: str = "train", first: int = 0) -> np.ndarray:
    """Shards whose concatenation is first, first+1, ...; returns that stream."""
    root.mkdir(parents=True, exist_ok=True)
    stream = np.arange(first, first + sum(sizes))
    start = 0
    for i, n in enumerate(sizes):
        write_llmc_shard(root / f"fineweb_{split}_{i + 1:06d}.bin", stream[start:start + n])
        start += n
    return stream


def positions(x: torch.Tensor) -> list[int]:
    return x.flatten().tolist()


def rows_of(x: torch.Tensor, T: int) -> list[int]:
    """The row index of each batch row (row k starts at stream position k*T; ids are positions)."""
    starts = x[:, 0].tolist()
    assert all(s % T == 0 for s in starts)
    return [s // T for s in starts]


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_ranks_cover_the_epoch_disjointly(tmp_path, world_size):
    stream = numbered_shards(tmp_path, SIZES)
    B, T = 4, 16
    window = B * T
    n = (len(stream) - 1) // window
    seen: list[int] = []
    for rank in range(world_size):
        loader = TokenLoader(tmp_path, "train", batch_size=B, seq_len=T, rank=rank, world_size=world_size)
        assert loader.windows_per_epoch == n and loader.num_tokens == len(stream)
        for _ in range(len(range(rank, n, world_size))):  # this rank's share of epoch 0
            x, y = loader.next_batch()
            assert x.dtype == torch.int64 and x.shape == (B, T) and y.shape == (B, T)
            assert torch.equal(y, x + 1)  # y is x shifted by one (ids are positions here)
            seen += positions(x)
    assert len(seen) == len(set(seen))  # no overlap between ranks
    assert sorted(seen) == list(range(n * window))  # everything but the sub-window tail
    assert len(stream) - n * window <= window  # the tail is less than one window (+1 for the last y)


def test_next_epoch_reshuffles_shard_order_the_same_on_every_rank(tmp_path):
    stream = numbered_shards(tmp_path, [300] * 8)
    B, T = 2, 25
    n = (len(stream) - 1) // (B * T)
    loaders = [TokenLoader(tmp_path, "train", B, T, rank=r, world_size=2, seed=5, shuffle="shards") for r in range(2)]
    epochs: list[list[int]] = [[], [], []]
    for step in range((3 * n + 1) // 2):
        for loader in loaders:
            g = step * 2 + loader.rank  # the global window index, dealt round-robin
            assert loader.epoch == g // n
            x, _ = loader.next_batch()
            if g < 3 * n:
                epochs[g // n] += positions(x)
    for tokens in epochs:
        assert len(tokens) == len(set(tokens)) == n * B * T  # each epoch: disjoint windows
    first_shards = [epoch[0] // 300 for epoch in epochs]
    assert len(set(first_shards)) > 1, "shard order should change between epochs"
    unshuffled = TokenLoader(tmp_path, "train", B, T)
    assert positions(unshuffled.next_batch()[0])[0] == 0


@pytest.mark.parametrize("shuffle", ["none", "shards", "rows"])
def test_state_dict_resumes_exactly(tmp_path, shuffle):
    numbered_shards(tmp_path, [700, 555, 910])
    B, T = 3, 20

    def make(rank=1):
        return TokenLoader(tmp_path, "train", B, T, rank=rank, world_size=2, seed=11, shuffle=shuffle)

    reference = make()
    batches = [reference.next_batch() for _ in range(60)]  # several epochs
    for cut in (0, 7, 18, 41):
        first = make()
        for _ in range(cut):
            first.next_batch()
        state = json.loads(json.dumps(first.state_dict()))  # as saved in a checkpoint
        resumed = make(rank=1)
        resumed.load_state_dict(state)
        for x_ref, y_ref in batches[cut:cut + 12]:
            x, y = resumed.next_batch()
            assert torch.equal(x, x_ref) and torch.equal(y, y_ref)
    loader = make()
    loader.next_batch()
    loader.reset()
    assert torch.equal(loader.next_batch()[0], batches[0][0])
    with pytest.raises(UserError, match="batch_size"):
        TokenLoader(tmp_path, "train", B + 1, T).load_state_dict(state)


def test_hand_written_llmc_dir_without_manifest(tmp_path):
    rng = np.random.default_rng(0)
    val = rng.integers(0, 50257, size=5000)
    train = rng.integers(0, 50257, size=9000)
    write_llmc_shard(tmp_path / "fineweb_val_000000.bin", val)
    write_llmc_shard(tmp_path / "fineweb_train_000001.bin", train[:4000])
    write_llmc_shard(tmp_path / "fineweb_train_000002.bin", train[4000:])
    (tmp_path / "notes.txt").write_text("ignored")
    loader = TokenLoader(tmp_path, "val", batch_size=2, seq_len=64)
    assert loader.num_tokens == 5000
    x, y = loader.next_batch()
    assert x.tolist() == val[:128].reshape(2, 64).tolist() and y.tolist() == val[1:129].reshape(2, 64).tolist()
    train_loader = TokenLoader(tmp_path, "train", batch_size=1, seq_len=3000)
    got = np.concatenate([train_loader.next_batch()[0].numpy().ravel() for _ in range(2)])
    assert np.array_equal(got, train[:6000])  # the second window spans both shards


def test_loader_on_prepared_dir_and_flat_memory(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n\n".join(f"document {i} " + "words " * (i % 50) for i in range(400)))
    out = tmp_path / "out"
    manifest = prepare(str(corpus), out, split_docs_on="\n\n", shard_tokens=1000, val_tokens=1500, workers=1,
                       progress=False)
    loader = TokenLoader(out, "train", batch_size=2, seq_len=100)
    assert loader.num_tokens == manifest["splits"]["train"]["tokens"]
    assert TokenLoader(out, "val", 1, 100).num_tokens == 1500
    for _ in range(2 * loader.windows_per_epoch):
        loader.next_batch()
        assert len(loader._open) <= 2  # never more than two shards mapped at a time


def test_bad_shards_and_short_splits(tmp_path):
    def single(name: str, tokens, **header) -> Path:
        d = tmp_path / name
        d.mkdir()
        write_llmc_shard(d / "x_train_000000.bin", tokens, **header)
        return d

    ok = np.arange(100)
    cases = [
        (single("magic", ok, magic=1234), "bad magic 1234"),
        (single("version", ok, version=2), "version 2"),
        (single("count", ok, count=99), "header says 99 tokens"),
        (single("short", ok), "fewer than one batch"),
        (tmp_path / "nowhere", "no such data directory"),
    ]
    for directory, message in cases:
        with pytest.raises(UserError, match=message) as info:
            TokenLoader(directory, "train", batch_size=10, seq_len=10)
        assert "\n" not in str(info.value)
    with pytest.raises(UserError, match="no val shards"):
        TokenLoader(single("noval", ok), "val", 1, 2)
    loader = TokenLoader(single("vocab", np.full(50, 50257 % 65536)), "train", 1, 4)
    with pytest.raises(UserError, match="token id 50257 is not below"):
        loader.next_batch()  # the id check runs when the shard is first opened


@pytest.mark.parametrize("n", [1, 2, 3, 5, 16, 17, 100, 257, 1000, 4097])
def test_row_permutation_is_a_seeded_bijection(n):
    perm = RowPermutation(n, seed=3, epoch=0)
    assert sorted(perm(np.arange(n)).tolist()) == list(range(n))
    if n >= 16:  # a different epoch or seed gives another order; the same ones give the same
        assert perm(np.arange(n)).tolist() != RowPermutation(n, seed=3, epoch=1)(np.arange(n)).tolist()
        assert perm(np.arange(n)).tolist() != RowPermutation(n, seed=4, epoch=0)(np.arange(n)).tolist()
        assert perm(np.arange(n)).tolist() == RowPermutation(n, seed=3, epoch=0)(np.arange(n)).tolist()


def test_row_permutation_of_a_huge_split_needs_no_table():
    n = 10**10  # 10^13 tokens of rows: no materialised permutation could hold this
    perm = RowPermutation(n, seed=0, epoch=0)
    got = perm(np.arange(10**6, 10**6 + 64))
    assert len(set(got.tolist())) == 64 and got.min() >= 0 and got.max() < n
    assert got.max() > n // 2  # spread over the whole split, not near the indices asked for


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_rows_cover_each_epoch_once_and_ranks_are_disjoint(tmp_path, world_size):
    stream = numbered_shards(tmp_path, SIZES)
    B, T = 4, 16
    n_rows = (len(stream) - 1) // T
    loaders = [TokenLoader(tmp_path, "train", B, T, rank=r, world_size=world_size, seed=7, shuffle="rows")
               for r in range(world_size)]
    assert loaders[0].rows_per_epoch == n_rows
    drawn: list[int] = []
    steps = -(-2 * n_rows // (B * world_size))  # enough steps for two whole epochs
    for _ in range(steps):
        in_step = []
        for loader in loaders:
            x, y = loader.next_batch()
            assert x.shape == y.shape == (B, T) and torch.equal(y, x + 1)  # rows are contiguous text
            assert torch.equal(x, x[:, :1] + torch.arange(T))
            in_step += rows_of(x, T)
        assert len(in_step) == len(set(in_step)) or len(drawn) + len(in_step) > n_rows  # disjoint (but at a seam)
        drawn += in_step
    for epoch in range(2):
        assert sorted(drawn[epoch * n_rows:(epoch + 1) * n_rows]) == list(range(n_rows))
    assert drawn[:n_rows] != drawn[n_rows:2 * n_rows]  # each epoch its own order
    assert drawn[:n_rows] != sorted(drawn[:n_rows])  # and not the stream's order


def test_rows_ranks_read_what_one_process_reads_with_accumulation(tmp_path):
    numbered_shards(tmp_path, [900, 1300])
    B, T = 3, 10
    one = TokenLoader(tmp_path, "train", B, T, seed=2, shuffle="rows")
    ranks = [TokenLoader(tmp_path, "train", B, T, rank=r, world_size=2, seed=2, shuffle="rows") for r in range(2)]
    for _ in range(50):
        for loader in ranks:  # one optimizer step: rank r's micro-batch = the single process's r-th
            assert torch.equal(loader.next_batch()[0], one.next_batch()[0])


def test_shards_mode_is_the_shard_shuffled_window_stream(tmp_path):
    sizes = [300, 410, 250, 520, 333]
    stream = numbered_shards(tmp_path, sizes)
    bounds = np.cumsum([0] + sizes)
    B, T, seed = 2, 30, 9
    n = (len(stream) - 1) // (B * T)
    loader = TokenLoader(tmp_path, "train", B, T, seed=seed, shuffle="shards")
    for epoch in range(3):
        # the stream of llm.c-style readers: whole shards in a seeded order, cut into B*T windows
        order = np.random.default_rng([seed, epoch]).permutation(len(sizes))
        epoch_stream = np.concatenate([stream[bounds[i]:bounds[i + 1]] for i in order])
        for w in range(n):
            x, y = loader.next_batch()
            assert x.flatten().tolist() == epoch_stream[w * B * T:(w + 1) * B * T].tolist()
            assert y.flatten().tolist() == epoch_stream[w * B * T + 1:(w + 1) * B * T + 1].tolist()


def test_state_saved_before_row_shuffling_resumes(tmp_path):
    numbered_shards(tmp_path, [700, 555])
    old = {"step": 5, "world_size": 1, "batch_size": 2, "seq_len": 20, "num_tokens": 1255, "shuffle": True,
           "seed": 3, "split": "train"}  # a checkpoint's loader state from before --shuffle had modes
    loader = TokenLoader(tmp_path, "train", 2, 20, seed=3, shuffle="shards")
    loader.load_state_dict(old)
    reference = TokenLoader(tmp_path, "train", 2, 20, seed=3, shuffle="shards")
    for _ in range(5):
        reference.next_batch()
    assert torch.equal(loader.next_batch()[0], reference.next_batch()[0])
    with pytest.raises(UserError, match="shuffle"):
        TokenLoader(tmp_path, "train", 2, 20, seed=3, shuffle="rows").load_state_dict(old)
    with pytest.raises(UserError, match="--shuffle 'random'"):
        TokenLoader(tmp_path, "train", 2, 20, shuffle="random")


def test_rows_keep_memory_flat(tmp_path):
    numbered_shards(tmp_path, [200] * 40)
    loader = TokenLoader(tmp_path, "train", 8, 10, seed=1, shuffle="rows")
    for _ in range(3 * loader.rows_per_epoch // 8):  # three epochs
        loader.next_batch()
    assert len(loader._blocks) <= 4  # a few blocks of the row order, never the whole permutation
    assert len(loader._open) <= 40


def test_a_shard_changed_since_prepare_is_refused(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n\n".join(f"document {i} " + "words " * (i % 50) for i in range(300)))
    out = tmp_path / "out"
    prepare(str(corpus), out, split_docs_on="\n\n", val_tokens=500, workers=1, progress=False)
    loader = TokenLoader(out, "train", batch_size=2, seq_len=16, shuffle="rows")
    loader.next_batch()  # intact: the hash matches
    shard = next(out.glob("*_train_*.bin"))
    data = bytearray(shard.read_bytes())
    data[-2:] = (int.from_bytes(data[-2:], "little") ^ 1).to_bytes(2, "little")  # one token id changed
    shard.write_bytes(bytes(data))
    with pytest.raises(UserError, match="sha256 differs from the manifest"):
        TokenLoader(out, "train", batch_size=2, seq_len=16).next_batch()


@pytest.mark.parametrize("name", ["../elsewhere_train_000001.bin", "/tmp/x_train_000001.bin", "sub/x_train_000001.bin"])
def test_manifest_paths_outside_the_data_directory_are_refused(tmp_path, name):
    d = tmp_path / "data"
    numbered_shards(d, [500])
    manifest = {"shards": [{"file": name, "split": "train", "tokens": 500}]}
    (d / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="not a plain file name"):
        TokenLoader(d, "train", 2, 10)


@pytest.fixture
def varied(tmp_path):
    prepare(str(write_jsonl(tmp_path / "c.jsonl", varied_conversations(60))), tmp_path / "d", chat=True,
            shard_tokens=700, val_tokens=300, workers=1, progress=False)
    return tmp_path / "d"


def test_the_loader_keeps_exactly_the_assistants_targets_of_packed_rows(varied):
    stream = read_stream(varied, "train")
    mask = hand_mask(stream)  # the split may start inside a turn: its tokens before the first mark count as no one's
    B, T = 4, 24
    loader = TokenLoader(varied, "train", B, T, seed=5, shuffle="rows")
    order = RowPermutation(loader.rows_per_epoch, 5, 0)(np.arange(loader.rows_per_epoch))
    packed = 0
    for b in range(loader.rows_per_epoch // B):  # one epoch
        x, y = loader.next_batch()
        for r, row in enumerate(order[b * B:(b + 1) * B]):
            s = row * T
            assert (x[r].numpy() == stream[s:s + T]).all()
            assert (y[r].numpy() == np.where(mask[s + 1:s + T + 1], stream[s + 1:s + T + 1], -1)).all()
            packed += int((x[r] == EOT_TOKEN).sum()) >= 2
    assert packed > 0  # rows hold several conversations
    # `none` reads the same stream in order, batch after batch
    loader = TokenLoader(varied, "train", B, T, shuffle="none")
    for b in range(3):
        x, y = loader.next_batch()
        s = b * B * T
        assert (x.flatten().numpy() == stream[s:s + B * T]).all()
        assert (y.flatten().numpy() == np.where(mask[s + 1:s + B * T + 1], stream[s + 1:s + B * T + 1], -1)).all()
    with pytest.raises(Exception, match="chat data is read with --shuffle rows"):
        TokenLoader(varied, "train", B, T, shuffle="shards")
