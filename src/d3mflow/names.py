"""Names shared by every step: the 14 CheXpert labels, the talk's six race groups, and the
slugs that stand for them in file paths and Snakemake wildcards (column names contain spaces
and slashes, which make poor file names)."""

from __future__ import annotations

import re

CHEXPERT_LABELS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Enlarged Cardiomediastinum",
    "Fracture",
    "Lung Lesion",
    "Lung Opacity",
    "No Finding",
    "Pleural Effusion",
    "Pleural Other",
    "Pneumonia",
    "Pneumothorax",
    "Support Devices",
)

RACE_GROUPS: tuple[str, ...] = (
    "Asian",
    "Black or African American",
    "Hispanic/Latino",
    "Other",
    "Unknown",
    "White",
)

_GROUP_SLUGS = {
    "Asian": "asian",
    "Black or African American": "black",
    "Hispanic/Latino": "hispanic",
    "Other": "other",
    "Unknown": "unknown",
    "White": "white",
}


def label_slug(label: str) -> str:
    """'Pleural Effusion' -> 'pleural_effusion'."""
    if label not in CHEXPERT_LABELS:
        raise ValueError(f"unknown CheXpert label {label!r}; expected one of {list(CHEXPERT_LABELS)}")
    return re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_")


def label_from_slug(slug: str) -> str:
    for label in CHEXPERT_LABELS:
        if label_slug(label) == slug:
            return label
    raise ValueError(f"unknown label slug {slug!r}")


def group_slug(group: str) -> str:
    """'Black or African American' -> 'black'."""
    try:
        return _GROUP_SLUGS[group]
    except KeyError:
        raise ValueError(f"unknown race group {group!r}; expected one of {list(RACE_GROUPS)}") from None


def group_from_slug(slug: str) -> str:
    for group, s in _GROUP_SLUGS.items():
        if s == slug:
            return group
    raise ValueError(f"unknown race group slug {slug!r}; expected one of {list(_GROUP_SLUGS.values())}")
