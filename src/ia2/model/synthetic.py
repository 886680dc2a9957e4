"""A synthetic in-context-learning world: the controlled case for behaviour tests and for the controlled study.

Input words fall into hidden clusters (their "meaning", learnable only in the weights); every sequence is a new
task that maps a few clusters to label words, shown as `<bos> x1 y1 … xk yk xq` → `yq`. A tiny Llama pre-trained
from scratch on such sequences learns genuine in-context learning: from a handful of demonstrations it labels
query words it has never seen in them, while without demonstrations it can only guess.

Three ingredients make it learn: no loss on a class's first label in a sequence (it cannot be inferred), a share of
sequences that are a random string repeated twice (bootstraps induction heads), and demos or queries that often
re-use an earlier word of the same class (exact copying comes before generalising). Two more make it fast and
reliable enough for a test: AdamW at a constant 1e-3 (at 3e-3 some seeds had not even learned to copy after 2,000
steps, and a decaying rate delays the later jump from copying to cluster-level ICL), and stopping as soon as a fixed
probe of fresh tasks shows ICL has been learned (after 1,000-1,200 steps for the seeds tried). The MLP is 256 wide
(0.35M parameters in all) to save a third of the compute; the 512-wide one learned no faster.

`synthetic-icl` is the study's model (`--model synthetic-icl`, pre-trained once, deterministically on one thread,
and cached) and its held-out mapping is the task of the same name (`--task synthetic-icl`), so that the whole
comparison runs on a model whose in-context learning is strong by construction.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from ia2.data.tasks.base import Example, Source, Task
from ia2.errors import IA2Error
from ia2.paths import atomic_path, cache_root
from ia2.registry import SOURCES

PAD, BOS, UNK = "<pad>", "<bos>", "<unk>"
IGNORE = -100


@dataclass(frozen=True)
class WorldConfig:
    n_clusters: int = 6
    words_per_cluster: int = 20
    n_labels: int = 12
    classes: tuple[int, ...] = (2, 3, 4)  # how many clusters one sequence's task maps
    pairs: int = 12  # (x, y) pairs per pre-training sequence
    p_repeat: float = 0.3  # share of sequences that are a random string repeated twice
    repeat_len: tuple[int, int] = (5, 12)
    p_reuse: float = 0.5  # chance that a later word of a class re-uses an earlier one of that class


@dataclass(frozen=True)
class Mapping:
    """A task: clusters[i] ↦ labels[i]."""

    clusters: tuple[int, ...]
    labels: tuple[int, ...]


class World:
    """The vocabulary, the hidden clusters, a held-out mapping, and the pre-training sequences."""

    def __init__(self, seed: int = 0, cfg: WorldConfig = WorldConfig(), held_out_classes: int = 3) -> None:
        self.cfg, self.seed = cfg, seed
        n_words = cfg.n_clusters * cfg.words_per_cluster
        self.words = [f"w{i:03d}" for i in range(n_words)]
        self.label_words = [f"L{i:02d}" for i in range(cfg.n_labels)]
        self.vocab = {tok: i for i, tok in enumerate([PAD, BOS, UNK] + self.words + self.label_words)}
        self.pad_id, self.bos_id = self.vocab[PAD], self.vocab[BOS]
        self.word_ids = [self.vocab[w] for w in self.words]
        self.label_ids = [self.vocab[w] for w in self.label_words]
        rng = random.Random(f"world-{seed}")
        shuffled = rng.sample(self.word_ids, n_words)  # the hidden clusters: nothing in a word's id reveals its own
        self.cluster_words = [
            shuffled[c * cfg.words_per_cluster : (c + 1) * cfg.words_per_cluster] for c in range(cfg.n_clusters)
        ]
        self.held_out = Mapping(
            tuple(rng.sample(range(cfg.n_clusters), held_out_classes)),
            tuple(rng.sample(range(cfg.n_labels), held_out_classes)),
        )
        self._held_pairs = set(zip(self.held_out.clusters, self.held_out.labels))

    # ---------------------------------------------------------------- pre-training data
    def _allowed(self, mapping: Mapping) -> bool:
        """Pre-training never shows two pairs of the held-out mapping in one sequence."""
        return len(self._held_pairs & set(zip(mapping.clusters, mapping.labels))) < 2

    def random_mapping(self, rng: random.Random) -> Mapping:
        while True:
            n = rng.choice(self.cfg.classes)
            mapping = Mapping(
                tuple(rng.sample(range(self.cfg.n_clusters), n)), tuple(rng.sample(range(self.cfg.n_labels), n))
            )
            if self._allowed(mapping):
                return mapping

    def icl_sequence(self, rng: random.Random) -> tuple[list[int], list[int], Mapping]:
        """`<bos> x1 y1 … xk yk` with next-token targets: each y after its x, except a class's first (IGNORE
        elsewhere)."""
        mapping, cfg = self.random_mapping(rng), self.cfg
        ids, targets = [self.bos_id], [IGNORE]
        seen: dict[int, list[int]] = {}
        for _ in range(cfg.pairs):
            c = rng.randrange(len(mapping.clusters))
            earlier = seen.setdefault(c, [])
            if earlier and rng.random() < cfg.p_reuse:
                x = rng.choice(earlier)
            else:
                fresh = [w for w in self.cluster_words[mapping.clusters[c]] if w not in earlier]
                x = rng.choice(fresh)
            y = self.label_ids[mapping.labels[c]]
            ids += [x, y]
            targets += [y if earlier else IGNORE, IGNORE]
            earlier.append(x)
        return ids, targets, mapping

    def repeat_sequence(self, rng: random.Random) -> tuple[list[int], list[int]]:
        """`<bos> s s` for a random string s, with loss on the second copy after its first token."""
        n = rng.randint(*self.cfg.repeat_len)
        s = [rng.choice(self.word_ids + self.label_ids) for _ in range(n)]
        ids = [self.bos_id] + s + s
        targets = [IGNORE] * (n + 1) + s[1:] + [IGNORE]
        return ids, targets

    def batch(self, rng: random.Random, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Right-padded input ids, attention mask and next-token targets (IGNORE where no loss)."""
        rows = [
            self.repeat_sequence(rng) if rng.random() < self.cfg.p_repeat else self.icl_sequence(rng)[:2]
            for _ in range(size)
        ]
        width = max(len(ids) for ids, _ in rows)
        ids = torch.full((size, width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((size, width), dtype=torch.long)
        targets = torch.full((size, width), IGNORE, dtype=torch.long)
        for r, (seq, tgt) in enumerate(rows):
            ids[r, : len(seq)], mask[r, : len(seq)], targets[r, : len(tgt)] = torch.tensor(seq), 1, torch.tensor(tgt)
        return ids, mask, targets

    # ---------------------------------------------------------------- model and tokenizer
    def model_config(self) -> LlamaConfig:
        return LlamaConfig(
            vocab_size=len(self.vocab),
            hidden_size=128,
            intermediate_size=256,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
            max_position_embeddings=64,
            pad_token_id=self.pad_id,
            bos_token_id=self.bos_id,
            eos_token_id=None,
            tie_word_embeddings=True,
        )

    def tokenizer(self) -> PreTrainedTokenizerFast:
        """A word-level tokenizer over the world's vocabulary (whitespace-separated tokens) that starts every text
        with `<bos>`, as pre-training sequences start."""
        tok = Tokenizer(models.WordLevel(self.vocab, unk_token=UNK))
        tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", special_tokens=[(BOS, self.bos_id)])
        return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, bos_token=BOS, unk_token=UNK)

    # ---------------------------------------------------------------- task prompts
    def prompt(self, demos: Sequence[tuple[int, int]], query: int) -> list[int]:
        """`<bos> x1 y1 … xk yk xq` as token ids; demos are (word id, label id) pairs."""
        ids = [self.bos_id]
        for x, y in demos:
            ids += [x, y]
        return ids + [query]


@dataclass(frozen=True)
class PretrainConfig:
    """AdamW at a constant rate after warm-up, stopped once the probe shows ICL has been learned (or at max_steps)."""

    batch_size: int = 64
    lr: float = 1e-3
    warmup: int = 100
    probe_every: int = 100
    target: float = 0.9  # probe accuracy with K_PROBE demos that counts as "learned", twice in a row
    max_steps: int = 3000


K_PROBE = 8


def pretrain(
    world: World, cfg: PretrainConfig = PretrainConfig(), seed: int = 0
) -> tuple[LlamaForCausalLM, list[dict]]:
    """Pre-train a fresh tiny Llama on the world's sequences until it learns in context; deterministic for a given
    seed and thread count. Returns the model (in eval mode) and the probe log."""
    torch.manual_seed(seed)
    model = LlamaForCausalLM(world.model_config())
    rng = random.Random(f"pretrain-{seed}")
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01, betas=(0.9, 0.98))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / cfg.warmup))
    log, hits, total = [], 0, 0.0
    for step in range(1, cfg.max_steps + 1):
        model.train()
        ids, mask, targets = world.batch(rng, cfg.batch_size)
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        loss = F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=IGNORE)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        total += loss.item()
        if step % cfg.probe_every == 0:
            accuracy = probe_accuracy(world, model, K_PROBE)
            log.append({"step": step, "loss": total / cfg.probe_every, "probe": accuracy})
            total, hits = 0.0, hits + 1 if accuracy >= cfg.target else 0
            if hits == 2:
                break
    model.eval()
    return model, log


@torch.no_grad()
def probe_accuracy(world: World, model: LlamaForCausalLM, k: int, n_tasks: int = 128, seed: int = 1) -> float:
    """Accuracy (argmax over the task's labels) on random pre-training-style tasks, with k demos that show every
    class (none when k = 0) and a query word absent from them."""
    rng = random.Random(f"probe-{seed}")
    prompts, gold, options = [], [], []
    for _ in range(n_tasks):
        mapping = world.random_mapping(rng)
        n = len(mapping.clusters)
        classes = list(range(n)) + [rng.randrange(n) for _ in range(k - n)] if k else []
        rng.shuffle(classes)
        demos = [
            (rng.choice(world.cluster_words[mapping.clusters[c]]), world.label_ids[mapping.labels[c]]) for c in classes
        ]
        c, shown = rng.randrange(n), {x for x, _ in demos}
        prompts.append(
            world.prompt(demos, rng.choice([w for w in world.cluster_words[mapping.clusters[c]] if w not in shown]))
        )
        gold.append(c)
        options.append([world.label_ids[label] for label in mapping.labels])
    was_training = model.training
    model.eval()
    last = model(input_ids=torch.tensor(prompts)).logits[:, -1]  # every prompt has the same length
    model.train(was_training)
    return sum(int(int(row[opts].argmax()) == g) for row, opts, g in zip(last, options, gold)) / n_tasks


def save(model: LlamaForCausalLM, path: Path) -> None:
    model.save_pretrained(path)


# The study's world: 16 pairs per pre-training sequence, so prompts with all N − 1 = 15 demonstrations at N = 16 are
# as long as the sequences the model was pre-trained on.
STUDY_WORLD = WorldConfig(pairs=16)
STUDY_SEED = 0
MODEL = TASK = "synthetic-icl"


def study_world() -> World:
    return World(STUDY_SEED, STUDY_WORLD)


def build(folder: Path) -> None:
    """Pre-train the study's model on one thread (so that every machine gets the same weights) and save it with
    its tokenizer and pre-training log in `folder`."""
    world, threads = study_world(), torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng():
            model, log = pretrain(world, seed=STUDY_SEED)
    finally:
        torch.set_num_threads(threads)
    if log[-1]["probe"] < PretrainConfig().target:
        raise RuntimeError(f"{MODEL}: pre-training did not learn in-context learning: {log[-1]}")
    model.generation_config.pad_token_id = world.pad_id
    save(model, folder)
    world.tokenizer().save_pretrained(folder)
    (folder / "pretraining.json").write_text(json.dumps(log, indent=1))


def model_folder() -> Path:
    """The study's model, pre-trained on first use (about a minute) and cached."""
    target = cache_root() / "models" / MODEL
    if not (target / "config.json").exists():
        with atomic_path(target) as tmp:
            tmp.mkdir()
            build(tmp)
    return target


def task() -> Task:
    """The study's task: the held-out mapping's 60 query words (3 clusters of 20) and their label words, a mapping
    pre-training never showed; without demonstrations a model can only guess (chance 1/3)."""
    world = study_world()
    names = {i: w for w, i in world.vocab.items()}
    examples = tuple(
        Example(names[word], world.label_words[label], f"{TASK}:cluster {cluster} word {j}")
        for cluster, label in zip(world.held_out.clusters, world.held_out.labels)
        for j, word in enumerate(world.cluster_words[cluster])
    )
    labels = tuple(sorted(world.label_words[label] for label in world.held_out.labels))
    return Task(name=TASK, examples=examples, labels=labels, template="{question}", separator=" ", source=TASK)


def _source(argument: str, labels: tuple[str, ...] | None) -> Task:
    if labels is not None:
        raise IA2Error(f"task {TASK!r} has fixed labels: drop --labels")
    return task()


SOURCES.register(TASK, Source(_source, (TASK,), argument=False))


def load(path: Path) -> LlamaForCausalLM:
    """A fresh copy of a saved model (adapters.fresh injects LoRA layers into the model it is given)."""
    model = LlamaForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.eval()
    return model
