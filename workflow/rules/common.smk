# Helpers shared by all rules: config validation, paths, and per-label settings.
# Params are computed per wildcard from here so that a config change only reaches the jobs
# that actually use the changed value (Snakemake's params rerun trigger).
import copy
from pathlib import Path

import pandas as pd
from snakemake.utils import validate

from d3mflow.controls import METHODS as ALL_METHODS
from d3mflow.names import CHEXPERT_LABELS, group_from_slug, group_slug, label_from_slug, label_slug

# The schema's message for a misspelled label ("... is not valid under any of the given
# schemas") names neither the label nor the choices, so labels are checked first.
if isinstance(config.get("labels"), list):
    for configured in config["labels"]:
        if configured not in CHEXPERT_LABELS:
            raise ValueError(
                f"config key labels: unknown label {configured!r}; expected 'auto' or a list of "
                f"CheXpert labels: {list(CHEXPERT_LABELS)}"
            )
validate(config, schema="../schemas/config.schema.yaml")

R = config["results"]
# labels: auto ranks all 14 labels (checkpoint rank_labels) and runs the top k; every label is
# then a candidate, so settings are checked for all of them.
AUTO_LABELS = config["labels"] == "auto"
LABELS = [label_slug(label) for label in (CHEXPERT_LABELS if AUTO_LABELS else config["labels"])]
GROUPS = [group_slug(group) for group in config["groups"]]
METHODS = config["evaluation"]["methods"]
SEEDS = config["seeds"]
DEMO = config["data"]["source"] == "demo"


wildcard_constraints:
    label="|".join(label_slug(label) for label in CHEXPERT_LABELS),
    group="|".join(group_slug(g) for g in ("Asian", "Black or African American", "Hispanic/Latino", "Other", "Unknown", "White")),
    method="|".join(ALL_METHODS),
    m=r"\d+",
    seed=r"\d+",


def _merge(base, override):
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def settings(label):
    """The settings of one label (a slug): `defaults` with `overrides.<Label>` merged over it."""
    return _merge(config["defaults"], config.get("overrides", {}).get(label_from_slug(label), {}))


def _check_settings():
    for label in LABELS:
        s = settings(label)
        where = f"label {label_from_slug(label)!r} (config keys defaults / overrides)"
        if s["d3m"]["selection"] == "num_to_discard" and s["d3m"].get("num_to_discard") is None:
            raise ValueError(f"{where}: d3m.selection is num_to_discard but d3m.num_to_discard is not set")
        trak = s["trak"]
        if trak["model_source"] == "base_checkpoints" and trak["num_models"] > s["train"]["base_epochs"]:
            raise ValueError(
                f"{where}: trak.num_models ({trak['num_models']}) exceeds train.base_epochs "
                f"({s['train']['base_epochs']}), so there are not enough base checkpoints"
            )
    if not DEMO:
        for key in ("mimic_cxr_jpg", "mimic_iv"):
            if not config["data"].get(key):
                raise ValueError(f"data.source is mimic but data.{key} is not set")


_check_settings()


def setting(*keys):
    """A params function returning settings(label)[keys...] for the job's label."""

    def lookup(wildcards):
        value = settings(wildcards.label)
        for key in keys:
            value = value[key]
        return value

    return lookup


def train_cfg(epochs_key):
    """Params function: the TrainConfig fields of a label and seed, with the given epoch count."""

    def lookup(wildcards):
        t = settings(wildcards.label)["train"]
        return dict(
            epochs=t[epochs_key], batch_size=t["batch_size"], lr=t["lr"], momentum=t["momentum"],
            weight_decay=t["weight_decay"], seed=int(wildcards.seed),
        )

    return lookup


def label_name(wildcards):
    return label_from_slug(wildcards.label)


def group_name(wildcards):
    return group_from_slug(wildcards.group)


# Inputs: the demo cohort is a rule output; real MIMIC files are plain existing inputs.
CXR_ROOT = f"{R}/demo/mimic-cxr-jpg" if DEMO else config["data"]["mimic_cxr_jpg"]
IV_ROOT = f"{R}/demo/mimiciv" if DEMO else config["data"]["mimic_iv"]


def mimic_admissions():
    """MIMIC-IV v2+/v3 keep admissions under hosp/, v1.0 under core/."""
    hosp = f"{IV_ROOT}/hosp/admissions.csv.gz"
    core = f"{IV_ROOT}/core/admissions.csv.gz"
    return core if not DEMO and not Path(hosp).exists() and Path(core).exists() else hosp


def mimic_inputs():
    labeler = config["cohort"]["labeler"]
    return dict(
        metadata=f"{CXR_ROOT}/mimic-cxr-2.0.0-metadata.csv.gz",
        labels=f"{CXR_ROOT}/mimic-cxr-2.0.0-{labeler}.csv.gz",
        split=f"{CXR_ROOT}/mimic-cxr-2.0.0-split.csv.gz",
        admissions=mimic_admissions(),
        files=f"{CXR_ROOT}/files",
    )


def group_members(group="{group}"):
    return f"{R}/cohort/groups/{group}.parquet"


def task(label="{label}"):
    return f"{R}/cohort/tasks/{label}.parquet"


COHORT = f"{R}/cohort/images.parquet"
IMAGE_CACHE = f"{R}/images/cache.npy"
IMAGE_INDEX = f"{R}/images/cache_index.parquet"


def model_cfg():
    m = config["model"]
    return dict(arch=m["arch"], width=m["width"], pretrained=m["pretrained"], weights_path=m["weights_path"])


def trak_models(wildcards):
    return range(settings(wildcards.label)["trak"]["num_models"])


def feature_files(kind):
    """Input function: the `kind` array of every TRAK model of the job's label."""

    def files(wildcards):
        return [f"{R}/trak/{wildcards.label}/s{wildcards.seed}/features/m{m}/{kind}.npy" for m in trak_models(wildcards)]

    return files


def run_labels():
    """Slugs of the labels the per-label DAG runs on: the configured list, or with
    ``labels: auto`` the top ``auto_labels_k`` of the rank_labels checkpoint (only callable
    from an input function then, as the ranking exists only after the checkpoint ran)."""
    if not AUTO_LABELS:
        return LABELS
    # Imported here, not at the top: scikit-learn would slow down parsing every plan.
    from d3mflow.evaluation import top_labels

    ranking = pd.read_csv(checkpoints.rank_labels.get().output.ranking)
    return [label_slug(label) for label in top_labels(ranking, config["auto_labels_k"])]


def per_label(pattern, **wildcards):
    """Input function: ``pattern`` expanded over run_labels() (wildcard ``label``) and the
    other ``wildcards`` lists, e.g. per_label(COMPARISON) or per_label(METRICS, seed=SEEDS,
    method=METHODS). Deferred, so it also works with ``labels: auto``."""

    def files(_wildcards):
        return expand(pattern, label=run_labels(), **wildcards)

    return files


COMPARISON = f"{R}/eval/{{label}}/comparison.csv"
METRICS = f"{R}/eval/{{label}}/s{{seed}}/{{method}}/accuracy_by_group.csv"


def report_outputs():
    return [
        f"{R}/report/report.md",
        f"{R}/report/summary.html",
        f"{R}/report/accuracy_by_group.csv",
        f"{R}/report/wga.csv",
        f"{R}/report/removed_by_group.csv",
        f"{R}/report/detection.csv",
    ]
