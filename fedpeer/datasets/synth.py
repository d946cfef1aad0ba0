"""Synthetic radiology-report sites for demos and tests (no real patient data anywhere).

Each site writes reports in its own style (phrasing templates, abbreviations, section order), and for
seq-cls its label mix is skewed by a seeded Dirichlet draw: the two kinds of heterogeneity the
global + local adapters are meant to separate. A fuller generator can replace this later.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator, Sequence
from pathlib import Path

DEMO_LABELS: tuple[str, ...] = ("normal", "effusion", "pneumonia", "cardiomegaly")
TASKS = ("causal-lm", "seq-cls")

# Findings per label: the label-bearing part of a report, shared by every site.
_FINDINGS: dict[str, tuple[str, ...]] = {
    "normal": (
        "no acute cardiopulmonary process",
        "lungs are clear without focal consolidation",
        "heart size is normal and lungs are clear",
        "no pleural effusion or pneumothorax",
    ),
    "effusion": (
        "small left pleural effusion",
        "moderate right pleural effusion with adjacent atelectasis",
        "bilateral pleural effusions are present",
        "blunting of the costophrenic angle suggests a small effusion",
    ),
    "pneumonia": (
        "right lower lobe consolidation concerning for pneumonia",
        "patchy airspace opacity in the left lower lobe",
        "focal consolidation in the right middle lobe",
        "multifocal airspace disease compatible with infection",
    ),
    "cardiomegaly": (
        "the cardiac silhouette is enlarged",
        "moderate cardiomegaly without pulmonary edema",
        "enlarged heart with mild vascular congestion",
        "stable cardiomegaly compared with prior study",
    ),
}
_INDICATIONS = ("cough", "shortness of breath", "fever", "chest pain", "follow up", "preoperative evaluation")
_COMPARISONS = ("none", "prior study from last year", "radiograph from last month")

# Site styles: section headers, order, abbreviations. Site i uses style i modulo len(_STYLES).
_STYLES: tuple[dict, ...] = (
    {"head": ("indication :", "findings :", "impression :"), "order": (0, 1, 2), "abbrev": {}},
    {"head": ("hx", "fdgs", "imp"), "order": (1, 2, 0), "abbrev": {"pleural": "pl", "bilateral": "bilat"}},
    {
        "head": ("clinical history ;", "report ;", "conclusion ;"),
        "order": (0, 2, 1),
        "abbrev": {"right": "rt", "left": "lt"},
    },
    {
        "head": ("reason", "result", "summary"),
        "order": (2, 1, 0),
        "abbrev": {"consolidation": "consol", "cardiomegaly": "cmg", "without": "w/o"},
    },
)


def _style(site: int) -> dict:
    return _STYLES[site % len(_STYLES)]


def _abbreviate(text: str, abbrev: dict[str, str]) -> str:
    return " ".join(abbrev.get(w, w) for w in text.split())


def _report(rng: random.Random, label: str, site: int) -> str:
    style = _style(site)
    finding = rng.choice(_FINDINGS[label])
    impression = finding if label != "normal" else "normal chest radiograph"
    body = (f"{rng.choice(_INDICATIONS)} comparison {rng.choice(_COMPARISONS)}", finding, impression)
    parts = [f"{style['head'][i]} {body[i]}" for i in style["order"]]
    return _abbreviate(" . ".join(parts) + " .", style["abbrev"])


def _label_mix(rng: random.Random, alpha: float = 0.7) -> list[float]:
    # Dirichlet via normalized gammas; a floor keeps every class present so eval metrics are defined.
    draws = [rng.gammavariate(alpha, 1.0) + 0.02 for _ in DEMO_LABELS]
    total = sum(draws)
    return [d / total for d in draws]


def _site_rows(site: int, n: int, task: str, rng: random.Random, mix: Sequence[float]) -> Iterator[dict]:
    for _ in range(n):
        label = rng.choices(DEMO_LABELS, weights=mix)[0]
        text = _report(rng, label, site)
        yield {"text": text, "label": label} if task == "seq-cls" else {"text": text}


def _write_jsonl(path: Path, rows: Iterator[dict]) -> None:
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")


def write_demo_sites(
    out_dir: str | Path, n_sites: int, *, task: str, seed: int = 0, n_train: int = 200, n_eval: int = 50
) -> list[Path]:
    """Write `site{i}/train.jsonl` and `site{i}/eval.jsonl` for `n_sites` sites; returns the site dirs.

    Deterministic for (n_sites, task, seed, n_train, n_eval).
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    if n_sites < 1:
        raise ValueError(f"n_sites must be >= 1, got {n_sites}")
    out = Path(out_dir)
    dirs = []
    for site in range(n_sites):
        rng = random.Random(f"{seed}:{site}")
        mix = _label_mix(rng)
        site_dir = out / f"site{site}"
        site_dir.mkdir(parents=True, exist_ok=True)
        _write_jsonl(site_dir / "train.jsonl", _site_rows(site, n_train, task, rng, mix))
        _write_jsonl(site_dir / "eval.jsonl", _site_rows(site, n_eval, task, rng, mix))
        dirs.append(site_dir)
    return dirs


def site_label_mix(site: int, seed: int = 0) -> list[float]:
    """The label distribution site `site` draws from (same order as DEMO_LABELS)."""
    return _label_mix(random.Random(f"{seed}:{site}"))


def demo_corpus() -> list[str]:
    """Every word any demo site can write, as a few lines: enough to build a tiny word-level tokenizer."""
    base = [*(f for fs in _FINDINGS.values() for f in fs), *_INDICATIONS, *_COMPARISONS]
    base += ["comparison . normal chest radiograph", *DEMO_LABELS]
    lines = list(base)
    for style in _STYLES:
        lines.append(" ".join(style["head"]))
        lines += [_abbreviate(line, style["abbrev"]) for line in base]
    return lines
