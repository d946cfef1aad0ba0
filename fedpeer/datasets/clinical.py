"""Heterogeneous multi-site chest-radiograph reports, for federated experiments (no real patient data).

Every site writes ordinary JSONL (`site{i}/train.jsonl`, `site{i}/eval.jsonl`): seq-cls rows
`{"text", "label"}`, causal-lm rows `{"prompt", "completion", "text"}` where the prompt is the exam,
comparison and findings sections ending in the site's impression header and the completion is the
impression in the site's style (report-style generation). Eval rows come from the same site
distribution as its training rows: evaluation is personalized. All of it is deterministic for
(seed, site); a site's eval rows do not depend on its number of training rows.

The heterogeneity, and why it is there:

1. Label skew. Site i draws its findings from p_i ~ Dirichlet(alpha) over `CLINICAL_LABELS`
   (`label_mix`). alpha = 0.1: most sites see one or two findings; alpha = 100: nearly uniform.
   This is the skew the seed papers (FedMRG, Fed-MedLoRA) simulate.
2. Reporting-style skew (`SiteStyle`, `site_style`): section headers and their order (some sites put
   the impression first), exam names, phrasing templates, the site's usual negation ("no X",
   "X is absent", "negative for X", "without evidence of X", "X is not seen"; 85 % of negations),
   abbreviations ("PTX", "RLL", "pulm", "w/o" ... on at about half of the sites), distractor
   sentences (incidental findings, devices, comparison remarks; each site has its own subset and
   rate) and terminology: each finding has a canonical term every site uses in 30 % of mentions and
   two site-specific synonyms drawn from a pool of five (e.g. "air bronchograms" at one site,
   "lobar airspace filling" at another). Different wording alone is learnable by one shared model;
   it makes a site's data look foreign to the others (slower, noisier federated learning).
3. Site-specific meaning ("house phrases"). The vague phrases "opacity", "haziness" and
   "shadowing" are each site's shorthand for one of pneumonia, edema, effusion or normal (a benign,
   technical finding), rotated across sites: at site i, house phrase h means
   AMBIGUOUS[(h + i + offset(seed)) % 4], so sites i != j (mod 4) read every house phrase
   differently. In half of the reports of a finding the site has a house phrase for, it names the
   finding only by that phrase (findings and impression, at a location that fits every meaning, with
   no indication hint and no negation of the other meanings, so nothing but the site resolves it).
   Pooled over sites such a report is ambiguous, so one shared model is measurably worse than a shared
   model plus a site-specific part. tests/test_clinical.py measures it with naive Bayes on word
   uni+bigrams, 4 sites x 300 rows: shared 0.83 accuracy (0.48 on house-phrase rows) vs shared +
   per-site counts 0.94 (0.92) at alpha = 100; 0.85 (0.82) vs 0.93 (0.91) at alpha = 0.5. A
   discriminative model can partly learn site x phrase from style cues (headers and templates identify
   the site): a bigram logistic regression gets 0.85-0.88 shared vs 0.91-0.93 with per-site weights
   (alpha = 100, three seeds), and nearly closes the gap at alpha = 0.5, where the site's label prior
   often picks the right meaning. The gap a federated run shows depends on the model's capacity.
4. Label noise: 5 % of seq-cls labels are replaced by another class (annotation errors), so no
   model reaches 100 %.

Other cues a shared model can learn everywhere: the canonical terms, finding-specific locations and,
in 30 % of reports, an indication that hints at the finding. Negated findings appear in most reports,
so the bare presence of a term is not the label.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from fedpeer.datasets.clinical_vocab import (
    ABBREVIATIONS,
    AMBIGUOUS,
    CLINICAL_LABELS,
    COMPARISONS,
    DISTRACTORS,
    EXAMS,
    FINDINGS,
    HEADERS,
    HINTS,
    HOUSE_LOCATIONS,
    HOUSE_PHRASES,
    IMPRESSION,
    INDICATION_LABELS,
    INDICATIONS,
    LOCATIONS,
    NEGATIONS,
    NORMAL_IMPRESSION,
    NORMAL_STATEMENTS,
    ORDERS,
    POSITIVE,
    SECTIONS,
    TERMS,
    clinical_corpus,
)

__all__ = [
    "AMBIGUOUS",
    "CLINICAL_LABELS",
    "HOUSE_PHRASES",
    "SECTIONS",
    "TASKS",
    "SiteStyle",
    "clinical_corpus",
    "label_mix",
    "report_sections",
    "site_rows",
    "site_style",
    "write_clinical_sites",
    "write_pooled",
]
# The tables (labels, terms, templates, ...) and clinical_corpus live in clinical_vocab.py (re-exported here).

TASKS = ("causal-lm", "seq-cls")

# Strength of each kind of heterogeneity (see the module docstring for why these values).
SHARED_TERM_RATE = 0.3  # mentions that use the canonical term rather than the site's own synonym
HOUSE_RATE = 0.5  # reports of an ambiguous finding named only by the site's house phrase
NEGATION_STYLE_RATE = 0.85  # negations in the site's usual form
INDICATION_HINT_RATE = 0.3  # reports whose indication hints at the finding
LABEL_NOISE = 0.05  # seq-cls labels replaced by another class
_SITE_SYNONYMS = 2  # each site's own synonyms per finding, drawn from the pool TERMS[finding][1:]


@dataclass(frozen=True)
class SiteStyle:
    """How one site writes its reports; `site_style` draws it from (site, seed)."""

    site: int
    headers: Mapping[str, str]  # section -> header, e.g. "findings" -> "FINDINGS:"
    section_order: tuple[str, ...]  # a permutation of SECTIONS (causal-lm moves the impression last)
    terms: Mapping[str, tuple[str, ...]]  # finding -> the site's own synonyms (besides the canonical term)
    house: Mapping[str, str]  # house phrase -> the finding it means at this site
    negation: str  # the site's usual negation template, e.g. "{x} is absent"
    positive_templates: tuple[str, ...]
    impression_templates: tuple[str, ...]
    normal_impressions: tuple[str, ...]
    normal_statements: tuple[str, ...]
    exams: tuple[str, ...]
    indication_label: str
    comparisons: tuple[str, ...]
    distractors: tuple[str, ...]
    distractor_rate: float  # mean number of distractor sentences per report
    numbered_impression: bool  # "1. ..." in the impression
    abbreviations: tuple[tuple[str, str], ...]  # empty when the site does not abbreviate

    @property
    def abbreviates(self) -> bool:
        return bool(self.abbreviations)


def site_style(site: int, seed: int = 0) -> SiteStyle:
    """The reporting style of `site`; deterministic for (site, seed)."""
    rng = random.Random(f"clinical-style:{seed}:{site}")
    offset = random.Random(f"clinical-house:{seed}").randrange(len(AMBIGUOUS))
    abbreviates = rng.random() < 0.5
    return SiteStyle(
        site=site,
        headers={s: rng.choice(options) for s, options in HEADERS.items()},
        section_order=rng.choice(ORDERS),
        terms={f: tuple(rng.sample(TERMS[f][1:], _SITE_SYNONYMS)) for f in FINDINGS},
        house={h: AMBIGUOUS[(i + site + offset) % len(AMBIGUOUS)] for i, h in enumerate(HOUSE_PHRASES)},
        negation=rng.choice(NEGATIONS),
        positive_templates=tuple(rng.sample(POSITIVE, 3)),
        impression_templates=tuple(rng.sample(IMPRESSION, 2)),
        normal_impressions=tuple(rng.sample(NORMAL_IMPRESSION, 2)),
        normal_statements=tuple(rng.sample(NORMAL_STATEMENTS, 2)),
        exams=tuple(rng.sample(EXAMS, 2)),
        indication_label=rng.choice(INDICATION_LABELS),
        comparisons=tuple(rng.sample(COMPARISONS, 2)),
        distractors=tuple(rng.sample(DISTRACTORS, 7)),
        distractor_rate=rng.uniform(0.5, 2.0),
        numbered_impression=rng.random() < 0.4,
        abbreviations=tuple(a for a in ABBREVIATIONS if rng.random() < 0.7) if abbreviates else (),
    )


def label_mix(
    site: int, n_labels: int = len(CLINICAL_LABELS), alpha: float = 0.5, seed: int = 0
) -> list[float]:
    """Site `site`'s label distribution, a draw from Dirichlet(alpha, ..., alpha) over `n_labels` classes."""
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    rng = random.Random(f"clinical-mix:{seed}:{site}")
    draws = [rng.gammavariate(alpha, 1.0) for _ in range(n_labels)]
    total = sum(draws)
    # Tiny alpha can underflow every gamma draw to 0.0; the Dirichlet limit is then one class.
    if total == 0.0:
        return [1.0 if i == rng.randrange(n_labels) else 0.0 for i in range(n_labels)]
    return [d / total for d in draws]


# --- one report -------------------------------------------------------------------------------------
def _sentence(text: str) -> str:
    text = " ".join(text.split()).replace(" ,", ",")
    return text[:1].upper() + text[1:] + "."


def _term(rng: random.Random, style: SiteStyle, finding: str) -> str:
    if rng.random() < SHARED_TERM_RATE:
        return TERMS[finding][0]
    return rng.choice(style.terms[finding])


def _negation(rng: random.Random, style: SiteStyle, finding: str) -> str:
    template = style.negation if rng.random() < NEGATION_STYLE_RATE else rng.choice(NEGATIONS)
    return _sentence(template.format(x=_term(rng, style, finding)))


def _house_phrase(rng: random.Random, style: SiteStyle, finding: str) -> str | None:
    """The site's house phrase for `finding` in HOUSE_RATE of its reports, else None."""
    phrases = [h for h, meaning in style.house.items() if meaning == finding]
    return phrases[0] if phrases and rng.random() < HOUSE_RATE else None


def _positive(rng: random.Random, style: SiteStyle, finding: str, house: str | None) -> tuple[str, str]:
    """(findings sentence, impression) naming `finding` in the site's words, or only by `house`."""
    if house:
        term, impression_term, loc = house, house, rng.choice(HOUSE_LOCATIONS)
    else:
        term, impression_term = _term(rng, style, finding), _term(rng, style, finding)
        loc = rng.choice(LOCATIONS[finding])
    found = _sentence(rng.choice(style.positive_templates).format(x=term, loc=loc))
    return found, _sentence(rng.choice(style.impression_templates).format(x=impression_term, loc=loc))


def _distractors(rng: random.Random, style: SiteStyle) -> list[str]:
    # Poisson-like count from a few Bernoulli draws: cheap and stays small.
    n = sum(rng.random() < style.distractor_rate / 3 for _ in range(3))
    return [_sentence(s) for s in rng.sample(style.distractors, n)]


def _findings(rng: random.Random, style: SiteStyle, finding: str) -> tuple[list[str], str, bool]:
    """Findings sentences, impression, and whether the finding is named only by a house phrase."""
    others = [f for f in FINDINGS if f != finding]
    house = _house_phrase(rng, style, finding)
    if house:
        lead, impression = _positive(rng, style, finding, house)
        # A vague phrase leaves the differential open: the report does not rule out what it could mean
        # elsewhere (which would also let a reader guess the finding by elimination).
        others = [f for f in others if f not in AMBIGUOUS]
    elif finding == "normal":
        lead = _sentence(rng.choice(style.normal_statements))
        impression = _sentence(rng.choice(style.normal_impressions))
    else:
        lead, impression = _positive(rng, style, finding, None)
    low = 2 if finding == "normal" and not house else 1
    negated = rng.sample(others, rng.randint(min(low, len(others)), min(low + 2, len(others))))
    rest = [_negation(rng, style, f) for f in negated] + _distractors(rng, style)
    rng.shuffle(rest)
    # Most reports lead with the positive finding; some bury it.
    sentences = [lead, *rest] if rng.random() < 0.6 else [*rest[:1], lead, *rest[1:]]
    return sentences, impression, house is not None


def _exam(rng: random.Random, style: SiteStyle, finding: str, hint: bool) -> str:
    hinted = hint and rng.random() < INDICATION_HINT_RATE
    indication = rng.choice(HINTS[finding] if hinted else INDICATIONS)
    return f"{_sentence(rng.choice(style.exams))} {_sentence(f'{style.indication_label} {indication}')}"


def _abbreviate(text: str, style: SiteStyle) -> str:
    for long, short in style.abbreviations:
        text = re.sub(rf"\b{long}\b", short, text, flags=re.IGNORECASE)
    # A sentence may now start with a lowercase abbreviation ("pulm edema ...").
    return re.sub(r"(^|[.:] )([a-z])", lambda m: m[1] + m[2].upper(), text)


def report_sections(rng: random.Random, style: SiteStyle, finding: str) -> dict[str, str]:
    """Section name -> body text (without header) of one report of `finding` in the site's style."""
    sentences, impression, house = _findings(rng, style, finding)
    if style.numbered_impression:
        impression = f"1. {impression}"
    sections = {
        # A hint would resolve what the house phrase leaves to site knowledge.
        "exam": _exam(rng, style, finding, hint=not house),
        "comparison": _sentence(rng.choice(style.comparisons)),
        "findings": " ".join(sentences),
        "impression": impression,
    }
    return {name: _abbreviate(body, style) for name, body in sections.items()}


def _row(rng: random.Random, style: SiteStyle, finding: str, task: str) -> dict[str, str]:
    sections = report_sections(rng, style, finding)
    order = list(style.section_order)
    if task == "causal-lm":
        # Report generation: the impression summarizes what came before, so it comes last.
        order = [s for s in order if s != "impression"]
        prompt = "\n".join(f"{style.headers[s]} {sections[s]}" for s in order)
        prompt += f"\n{style.headers['impression']}"
        completion = f" {sections['impression']}"
        return {"prompt": prompt, "completion": completion, "text": prompt + completion}
    text = "\n".join(f"{style.headers[s]} {sections[s]}" for s in order)
    label = finding
    if rng.random() < LABEL_NOISE:
        label = rng.choice([c for c in CLINICAL_LABELS if c != finding])
    return {"text": text, "label": label}


def site_rows(
    site: int, n: int, *, task: str, split: str = "train", alpha: float = 0.5, seed: int = 0
) -> Iterator[dict[str, str]]:
    """`n` rows of `site` for `split` ("train" or "eval": separate random streams, same distribution)."""
    _check_task(task)
    style, mix = site_style(site, seed), label_mix(site, len(CLINICAL_LABELS), alpha, seed)
    rng = random.Random(f"clinical-rows:{seed}:{site}:{split}")
    for _ in range(n):
        finding = rng.choices(CLINICAL_LABELS, weights=mix)[0]
        yield _row(rng, style, finding, task)


# --- files ------------------------------------------------------------------------------------------
def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")


def _per_site(value: int | Sequence[int], n_sites: int, name: str) -> list[int]:
    sizes = [value] * n_sites if isinstance(value, int) else list(value)
    if len(sizes) != n_sites:
        raise ValueError(f"{name} lists {len(sizes)} sizes for {n_sites} sites")
    if any(s < 1 for s in sizes):
        raise ValueError(f"{name} must be >= 1 for every site, got {sizes}")
    return sizes


def _write_jsonl(path: Path, rows: Iterator[dict[str, str]] | list[dict[str, str]]) -> None:
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")


def write_clinical_sites(
    out_dir: str | Path,
    n_sites: int,
    *,
    task: str,
    alpha: float = 0.5,
    seed: int = 0,
    n_train: int | Sequence[int] = 200,
    n_eval: int | Sequence[int] = 100,
) -> list[Path]:
    """Write `site{i}/train.jsonl` and `site{i}/eval.jsonl` for `n_sites` sites; returns the site dirs.

    `n_train` / `n_eval` may list one size per site (e.g. a late-joining site with little data).
    Site i's rows depend only on (seed, i, alpha, task) and its own sizes, not on `n_sites`.
    """
    _check_task(task)
    if n_sites < 1:
        raise ValueError(f"n_sites must be >= 1, got {n_sites}")
    trains, evals = _per_site(n_train, n_sites, "n_train"), _per_site(n_eval, n_sites, "n_eval")
    dirs = []
    for site in range(n_sites):
        site_dir = Path(out_dir) / f"site{site}"
        site_dir.mkdir(parents=True, exist_ok=True)
        for split, n in (("train", trains[site]), ("eval", evals[site])):
            rows = site_rows(site, n, task=task, split=split, alpha=alpha, seed=seed)
            _write_jsonl(site_dir / f"{split}.jsonl", rows)
        dirs.append(site_dir)
    return dirs


def write_pooled(
    site_dirs: Sequence[str | Path], out_path: str | Path, *, split: str = "train", seed: int = 0
) -> Path:
    """Pool the sites' `{split}.jsonl` into one shuffled file: the centralized baseline's data."""
    rows = []
    for d in site_dirs:
        rows += [json.loads(line) for line in (Path(d) / f"{split}.jsonl").read_text().splitlines() if line]
    random.Random(f"clinical-pool:{seed}").shuffle(rows)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    _write_jsonl(out, rows)
    return out
