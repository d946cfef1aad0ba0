"""Clinical multi-site generator: deterministic, label skew follows alpha, site styles and meanings differ."""

from __future__ import annotations

import itertools
import json
import math
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from fedpeer.datasets.clinical import (
    CLINICAL_LABELS,
    HOUSE_PHRASES,
    SECTIONS,
    clinical_corpus,
    label_mix,
    site_rows,
    site_style,
    write_clinical_sites,
    write_pooled,
)
from fedpeer.model.tiny import build_tiny_model
from fedpeer.train.data import read_jsonl


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9/]+", text.lower())


def tv(p: list[float], q: list[float]) -> float:
    return sum(abs(a - b) for a, b in zip(p, q, strict=True)) / 2


def mean_pairwise_tv(dists: list[list[float]]) -> float:
    pairs = list(itertools.combinations(dists, 2))
    return sum(tv(p, q) for p, q in pairs) / len(pairs)


@pytest.mark.parametrize("task", ["seq-cls", "causal-lm"])
def test_deterministic_for_a_seed(tmp_path: Path, task: str) -> None:
    def files(name: str, seed: int) -> list[bytes]:
        dirs = write_clinical_sites(tmp_path / name, 3, task=task, seed=seed, n_train=40, n_eval=10)
        return [(d / f).read_bytes() for d in dirs for f in ("train.jsonl", "eval.jsonl")]

    assert files("a", 5) == files("b", 5)
    assert files("a", 5) != files("c", 6)


def test_layout_sizes_and_per_site_train_sizes(tmp_path: Path) -> None:
    dirs = write_clinical_sites(tmp_path, 3, task="seq-cls", n_train=[50, 50, 5], n_eval=20)
    assert [d.name for d in dirs] == ["site0", "site1", "site2"]
    assert [len(rows(d / "train.jsonl")) for d in dirs] == [50, 50, 5]
    assert [len(rows(d / "eval.jsonl")) for d in dirs] == [20, 20, 20]
    # A late joiner's small training set is a prefix of what it would have had; its eval set is the same.
    full = write_clinical_sites(tmp_path / "full", 3, task="seq-cls", n_train=50, n_eval=20)
    assert rows(dirs[2] / "train.jsonl") == rows(full[2] / "train.jsonl")[:5]
    assert (dirs[2] / "eval.jsonl").read_bytes() == (full[2] / "eval.jsonl").read_bytes()


def test_a_site_does_not_depend_on_the_number_of_sites(tmp_path: Path) -> None:
    two = write_clinical_sites(tmp_path / "two", 2, task="seq-cls", n_train=30, n_eval=10)
    five = write_clinical_sites(tmp_path / "five", 5, task="seq-cls", n_train=30, n_eval=10)
    assert (two[1] / "train.jsonl").read_bytes() == (five[1] / "train.jsonl").read_bytes()


def test_label_mix_is_a_distribution_and_deterministic() -> None:
    for alpha in (0.05, 0.5, 100.0):
        mix = label_mix(3, len(CLINICAL_LABELS), alpha, seed=1)
        assert len(mix) == len(CLINICAL_LABELS) and min(mix) >= 0
        assert sum(mix) == pytest.approx(1.0)
        assert mix == label_mix(3, len(CLINICAL_LABELS), alpha, seed=1)
    assert label_mix(3, 6, 0.5, seed=1) != label_mix(4, 6, 0.5, seed=1)
    with pytest.raises(ValueError, match="alpha"):
        label_mix(0, 6, 0.0)


def test_label_skew_grows_as_alpha_shrinks(tmp_path: Path) -> None:
    mixes = {a: [label_mix(s, len(CLINICAL_LABELS), a, seed=0) for s in range(10)] for a in (0.1, 1.0, 100.0)}
    skew = {a: mean_pairwise_tv(m) for a, m in mixes.items()}
    assert skew[0.1] > skew[1.0] > skew[100.0]
    assert skew[0.1] > 0.6 and skew[100.0] < 0.1, skew
    # ... and the written labels follow the mixes (up to sampling and 5 % label noise).
    observed = {}
    for alpha in (0.1, 100.0):
        dirs = write_clinical_sites(
            tmp_path / f"a{alpha}", 6, task="seq-cls", alpha=alpha, n_train=300, n_eval=1
        )
        counts = [Counter(r["label"] for r in rows(d / "train.jsonl")) for d in dirs]
        observed[alpha] = mean_pairwise_tv([[c[label] / 300 for label in CLINICAL_LABELS] for c in counts])
    assert observed[0.1] > observed[100.0] + 0.4, observed


def test_sites_write_in_their_own_style(tmp_path: Path) -> None:
    # alpha = 100: (nearly) the same label mix everywhere, so what differs is the style alone.
    def vocab(site: int, split: str) -> set[str]:
        texts = (r["text"] for r in site_rows(site, 200, task="seq-cls", split=split, alpha=100.0))
        return {w for text in texts for w in words(text)}

    def jaccard(a: set[str], b: set[str]) -> float:
        return len(a & b) / len(a | b)

    vocabs = {s: (vocab(s, "train"), vocab(s, "eval")) for s in range(5)}
    within = [jaccard(train, held) for train, held in vocabs.values()]
    across = [jaccard(vocabs[a][0], vocabs[b][0]) for a, b in itertools.combinations(vocabs, 2)]
    assert min(within) > 0.85, within
    assert max(across) < 0.75 and sum(across) / len(across) < 0.65, across


def test_site_styles_differ_and_are_deterministic() -> None:
    styles = [site_style(s, seed=0) for s in range(4)]
    assert styles[0] == site_style(0, seed=0) and styles[0] != site_style(0, seed=1)
    assert len({s.negation for s in styles} | {tuple(s.section_order) for s in styles}) > 2
    for style in styles:
        assert sorted(style.section_order) == sorted(SECTIONS)
        assert set(style.house) == set(HOUSE_PHRASES)
    # Any two of these sites read every house phrase differently.
    for a, b in itertools.combinations(styles, 2):
        assert all(a.house[h] != b.house[h] for h in HOUSE_PHRASES), (a.house, b.house)


def test_seq_cls_rows_load_and_follow_the_site_section_order(tmp_path: Path) -> None:
    dirs = write_clinical_sites(tmp_path, 4, task="seq-cls", n_train=30, n_eval=10)
    for site, d in enumerate(dirs):
        examples = read_jsonl(d / "train.jsonl", "seq-cls", CLINICAL_LABELS)
        assert len(examples) == 30 and all(e.label is not None for e in examples)
        style = site_style(site, 0)
        first_header = style.headers[style.section_order[0]]
        assert all(e.text.startswith(first_header) for e in examples)


def test_causal_lm_rows_are_prompt_and_impression(tmp_path: Path) -> None:
    dirs = write_clinical_sites(tmp_path, 3, task="causal-lm", n_train=30, n_eval=10)
    for site, d in enumerate(dirs):
        header = site_style(site, 0).headers["impression"]
        for row in rows(d / "eval.jsonl"):
            assert row["text"] == row["prompt"] + row["completion"]
            assert row["prompt"].endswith(f"\n{header}") and row["completion"].startswith(" ")
            assert header not in row["completion"]
        examples = read_jsonl(d / "train.jsonl", "causal-lm")
        assert all(e.prompt and e.completion.strip() for e in examples)


@pytest.mark.parametrize("task", ["causal-lm", "seq-cls"])
def test_tiny_tokenizer_knows_every_word(tmp_path: Path, task: str) -> None:
    model_dir = build_tiny_model(tmp_path / "m", arch="bert", task="causal-lm", corpus=clinical_corpus())
    tok = AutoTokenizer.from_pretrained(model_dir)
    for seed in (0, 1):
        for site in range(6):
            for r in site_rows(site, 60, task=task, seed=seed):
                assert tok.unk_token_id not in tok(r["text"])["input_ids"], r["text"]


def test_pooled_file_holds_every_site_row(tmp_path: Path) -> None:
    dirs = write_clinical_sites(tmp_path / "s", 3, task="seq-cls", n_train=[20, 10, 5], n_eval=4)
    pooled = write_pooled(dirs, tmp_path / "pooled" / "train.jsonl", seed=1)
    everything = [r for d in dirs for r in rows(d / "train.jsonl")]
    assert sorted(map(json.dumps, rows(pooled))) == sorted(map(json.dumps, everything))
    assert rows(pooled) != everything  # shuffled
    assert write_pooled(dirs, tmp_path / "again.jsonl", seed=1).read_bytes() == pooled.read_bytes()


# --- heterogeneity that needs personalization ------------------------------------------------------
Rows = list[tuple[set[str], str]]


def _features(text: str) -> set[str]:
    w = words(text)
    return set(w) | {f"{a}_{b}" for a, b in itertools.pairwise(w)}


def naive_bayes(weighted: list[tuple[Rows, float]], vocab_size: int) -> Callable[[set[str]], str]:
    """Multinomial naive Bayes over unigram+bigram presence, each row set counted with its weight."""
    counts: dict[str, Counter[str]] = {c: Counter() for c in CLINICAL_LABELS}
    class_n: Counter[str] = Counter()
    for rows_, weight in weighted:
        for feats, label in rows_:
            class_n[label] += weight
            for f in feats:
                counts[label][f] += weight
    smooth = 0.1
    denom = {c: math.log(sum(counts[c].values()) + smooth * vocab_size) for c in CLINICAL_LABELS}

    def predict(feats: set[str]) -> str:
        def score(c: str) -> float:
            return math.log(class_n[c] + 1) + sum(math.log(counts[c][f] + smooth) - denom[c] for f in feats)

        return max(CLINICAL_LABELS, key=score)

    return predict


def shared_vs_personal(alpha: float) -> dict[str, tuple[float, float]]:
    """(accuracy, accuracy on house-phrase rows) of a model of all sites' rows ("shared"), and of the
    same plus the site's own rows weighted up ("personal": a shared and a site-specific part)."""
    data = {
        s: tuple(
            [
                (_features(r["text"]), r["label"])
                for r in site_rows(s, n, task="seq-cls", split=split, alpha=alpha)
            ]
            for split, n in (("train", 300), ("eval", 150))
        )
        for s in range(4)
    }
    everything = [row for train, _ in data.values() for row in train]
    vocab_size = len({f for feats, _ in everything for f in feats})
    shared = naive_bayes([(everything, 1.0)], vocab_size)
    out = {}
    for name in ("shared", "personal"):
        hits, house_hits = [], []
        for train, held in data.values():
            model = (
                shared if name == "shared" else naive_bayes([(everything, 1.0), (train, 20.0)], vocab_size)
            )
            for feats, label in held:
                hits.append(model(feats) == label)
                if feats & set(HOUSE_PHRASES):
                    house_hits.append(hits[-1])
        out[name] = (sum(hits) / len(hits), sum(house_hits) / len(house_hits))
    return out


@pytest.mark.parametrize(("alpha", "house_gap"), [(100.0, 0.2), (0.5, 0.05)])
def test_site_specific_meaning_needs_a_site_specific_part(alpha: float, house_gap: float) -> None:
    """One shared model is measurably worse than shared + site-specific parts, above all on house phrases.

    alpha = 100 takes label priors out, so the gap there comes from what the sites' words mean.
    """
    scores = shared_vs_personal(alpha)
    (shared, shared_house), (personal, personal_house) = scores["shared"], scores["personal"]
    assert personal > 0.85, scores  # learnable (chance is 1/6; 5 % of labels are noise)
    assert personal > shared + 0.04, scores
    assert personal_house > shared_house + house_gap, scores


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="task"):
        write_clinical_sites(tmp_path, 1, task="translation")
    with pytest.raises(ValueError, match="n_sites"):
        write_clinical_sites(tmp_path, 0, task="seq-cls")
    with pytest.raises(ValueError, match="n_train lists 2 sizes for 3 sites"):
        write_clinical_sites(tmp_path, 3, task="seq-cls", n_train=[10, 10])
    with pytest.raises(ValueError, match="n_eval"):
        write_clinical_sites(tmp_path, 1, task="seq-cls", n_eval=0)
