"""The words of the clinical multi-site generator (`fedpeer.datasets.clinical`): labels, terminology,
locations, house phrases, sentence templates, headers, exams and abbreviations. Data only; how a site
picks from these tables is in `clinical.py`."""

from __future__ import annotations

CLINICAL_LABELS = ("normal", "effusion", "pneumonia", "cardiomegaly", "pneumothorax", "edema")
FINDINGS = CLINICAL_LABELS[1:]
SECTIONS = ("exam", "comparison", "findings", "impression")

# Terminology per finding: index 0 is canonical (every site), the rest the pool of site synonyms.
TERMS: dict[str, tuple[str, ...]] = {
    "effusion": (
        "pleural effusion",
        "pleural fluid",
        "layering fluid",
        "blunting of the costophrenic angle",
        "meniscus along the lateral chest wall",
        "fluid in the pleural space",
    ),
    "pneumonia": (
        "pneumonia",
        "consolidation",
        "airspace disease",
        "infiltrate",
        "air bronchograms",
        "lobar airspace filling",
    ),
    "cardiomegaly": (
        "cardiomegaly",
        "enlarged cardiac silhouette",
        "enlarged heart",
        "increased cardiothoracic ratio",
        "globular heart",
        "prominent cardiac contour",
    ),
    "pneumothorax": (
        "pneumothorax",
        "visible pleural line",
        "absent lung markings peripherally",
        "apical lucency",
        "collapsed lung",
        "air in the pleural space",
    ),
    "edema": (
        "pulmonary edema",
        "vascular congestion",
        "interstitial edema",
        "kerley b lines",
        "cephalization",
        "fluid overload",
    ),
}
LOCATIONS: dict[str, tuple[str, ...]] = {
    "effusion": ("on the right", "on the left", "bilaterally", "at the left base", "at the right base"),
    "pneumonia": (
        "in the right lower lobe",
        "in the left lower lobe",
        "in the right middle lobe",
        "in the lingula",
        "in the left upper lobe",
    ),
    "cardiomegaly": ("",),
    "pneumothorax": ("on the right", "on the left", "at the right apex", "at the left apex"),
    "edema": ("bilaterally", "in a perihilar distribution", "in both lungs", ""),
}
# House phrases and the findings they can mean; their locations fit all three findings.
HOUSE_PHRASES: tuple[str, ...] = ("opacity", "haziness", "shadowing")
AMBIGUOUS: tuple[str, ...] = ("pneumonia", "edema", "effusion", "normal")
HOUSE_LOCATIONS = ("at the right base", "at the left base", "bilaterally", "in the right lower lung")

NEGATIONS = ("no {x}", "{x} is absent", "negative for {x}", "without evidence of {x}", "{x} is not seen")
POSITIVE = (
    "there is {x} {loc}",
    "{x} is seen {loc}",
    "{x} is noted {loc}",
    "findings of {x} {loc}",
    "{x} identified {loc}",
    "new {x} {loc}",
    "{loc} there is {x}",
)
IMPRESSION = (
    "{x} {loc}",
    "findings consistent with {x}",
    "{x}, clinical correlation recommended",
    "{x} {loc}, follow up advised",
    "compatible with {x} {loc}",
)
NORMAL_IMPRESSION = (
    "no acute cardiopulmonary process",
    "normal chest radiograph",
    "no acute findings",
    "unremarkable study",
    "no active disease in the chest",
)
NORMAL_STATEMENTS = (
    "the lungs are clear",
    "heart size is normal",
    "the cardiomediastinal silhouette is within normal limits",
    "lungs are well expanded and clear",
)
DISTRACTORS = (
    "the osseous structures are intact",
    "degenerative changes of the thoracic spine",
    "the mediastinum is within normal limits",
    "the trachea is midline",
    "surgical clips in the right upper quadrant",
    "old healed rib fracture on the left",
    "the hila are unremarkable",
    "calcified granuloma in the right upper lobe",
    "mild tortuosity of the aorta",
    "stable appearance since the prior study",
    "an endotracheal tube is in place",
    "a right internal jugular line terminates in the svc",
    "sternotomy wires are present",
    "a nasogastric tube courses below the diaphragm",
    "a left chest port is in place",
    "cardiac pacemaker leads are unchanged",
    "a right chest tube is in place",
)
HEADERS: dict[str, tuple[str, ...]] = {
    "exam": ("EXAM:", "EXAMINATION:", "STUDY:", "PROCEDURE:"),
    "comparison": ("COMPARISON:", "PRIOR:", "COMPARED WITH:", "REFERENCE:"),
    "findings": ("FINDINGS:", "REPORT:", "DESCRIPTION:", "OBSERVATIONS:"),
    "impression": ("IMPRESSION:", "CONCLUSION:", "SUMMARY:", "OPINION:"),
}
ORDERS = (
    ("exam", "comparison", "findings", "impression"),
    ("exam", "findings", "comparison", "impression"),
    ("comparison", "exam", "findings", "impression"),
    ("impression", "exam", "comparison", "findings"),
    ("exam", "impression", "findings", "comparison"),
)
EXAMS = (
    "chest radiograph, pa and lateral",
    "portable chest radiograph",
    "chest x-ray, ap view",
    "cxr, two views",
    "single frontal view of the chest",
)
INDICATION_LABELS = ("indication:", "history:", "clinical information:", "reason for exam:")
INDICATIONS = ("shortness of breath", "chest pain", "follow up", "cough", "weakness")
HINTS: dict[str, tuple[str, ...]] = {
    "normal": ("preoperative evaluation", "routine screening"),
    "effusion": ("decreased breath sounds",),
    "pneumonia": ("fever and cough",),
    "cardiomegaly": ("murmur on auscultation",),
    "pneumothorax": ("sudden chest pain after trauma",),
    "edema": ("heart failure with leg swelling",),
}
COMPARISONS = ("none", "none available", "chest radiograph from yesterday", "radiograph dated last week")
# Longest first, so "right lower lobe" becomes "RLL" before "right" becomes "rt".
ABBREVIATIONS: tuple[tuple[str, str], ...] = (
    ("right lower lobe", "RLL"),
    ("left lower lobe", "LLL"),
    ("right middle lobe", "RML"),
    ("left upper lobe", "LUL"),
    ("endotracheal tube", "ETT"),
    ("nasogastric tube", "NGT"),
    ("internal jugular", "IJ"),
    ("pleural effusion", "pl eff"),
    ("pneumothorax", "PTX"),
    ("cardiomegaly", "cmg"),
    ("consolidation", "consol"),
    ("pulmonary", "pulm"),
    ("bilaterally", "bilat"),
    ("history", "hx"),
    ("without", "w/o"),
    ("right", "rt"),
    ("left", "lt"),
)


def clinical_corpus() -> list[str]:
    """Every word any clinical site can write, as lines: enough to fit a tiny word-level tokenizer."""
    pools = [
        *(t for terms in TERMS.values() for t in terms),
        *(loc for locs in LOCATIONS.values() for loc in locs),
        *HOUSE_PHRASES,
        *HOUSE_LOCATIONS,
        *(t.format(x="", loc="") for t in (*NEGATIONS, *POSITIVE, *IMPRESSION)),
        *NORMAL_IMPRESSION,
        *NORMAL_STATEMENTS,
        *DISTRACTORS,
        *(h for hs in HEADERS.values() for h in hs),
        *EXAMS,
        *INDICATION_LABELS,
        *INDICATIONS,
        *(h for hs in HINTS.values() for h in hs),
        *COMPARISONS,
        *(short for _, short in ABBREVIATIONS),
        "1. , :",
        *CLINICAL_LABELS,
    ]
    return [p for p in pools if p.strip()]
