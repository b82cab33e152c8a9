"""CORE, the DCLM paper's in-context benchmark, scored as nanochat scores it: every example gets nanochat's verdict.

CORE (arXiv 2406.11794) is the mean, over 22 tasks, of each task's accuracy centred on its random baseline:
(acc - 0.01 * baseline) / (1 - 0.01 * baseline), the baseline in percent from the bundle's
`eval_meta_data.csv`. nanochat measures GPT-2 (1.5B) at 0.2565 with it. The protocol, as nanochat's
`core_eval.py` and `scripts/base_eval.py` define it:

- the data is nanochat's `eval_bundle.zip`: `core.yaml` lists the tasks (label, dataset_uri, num_fewshot,
  icl_task_type, continuation_delimiter), `eval_data/` holds a jsonl file per task;
- a task's rows are shuffled with random.Random(1337), then `max_per_task` keeps the first ones;
- example i's demonstrations are random.Random(1234 + i).sample of the other kept rows, num_fewshot of them;
- the prompt is each demonstration followed by a blank line, then the item. multiple_choice: one prompt
  per choice, query + delimiter + choice; schema: one per context option, option + delimiter +
  continuation; language_modeling: the stripped context + delimiter, once without the continuation
  (stripped again, so a trailing space joins the continuation's first token) and once with it;
- tokens: GPT-2's BPE of the whole prompt after <|endoftext|> (the BOS); a sequence longer than the
  model's context keeps its last block_size tokens;
- the scored tokens: multiple_choice, those after the choices' common token prefix (so a first word the
  choices share is not scored); schema, the options' common token suffix; language_modeling, those
  after the prompt without the continuation;
- the verdict: multiple_choice and schema pick the option with the lowest mean cross-entropy over its
  scored tokens (the first of equals), right if it is the gold one; language_modeling is right when the
  model's argmax is every scored token.

Decisions where nanochat is silent or stops with an error:
- An option none of whose scored tokens is predicted inside the cropped window (a continuation as long as
  the context) has no loss, NaN, as nanochat gives the one that exactly fills it (nanochat stops with
  an assertion when it is longer); NaN never wins unless it is the first option, as with nanochat's
  `min`. A language_modeling example like that is wrong.
- A row of the wrong shape, or a task asking for more demonstrations than the kept rows hold, is a
  one-line error naming the file (and line) before the model loads; a language_modeling item whose
  prompt without the continuation does not tokenize to a prefix of the prompt with it, one naming its
  line when it is reached (nanochat stops on each with an exception, mid-run).
- Blank lines in a task file are skipped. Only the logits of the tokenizer's 50,257 ids enter the softmax
  and the argmax (nanochat slices its padded head the same way), so a model with more rows (nanoGPT's
  50,304) is scored on the same ids.

Speed, the verdicts unchanged: a multiple_choice example's options share a long token prefix (the
demonstrations and the question), run once, its keys and values kept for every option to continue
from, as a KV cache does; several examples share each forward pass, sorted by length and right-padded;
the LM head runs only where a token is scored. nanochat runs every option's whole sequence, one example
per forward pass, and the head everywhere. The sums are the same but not added in the same order, so two
options whose mean losses differ by float32 rounding alone (or a greedy token tied with another) could be
ordered differently than nanochat orders them (`python -m benchmarks core` counts the agreement).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import http.client
import json
import random
import sys
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from gptscratch.errors import UserError
from gptscratch.io import atomic_dir, writing
from gptscratch.paths import cache_dir
from gptscratch.precision import DTYPE_HELP, DTYPES, autocast, autocast_dtype
from gptscratch.tokenizer import Tokenizer, gpt2

EVAL_BUNDLE_URL = "https://karpathy-public.s3.us-west-2.amazonaws.com/eval_bundle.zip"
EVAL_BUNDLE_SHA256 = "90a7c19e28ee7a52b4f6e1f87658deb9fde7f63deba2379045bdb1fe9ea5d200"
TASK_TYPES = ("multiple_choice", "schema", "language_modeling")
# the keys a row of each type must hold, and what they hold
ROW_SHAPES = {
    "multiple_choice": "query (text), choices (a list of texts), gold (the right choice's index)",
    "schema": "context_options (a list of texts), continuation (text), gold (the right option's index)",
    "language_modeling": "context (text), continuation (text)",
}
SHUFFLE_SEED = 1337  # nanochat's, for the rows kept by max_per_task
FEWSHOT_SEED = 1234  # nanochat's, plus the example's index
ENCODE_CHUNK = 512  # examples tokenized together, then sorted by length into batches


@dataclass(frozen=True)
class Task:
    """One line of core.yaml, with its random baseline from eval_meta_data.csv."""

    label: str
    dataset_uri: str
    task_type: str
    num_fewshot: int
    delimiter: str
    baseline: float  # accuracy by chance, in percent


@dataclass
class TaskData:
    """A task and the rows it is scored on, in nanochat's order: shuffled, then cut to max_per_task."""

    task: Task
    rows: list[dict]
    where: list[str] = field(default_factory=list)  # each row's file:line, for error messages

    def gold(self, i: int) -> int:
        """The right verdict of example i (see `predictions`)."""
        return 1 if self.task.task_type == "language_modeling" else self.rows[i]["gold"]


@dataclass
class Encoded:
    """One example as the model reads it: a token row per option (one for language_modeling)."""

    rows: list[list[int]]
    spans: list[range]  # per row, the positions whose prediction is scored (position q predicts rows[q][q + 1])
    shared: int = 0  # leading tokens every row has in common and no span reads: forwarded once


# --- the bundle ----------------------------------------------------------------------------------------


def bundle_path(bundle: str | Path | None = None) -> Path:
    """`--bundle DIR` (an unpacked eval_bundle, or the folder holding one), else the cached download,
    fetched first if it is not there yet."""
    if bundle is not None:
        root = Path(bundle)
        if not (root / "core.yaml").is_file() and (root / "eval_bundle" / "core.yaml").is_file():
            root = root / "eval_bundle"
        if not root.is_dir():
            raise UserError(f"--bundle {bundle}: no such directory; expected an unpacked eval_bundle "
                            "(core.yaml, eval_meta_data.csv, eval_data/)")
        return root
    root = cache_dir() / "core" / "eval_bundle"
    if not (root / "core.yaml").is_file():
        download_bundle(root.parent)
    return root


def download_bundle(dest: Path) -> Path:
    """Fetch eval_bundle.zip, check its sha256 and unpack it; `dest` appears only once all of it succeeded."""
    with writing(dest.parent):
        dest.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(dest) as tmp:
        archive = tmp / "eval_bundle.zip"
        digest = _fetch(EVAL_BUNDLE_URL, archive)
        if digest != EVAL_BUNDLE_SHA256:
            raise UserError(f"{EVAL_BUNDLE_URL}: sha256 {digest}, expected {EVAL_BUNDLE_SHA256}: a damaged download "
                            "or a changed bundle; try again, or pass --bundle DIR to an unpacked copy you trust")
        try:
            with zipfile.ZipFile(archive) as z:
                z.extractall(tmp)  # extractall keeps every member inside tmp (no absolute or .. paths)
        except zipfile.BadZipFile as e:
            raise UserError(f"{EVAL_BUNDLE_URL}: not a zip archive ({e})") from None
        archive.unlink()
        if not (tmp / "eval_bundle" / "core.yaml").is_file():
            raise UserError(f"{EVAL_BUNDLE_URL}: the archive has no eval_bundle/core.yaml")
    return dest / "eval_bundle"


def _fetch(url: str, path: Path) -> str:
    """Download `url` to `path` with a progress bar; its sha256, computed on the way."""
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=60) as resp, open(path, "wb") as out:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=Path(url).name, file=sys.stderr) as bar:
                while chunk := resp.read(1 << 20):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError) as e:
        reason = getattr(e, "reason", e)
        raise UserError(f"cannot download {url} ({reason}); pass --bundle DIR to an unpacked copy of it") from None
    return digest.hexdigest()


def load_tasks(root: Path, names: list[str] | None = None) -> list[Task]:
    """The tasks of `root/core.yaml` (those named, in the bundle's order), with their random baselines."""
    config = _read_yaml(root / "core.yaml")
    entries = config.get("icl_tasks") if isinstance(config, dict) else None
    if not isinstance(entries, list) or not entries:
        raise UserError(f"{root / 'core.yaml'}: expected a mapping with a non-empty list icl_tasks")
    tasks = [_task(entry, root / "core.yaml", n) for n, entry in enumerate(entries, start=1)]
    if names is not None:
        known = [t.label for t in tasks]
        unknown = [name for name in names if name not in known]
        if unknown:
            raise UserError(f"--tasks: unknown task {unknown[0]!r}; {root / 'core.yaml'} has {', '.join(known)}")
        tasks = [t for t in tasks if t.label in names]
    baselines = _read_baselines(root / "eval_meta_data.csv")
    for t in tasks:
        if t.label not in baselines:
            raise UserError(f"{root / 'eval_meta_data.csv'}: no 'Random baseline' for task {t.label!r}")
    return [Task(**{**t.__dict__, "baseline": baselines[t.label]}) for t in tasks]


def _read_yaml(path: Path):
    try:
        import yaml
    except ImportError:
        raise UserError("reading core.yaml needs PyYAML: pip install pyyaml") from None
    try:
        with open(path, encoding="utf-8") as f:
            return yaml.safe_load(f)
    except FileNotFoundError:
        raise UserError(f"{path}: no such file; expected the bundle's task list (core.yaml)") from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise UserError(f"{path}{line}: not valid YAML ({getattr(e, 'problem', None) or e})") from None


def _task(entry, path: Path, n: int) -> Task:
    where = f"{path}: icl_tasks entry {n}"
    if not isinstance(entry, dict):
        raise UserError(f"{where}: expected a mapping with label, dataset_uri, num_fewshot, icl_task_type")
    for key in ("label", "dataset_uri", "num_fewshot", "icl_task_type"):
        if key not in entry:
            raise UserError(f"{where}: missing {key!r}")
    label, uri, kind = entry["label"], entry["dataset_uri"], entry["icl_task_type"]
    delimiter = entry.get("continuation_delimiter", " ")
    shots = entry["num_fewshot"]
    shots = shots[0] if isinstance(shots, list) and shots else shots  # a list of settings: nanochat takes the first
    if not isinstance(label, str) or not isinstance(uri, str) or not isinstance(delimiter, str):
        raise UserError(f"{where}: label, dataset_uri and continuation_delimiter must be text")
    if kind not in TASK_TYPES:
        raise UserError(f"{where}: icl_task_type {kind!r}; expected one of {', '.join(TASK_TYPES)}")
    if isinstance(shots, bool) or not isinstance(shots, int) or shots < 0:
        raise UserError(f"{where}: num_fewshot {entry['num_fewshot']!r}; expected a count (or a list of them)")
    return Task(label, uri, kind, shots, delimiter, baseline=0.0)


def _read_baselines(path: Path) -> dict[str, float]:
    try:
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            if not {"Eval Task", "Random baseline"} <= set(reader.fieldnames or ()):
                raise UserError(f"{path}: expected the columns 'Eval Task' and 'Random baseline'")
            baselines = {}
            for row in reader:
                where = f"{path}:{reader.line_num}"
                try:
                    value = float(row["Random baseline"])
                except (TypeError, ValueError):
                    raise UserError(f"{where}: 'Random baseline' {row['Random baseline']!r} is not a number") from None
                if not 0 <= value < 100:
                    raise UserError(f"{where}: 'Random baseline' {value} must be a percentage in [0, 100)")
                baselines[row["Eval Task"]] = value
            return baselines
    except FileNotFoundError:
        raise UserError(f"{path}: no such file; expected the bundle's random baselines (eval_meta_data.csv)") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text ({e.reason})") from None


def load_rows(root: Path, task: Task) -> tuple[list[dict], list[str]]:
    """A task's rows in file order, each checked for its type's shape, and each one's file:line."""
    path = root / "eval_data" / task.dataset_uri
    rows, where = [], []
    try:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                if line.strip():
                    rows.append(_row(line, task.task_type, f"{path}:{lineno}"))
                    where.append(f"{path}:{lineno}")
    except FileNotFoundError:
        raise UserError(f"{path}: no such file; core.yaml's task {task.label!r} reads it") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text ({e.reason})") from None
    if not rows:
        raise UserError(f"{path}: no rows; expected one JSON object a line with {ROW_SHAPES[task.task_type]}")
    return rows, where


def _row(line: str, kind: str, where: str) -> dict:
    try:
        d = json.loads(line)
    except json.JSONDecodeError as e:
        raise UserError(f"{where}: not valid JSON ({e.msg}); expected a {kind} row: {ROW_SHAPES[kind]}") from None
    if not isinstance(d, dict):
        raise UserError(f"{where}: expected a JSON object with {ROW_SHAPES[kind]}")

    def texts(key: str) -> bool:
        return isinstance(d.get(key), list) and len(d[key]) > 0 and all(isinstance(x, str) for x in d[key])

    options = {"multiple_choice": "choices", "schema": "context_options"}.get(kind)
    good = {
        "multiple_choice": isinstance(d.get("query"), str) and texts("choices"),
        "schema": texts("context_options") and isinstance(d.get("continuation"), str),
        "language_modeling": isinstance(d.get("context"), str) and isinstance(d.get("continuation"), str),
    }[kind]
    if options and good:
        gold = d.get("gold")  # bool is an int to Python, not an index to anyone
        good = isinstance(gold, int) and not isinstance(gold, bool) and 0 <= gold < len(d[options])
    if not good:
        raise UserError(f"{where}: not a {kind} row; expected {ROW_SHAPES[kind]}")
    return d


def load_core(bundle: str | Path | None = None, tasks: list[str] | None = None,
              max_per_task: int | None = None) -> list[TaskData]:
    """Every task's rows, checked and in nanochat's order, ready for `evaluate_core` (read once, score often).

    `bundle`: an unpacked eval_bundle (None: the cached download, fetched if missing). `tasks`: labels to
    keep (None: all). `max_per_task`: keep the first N rows after the shuffle (None or < 1: all).
    """
    root = bundle_path(bundle)
    out = []
    for task in load_tasks(root, tasks):
        rows, where = load_rows(root, task)
        order = list(range(len(rows)))
        random.Random(SHUFFLE_SEED).shuffle(order)  # the permutation nanochat's shuffle of the rows makes
        if max_per_task is not None and max_per_task > 0:
            order = order[:max_per_task]
        if task.num_fewshot >= len(order) and task.num_fewshot > 0:
            raise UserError(f"task {task.label}: {task.num_fewshot} demonstrations per example need at least "
                            f"{task.num_fewshot + 1} rows, {len(order)} kept (--max-per-task)")
        out.append(TaskData(task, [rows[i] for i in order], [where[i] for i in order]))
    return out


# --- prompts and tokens ----------------------------------------------------------------------------------


def prompts(data: TaskData, i: int) -> list[str]:
    """The texts example i is scored on: one per option; for language_modeling, (without, with) the continuation."""
    task, item, d = data.task, data.rows[i], data.task.delimiter
    shots = []
    if task.num_fewshot:
        # sample() draws positions, so sampling range(n - 1) and skipping i picks what sampling the list of
        # the other rows picks, without building that list for every example
        picks = random.Random(FEWSHOT_SEED + i).sample(range(len(data.rows) - 1), task.num_fewshot)
        shots = [data.rows[j + (j >= i)] for j in picks]
    if task.task_type == "multiple_choice":
        demos = "".join(f"{s['query']}{d}{s['choices'][s['gold']]}\n\n" for s in shots)
        return [f"{demos}{item['query']}{d}{choice}" for choice in item["choices"]]
    if task.task_type == "schema":
        demos = "".join(f"{s['context_options'][s['gold']]}{d}{s['continuation']}\n\n" for s in shots)
        return [f"{demos}{option}{d}{item['continuation']}" for option in item["context_options"]]
    demos = "".join(f"{s['context'].strip()}{d}{s['continuation']}\n\n" for s in shots)
    head = f"{demos}{item['context'].strip()}{d}"
    return [head.strip(), head + item["continuation"]]


def common_prefix(seqs: list[list[int]]) -> int:
    """How many leading tokens every sequence shares."""
    n = min(len(s) for s in seqs)
    first = np.asarray(seqs[0][:n])
    for s in seqs[1:]:
        differ = np.flatnonzero(np.asarray(s[:n]) != first[:n])
        if differ.size:
            n = int(differ[0])
    return n


def encode_examples(data: TaskData, indices: list[int], block_size: int,
                    tokenizer: Tokenizer | None = None) -> list[Encoded]:
    """Examples `indices` of the task as token rows of the model's `tokenizer` (GPT-2's by default) with their
    scored spans, cropped to `block_size`."""
    tok = tokenizer or gpt2()
    texts = [prompts(data, i) for i in indices]
    flat = tok.enc.encode_ordinary_batch([t for group in texts for t in group], num_threads=8)
    out, k = [], 0
    for i, group in zip(indices, texts, strict=True):
        tokens = [[tok.eot, *t] for t in flat[k : k + len(group)]]  # <|endoftext|> as BOS, as nanochat's BOS
        k += len(group)
        out.append(_encode(data, i, tokens, block_size))
    return out


def _encode(data: TaskData, i: int, tokens: list[list[int]], block_size: int) -> Encoded:
    kind = data.task.task_type
    ends = [len(t) for t in tokens]
    if kind == "multiple_choice":  # the choices' first tokens may hold the delimiter's space, or a shared word
        starts = [common_prefix(tokens)] * len(tokens)
    elif kind == "schema":  # the options end in the same continuation
        suffix = common_prefix([t[::-1] for t in tokens])
        starts = [e - suffix for e in ends]
    else:
        without, with_ = tokens
        if not (len(without) < len(with_) and with_[: len(without)] == without):
            raise UserError(f"{data.where[i]}: the prompt without the continuation does not tokenize to a prefix "
                            "of the prompt with it; expected a context and a non-empty continuation that "
                            "tokenize apart")
        tokens, starts, ends = [with_], [len(without)], [len(with_)]
    rows, spans = [], []
    for row, s, e in zip(tokens, starts, ends, strict=True):
        crop = max(0, len(row) - block_size)  # keep the last block_size tokens
        s, e = s - crop, e - crop
        rows.append(row[crop:])
        spans.append(range(s - 1, e - 1) if s >= 1 else range(0))
    shared = 0
    if len(rows) > 1:
        first_read = min((s.start for s in spans if len(s)), default=block_size)
        # at least one token of each row is left to run after the shared part
        shared = max(0, min(common_prefix(rows) - 1, first_read))
    return Encoded(rows, spans, shared)


# --- scoring --------------------------------------------------------------------------------------------


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The GPT behind a DDP wrapper (`.module`) or torch.compile (`._orig_mod`)."""
    m = getattr(model, "module", model)
    return getattr(m, "_orig_mod", m)


def check_vocab(model: torch.nn.Module, tokenizer: Tokenizer | None = None) -> None:
    """CORE's text becomes the tokenizer's ids: a model whose table cannot hold them all cannot read it."""
    vocab, tok = _unwrap(model).config.vocab_size, tokenizer or gpt2()
    if vocab < tok.vocab_size:
        raise UserError(f"the model's vocabulary has {vocab:,} tokens; CORE is tokenized with {tok.describe()} "
                        f"({tok.vocab_size:,} tokens), which needs a model of at least as many")


class _PrefixRecorder:
    """Stands in for a KVCache while the shared prefixes run: the attention layers hand it each layer's
    keys and values (the cache's first-chunk path), which it keeps."""

    lengths = None  # one position for every row: the attention's plain causal path

    def __init__(self) -> None:
        self.pos = 0
        self.k: dict[int, torch.Tensor] = {}
        self.v: dict[int, torch.Tensor] = {}

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.k[layer], self.v[layer] = k, v
        return k, v


class _AfterPrefix:
    """Stands in for a per-row KVCache while the options' own tokens run: row r starts at position
    starts[r], right after its example's prefix (recorded by `_PrefixRecorder`), and attends to that prefix
    and to its own tokens before it. The attention layers read `lengths` for the rows' positions (rotary)
    and call `append_rows` for the keys, values and mask of each layer."""

    def __init__(self, prefix: _PrefixRecorder, example_of_row: torch.Tensor, starts: torch.Tensor, T: int):
        self.prefix, self.example_of_row, self.lengths = prefix, example_of_row, starts
        self.P = int(starts.max())
        device = starts.device
        seen = torch.arange(self.P, device=device)[None, :] < starts[:, None]  # (R, P): the row's own prefix
        causal = torch.ones(T, T, dtype=torch.bool, device=device).tril()
        self.mask = torch.cat([seen[:, None, :].expand(-1, T, -1), causal.expand(len(starts), -1, -1)], dim=2)[:, None]

    def append_rows(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, ...]:
        pk = self.prefix.k[layer][:, :, : self.P].index_select(0, self.example_of_row)
        pv = self.prefix.v[layer][:, :, : self.P].index_select(0, self.example_of_row)
        return torch.cat([pk, k], dim=2), torch.cat([pv, v], dim=2), self.mask


def _continue(model: torch.nn.Module, idx: torch.Tensor, cache: _AfterPrefix) -> torch.Tensor:
    """GPT.hidden_states for rows that continue, each at its own position, after their prefixes."""
    tf = model.transformer
    x = tf.wte(idx)
    if "wpe" in tf:  # with rope the positions enter inside attention, from cache.lengths
        x = x + tf.wpe(cache.lengths[:, None] + torch.arange(idx.size(1), device=idx.device))
    x = tf.drop(x)
    for block in tf.h:
        x = block(x, cache)
    return tf.ln_f(x)


def _logits(model: torch.nn.Module, h: torch.Tensor, vocab: int) -> torch.Tensor:
    """GPT.forward's head on some positions only: float32 logits of the tokenizer's `vocab` ids (a model's rows
    past them, nanoGPT's padding to 50,304, stay out of the softmax)."""
    logits = model.lm_head(h)
    cap = model.config.logit_softcap
    if cap:
        logits = cap * torch.tanh(logits / cap)
    return logits[..., :vocab].float()


def _pad(rows: list[list[int]], device: torch.device) -> torch.Tensor:
    """Right-padded (with id 0, in every vocabulary; nanochat pads with its BOS): causal attention never lets a
    real token see the padding, and no padding is scored."""
    out = torch.zeros((len(rows), max(len(r) for r in rows)), dtype=torch.long)
    for j, r in enumerate(rows):
        out[j, : len(r)] = torch.tensor(r, dtype=torch.long)
    return out.to(device)


def _option_means(model: torch.nn.Module, batch: list[Encoded], device: torch.device,
                  vocab: int) -> list[list[float]]:
    """Each option's mean cross-entropy over its scored tokens (NaN if none), for a batch of examples."""
    # identical options (same tokens, same span) are scored once, so that equals stay equal
    rows, spans, owner, slots = [], [], [], []
    for e, ex in enumerate(batch):
        seen: dict = {}
        slot = []
        for row, span in zip(ex.rows, ex.spans, strict=True):
            key = (tuple(row), span.start, span.stop)
            if key not in seen:
                seen[key] = len(rows)
                rows.append(row)
                spans.append(span)
                owner.append(e)
            slot.append(seen[key])
        slots.append(slot)
    starts = [batch[owner[r]].shared for r in range(len(rows))]
    prefix = None
    if max(starts) > 0:
        prefix = _PrefixRecorder()
        model.hidden_states(_pad([ex.rows[0][: max(ex.shared, 1)] for ex in batch], device), prefix)
    sums, counts = torch.zeros(len(rows)), torch.zeros(len(rows))
    for group in _groups(rows, starts, model.config.block_size):
        tails = [rows[r][starts[r]:] for r in group]
        idx = _pad(tails, device)
        if prefix is None or max(starts[r] for r in group) == 0:
            h = model.hidden_states(idx)
        else:
            cache = _AfterPrefix(prefix, torch.tensor([owner[r] for r in group], device=device),
                                 torch.tensor([starts[r] for r in group], device=device), idx.size(1))
            h = _continue(model, idx, cache)
        at, pos, target = [], [], []
        for j, r in enumerate(group):
            for q in spans[r]:
                at.append(j)
                pos.append(q - starts[r])
                target.append(rows[r][q + 1])
        if not at:
            continue
        at_t = torch.tensor(at, device=device)
        losses = F.cross_entropy(_logits(model, h[at_t, torch.tensor(pos, device=device)], vocab),
                                 torch.tensor(target, device=device), reduction="none")
        row_of = torch.tensor([group[j] for j in at])
        sums.index_add_(0, row_of, losses.cpu())
        counts.index_add_(0, row_of, torch.ones(len(at)))
    means = (sums / counts).tolist()  # 0/0: NaN, an option with nothing scored
    return [[means[u] for u in slot] for slot in slots]


def _groups(rows: list[list[int]], starts: list[int], block_size: int) -> list[list[int]]:
    """The rows in forward passes whose padded positions stay inside the context (the position table and
    rotary's angles end at block_size): by start, cut where the longest tail would overrun."""
    groups: list[list[int]] = []
    longest = 0
    for r in sorted(range(len(rows)), key=lambda r: starts[r]):  # a group's last start is its largest
        tail = len(rows[r]) - starts[r]
        if groups and starts[r] + max(longest, tail) <= block_size:
            groups[-1].append(r)
            longest = max(longest, tail)
        else:
            groups.append([r])
            longest = tail
    return groups


def _lm_verdicts(model: torch.nn.Module, batch: list[Encoded], device: torch.device, vocab: int) -> list[int]:
    """1 where the model's argmax is every scored token of the example, else 0."""
    rows = [ex.rows[0] for ex in batch]
    h = model.hidden_states(_pad(rows, device))
    at, pos, target = [], [], []
    for j, (row, ex) in enumerate(zip(rows, batch, strict=True)):
        for q in ex.spans[0]:
            at.append(j)
            pos.append(q)
            target.append(row[q + 1])
    wrong = torch.zeros(len(rows))
    if at:
        hit = _logits(model, h[torch.tensor(at, device=device), torch.tensor(pos, device=device)], vocab).argmax(-1)
        miss = (hit != torch.tensor(target, device=device)).float().cpu()
        wrong.index_add_(0, torch.tensor(at), miss)
    return [int(wrong[j] == 0 and len(ex.spans[0]) > 0) for j, ex in enumerate(batch)]


def predictions(model: torch.nn.Module, data: TaskData, indices: list[int], device: torch.device | str,
                batch_size: int = 16, amp: torch.dtype | None = None, progress: bool = False,
                tokenizer: Tokenizer | None = None) -> list[int]:
    """The verdict on each example of `indices`: the option picked (multiple_choice, schema), or 1 if every
    continuation token is the model's argmax and 0 if not (language_modeling). Right means `data.gold(i)`.

    `batch_size` examples go through each forward pass (a multiple_choice example's options all go with
    it), sorted by length. The model is put in eval mode for the call and its mode restored after.
    """
    if batch_size < 1:
        raise UserError(f"--batch-size {batch_size}: must be at least 1")
    check_vocab(model, tokenizer)
    raw, device = _unwrap(model), torch.device(device)
    vocab = (tokenizer or gpt2()).vocab_size
    lm = data.task.task_type == "language_modeling"
    out: list[int] = []
    was_training = raw.training
    raw.eval()
    try:
        with torch.no_grad(), tqdm(total=len(indices), desc=data.task.label, file=sys.stderr, leave=False,
                                   disable=not progress) as bar:
            for c in range(0, len(indices), ENCODE_CHUNK):
                encoded = encode_examples(data, indices[c : c + ENCODE_CHUNK], raw.config.block_size, tokenizer)
                # by the tokens a forward pass pays for: the shared prefix, then the longest row
                order = sorted(range(len(encoded)), key=lambda i: (encoded[i].shared,
                                                                   max(len(r) for r in encoded[i].rows)))
                got: list[int] = [0] * len(encoded)
                for b in range(0, len(order), batch_size):
                    ids = order[b : b + batch_size]
                    batch = [encoded[i] for i in ids]
                    with autocast(device, amp):
                        if lm:
                            verdicts = _lm_verdicts(raw, batch, device, vocab)
                        else:  # nanochat's pick: list.index(min(...)), NaN and ties included
                            verdicts = [m.index(min(m)) for m in _option_means(raw, batch, device, vocab)]
                    for i, v in zip(ids, verdicts, strict=True):
                        got[i] = v
                    bar.update(len(ids))
                out.extend(got)
    finally:
        raw.train(was_training)
    return out


def evaluate_task(model: torch.nn.Module, data: TaskData, device: torch.device | str, batch_size: int = 16,
                  rank: int = 0, world_size: int = 1, progress: bool = False,
                  amp: torch.dtype | None = None, tokenizer: Tokenizer | None = None) -> dict:
    """{accuracy, examples, seconds, correct}: `correct` holds every example's verdict, right or not.

    Rank r scores examples r, r + world_size, ...; with world_size > 1 (torch.distributed initialized) the
    verdicts are summed over ranks, so every rank returns the whole task's.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank={rank} must be in [0, world_size={world_size})")
    distributed = world_size > 1
    if distributed and not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        raise ValueError(f"world_size={world_size} needs torch.distributed initialized, to sum the verdicts")
    t0 = time.perf_counter()
    n = len(data.rows)
    mine = list(range(rank, n, world_size))
    correct = torch.zeros(n + 1)  # the last element counts the ranks that met bad input
    error = None
    try:
        got = predictions(model, data, mine, device, batch_size, amp, progress, tokenizer)
        if mine:
            correct[mine] = torch.tensor([float(v == data.gold(i)) for i, v in zip(mine, got, strict=True)])
    except UserError as e:
        if not distributed:
            raise
        error, correct[n] = e, 1.0  # raised below, once every rank knows, so that none waits for this one
    if distributed:
        correct = correct.to(device)
        torch.distributed.all_reduce(correct, op=torch.distributed.ReduceOp.SUM)
        correct = correct.cpu()
        if error is not None:
            raise error
        if correct[n] > 0:
            raise UserError(f"task {data.task.label}: another process stopped on bad input (its message is above)")
    correct = correct[:n]
    return {"accuracy": correct.mean().item(), "examples": n, "seconds": time.perf_counter() - t0,
            "correct": [bool(c) for c in correct.tolist()]}


def centered(accuracy: float, baseline: float) -> float:
    """Accuracy rescaled so that chance is 0 and perfect is 1 (`baseline` in percent)."""
    return (accuracy - 0.01 * baseline) / (1.0 - 0.01 * baseline)


def evaluate_core(model: torch.nn.Module, tasks: list[TaskData], device: torch.device | str, batch_size: int = 16,
                  rank: int = 0, world_size: int = 1, progress: bool = False, amp: torch.dtype | None = None,
                  log: Callable[[str], None] | None = None, tokenizer: Tokenizer | None = None) -> dict:
    """CORE over `tasks` (from `load_core`): nanochat's keys `results`, `centered_results` and `core_metric`
    (the mean centered result), with `examples` and `seconds` per task. `log` receives a line per task.

    For training: read the bundle once (`load_core(max_per_task=500)`), then call this with the uncompiled
    model and the run's rank, world size and autocast dtype; every rank gets the same result. The model's
    modules are called directly (the options' pass continues a recorded prefix), so it must hold whole
    weights: not FSDP's shards.
    """
    if not tasks:
        raise UserError("no CORE tasks to evaluate")
    check_vocab(model, tokenizer)
    out: dict = {"results": {}, "centered_results": {}, "core_metric": None, "examples": {}, "seconds": {}}
    for data in tasks:
        task = data.task
        r = evaluate_task(model, data, device, batch_size, rank, world_size, progress, amp, tokenizer)
        out["results"][task.label] = r["accuracy"]
        out["centered_results"][task.label] = centered(r["accuracy"], task.baseline)
        out["examples"][task.label] = r["examples"]
        out["seconds"][task.label] = r["seconds"]
        if log is not None:
            log(f"{task.label:<34} {task.num_fewshot:>2}-shot {task.task_type:<17} accuracy {r['accuracy']:.4f}  "
                f"centered {out['centered_results'][task.label]:+.4f}  {r['examples']:>6,} examples  "
                f"{r['seconds']:7.1f} s")
    out["core_metric"] = sum(out["centered_results"].values()) / len(out["centered_results"])
    return out


# --- the command: gptscratch eval core --------------------------------------------------------------------


def add_parser(sub) -> argparse.ArgumentParser:
    """`eval core`'s flags (the model's, --hf/--ckpt/--device, are added by the caller)."""
    p = sub.add_parser(
        "core", help="CORE (DCLM's 22 in-context tasks), scored example by example as nanochat scores it",
        description="Score a model on CORE: nanochat's eval bundle, its prompts, few-shot draws and verdicts, "
        "batched. Prints each task's accuracy and centered result and the CORE metric (their mean). Runs on "
        "several processes under torchrun.",
    )
    p.add_argument("--bundle", metavar="DIR", help="an unpacked eval_bundle (core.yaml, eval_meta_data.csv, "
                   "eval_data/); default: download nanochat's eval_bundle.zip once into $GPTSCRATCH_CACHE, else "
                   "$XDG_CACHE_HOME/gptscratch, else ~/.cache/gptscratch")
    p.add_argument("--tasks", metavar="A,B,...", help="only these tasks, by core.yaml label (default: all)")
    p.add_argument("--max-per-task", type=int, default=None, metavar="N",
                   help="score the first N examples of each task after nanochat's shuffle (default: all)")
    p.add_argument("--batch-size", type=int, default=16, metavar="B", help="examples per forward pass (default 16)")
    p.add_argument("--dtype", choices=DTYPES, default="auto", help=f"{DTYPE_HELP} (default auto, as train's)")
    p.add_argument("--json", action="store_true", help="print one JSON line on stdout: results, centered_results, "
                   "core_metric, examples, seconds")
    return p


def parse_tasks(value: str | None) -> list[str] | None:
    if value is None:
        return None
    names = [name.strip() for name in value.split(",") if name.strip()]
    if not names:
        raise UserError(f"--tasks {value!r}: expected task labels separated by commas")
    return names


def check_args(args: argparse.Namespace) -> None:
    """The flags alone, before any download or file read."""
    if args.max_per_task is not None and args.max_per_task < 1:
        raise UserError(f"--max-per-task {args.max_per_task}: must be at least 1 (leave it out for all)")
    if args.batch_size < 1:
        raise UserError(f"--batch-size {args.batch_size}: must be at least 1")
    parse_tasks(args.tasks)


def run(args: argparse.Namespace, load_model: Callable[[], tuple[torch.nn.Module, Tokenizer]], device: torch.device,
        rank: int = 0, world_size: int = 1) -> int:
    """`gptscratch eval core` once the bundle is in place: read the tasks (bad input fails before the model
    loads), score with the model's tokenizer, and print on rank 0."""
    tasks = load_core(args.bundle, parse_tasks(args.tasks), args.max_per_task)
    model, tokenizer = load_model()
    master = rank == 0
    say = (lambda line: print(line, file=sys.stderr if args.json else sys.stdout, flush=True)) if master else None
    result = evaluate_core(model, tasks, device, args.batch_size, rank, world_size, progress=master,
                           amp=autocast_dtype(args.dtype, device), log=say, tokenizer=tokenizer)
    if master:
        summary = f"CORE {result['core_metric']:.4f} over {len(tasks)} task(s)"
        if args.json:
            print(summary, file=sys.stderr)
            print(json.dumps(result))
        else:
            print(summary)
    return 0
