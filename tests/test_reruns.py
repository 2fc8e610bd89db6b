"""Partial reruns: after a complete run, each config change replans exactly the jobs it touches.

Each test calls the real `snakemake` CLI on a complete run of tests/config/tiny.yaml +
tiny2.yaml (two labels, five race groups in the D3M objective) and compares the planned jobs,
as (rule, wildcards) pairs parsed from `snakemake -n`, with an exact expectation.

Expectations are written as "these root jobs and everything downstream of them in the job
DAG" (the DAG read from `snakemake -n --forceall`, whose input/output lines give the edges),
plus explicit checks that the expensive upstream jobs (base training, TRAK models and
features) are absent. So they stay exact, and valid, when rules or methods are added
downstream (more methods, more report rules): a new rule that depends on a changed job is
expected to rerun, one that does not is not.

Tests that execute jobs work on a copy of the complete run, so the order does not matter.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import REPO, TINY, snakemake
from d3mflow.names import group_slug, label_slug

pytestmark = pytest.mark.reruns

TINY2 = REPO / "tests" / "config" / "tiny2.yaml"

# Jobs that cost GPU hours on MIMIC: a config change that does not concern them must never
# replan them.
EXPENSIVE = {"train_base", "trak_model", "trak_features"}


def _merged_config() -> dict:
    def merge(base, over):
        out = dict(base)
        for key, value in over.items():
            out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        return out

    config = {}
    for path in (REPO / "config" / "config.yaml", TINY, TINY2):
        config = merge(config, yaml.safe_load(path.read_text()) or {})
    return config


CONFIG = _merged_config()
LABELS = [label_slug(label) for label in CONFIG["labels"]]
GROUPS = [group_slug(group) for group in CONFIG["groups"]]
SEEDS = [str(seed) for seed in CONFIG["seeds"]]
METHODS = list(CONFIG["evaluation"]["methods"])
CHANGED, OTHER = LABELS  # the label a per-label change is made to, and the one it must leave alone
assert len(LABELS) == 2 and len(GROUPS) == 5, "tiny2.yaml must have two labels and five groups"
NEW_GROUP = "Unknown"  # the sixth group, added in test_adding_a_group
assert group_slug(NEW_GROUP) not in GROUPS


# --------------------------------------------------------------------------------------------
# Plans: (rule, wildcards) pairs from snakemake's job blocks


def job(rule: str, **wildcards) -> tuple:
    """A job as it appears in a plan: its rule and its wildcards (values as strings)."""
    return (rule, tuple(sorted((k, str(v)) for k, v in wildcards.items())))


def wc(j: tuple) -> dict:
    return dict(j[1])


_HEADER = re.compile(r"^(?:local)?(?:rule|checkpoint) (\w+):\s*$")
_FIELD = re.compile(r"^\s+(input|output|wildcards|reason): (.*)$")


def parse_jobs(text: str) -> dict:
    """{job: {"input": [...], "output": [...], "reason": "..."}} for every job block ("rule x:" / "localrule x:"
    followed by indented fields) in snakemake output: a dry run, a real run, or --forceall."""
    jobs, rule, fields = {}, None, {}

    def close():
        if rule is not None and rule != "all":
            wildcards = dict(kv.split("=", 1) for kv in fields.get("wildcards", "").split(", ") if kv)
            jobs[job(rule, **wildcards)] = {
                **{key: [p for p in fields.get(key, "").split(", ") if p] for key in ("input", "output")},
                "reason": fields.get("reason", ""),
            }

    for line in text.splitlines():
        header = _HEADER.match(line)
        if header:
            close()
            rule, fields = header.group(1), {}
        elif rule is not None:
            field = _FIELD.match(line)
            if field:
                fields[field.group(1)] = field.group(2).strip()
            elif line and not line[0].isspace():
                close()
                rule, fields = None, {}
    close()
    return jobs


def configs(workdir: Path, extra: dict | None) -> list[str]:
    files = [str(TINY), str(TINY2)]
    if extra is not None:
        path = workdir / "change.yaml"
        path.write_text(yaml.safe_dump(extra))
        files.append(str(path))
    return ["--configfile", *files]


def smk(workdir: Path, *args: str, extra: dict | None = None, check: bool = True):
    return snakemake(workdir, *configs(workdir, extra), *args, check=check)


def planned_jobs(workdir: Path, *args: str, extra: dict | None = None) -> dict:
    """The jobs `snakemake -n` plans, with their input, output and reason."""
    proc = smk(workdir, "-n", *args, extra=extra)
    out = proc.stdout + proc.stderr
    jobs = parse_jobs(out)
    if not jobs:
        assert "Nothing to be done" in out, out[-3000:]
    return jobs


def plan(workdir: Path, *args: str, extra: dict | None = None) -> set:
    return set(planned_jobs(workdir, *args, extra=extra))


def params_changed(jobs: dict) -> set:
    """The jobs a config change reruns directly: their own evaluated params changed."""
    return {j for j, io in jobs.items() if "Params have changed" in io["reason"]}


def dag(workdir: Path, extra: dict | None = None) -> dict:
    """The full job DAG of the (changed) config: every job with its input and output files."""
    proc = smk(workdir, "-n", "--forceall", extra=extra)
    return parse_jobs(proc.stdout + proc.stderr)


def downstream(jobs: dict, roots: set) -> set:
    """`roots` and every job of the DAG `jobs` that consumes, directly or not, their outputs."""
    assert roots <= set(jobs), f"roots not in the DAG:\n{show(roots - set(jobs))}"
    producer = {path: j for j, io in jobs.items() for path in io["output"]}
    consumers: dict = {}
    for j, io in jobs.items():
        for path in io["input"]:
            if path in producer:
                consumers.setdefault(producer[path], set()).add(j)
    seen, todo = set(roots), list(roots)
    while todo:
        for nxt in consumers.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def consumers_of(jobs: dict, path: str) -> set:
    return {j for j, io in jobs.items() if path in io["input"]}


def rules_of(jobs: set) -> set:
    return {j[0] for j in jobs}


def show(jobs: set) -> str:
    return "\n".join(f"  {r} {dict(w)}" for r, w in sorted(jobs))


def per_rule(jobs: set) -> str:
    """A plan in one line, jobs counted per rule: what the CI log shows for each change."""
    counts: dict = {}
    for rule, _ in jobs:
        counts[rule] = counts.get(rule, 0) + 1
    return f"{len(jobs)} jobs: " + (", ".join(f"{r} x{n}" for r, n in sorted(counts.items())) or "nothing")


def assert_same(planned: set, expected: set):
    assert planned == expected, (
        f"planned but not expected:\n{show(planned - expected)}\nexpected but not planned:\n{show(expected - planned)}"
    )


# --------------------------------------------------------------------------------------------
# One complete run (two labels, five groups), shared by this module; mutating tests copy it


@pytest.fixture(scope="module")
def done(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("reruns")
    smk(workdir, "--cores", "2")
    return workdir


@pytest.fixture
def copy(done, tmp_path) -> Path:
    """A copy of the complete run (mtimes and .snakemake metadata kept) that a test may change."""
    target = tmp_path / "run"
    shutil.copytree(done, target, symlinks=True)
    return target


# --------------------------------------------------------------------------------------------
# a. no change


def test_a_no_change_nothing_to_do(done, say):
    proc = smk(done, "-n")
    say(f"\nrerun a (no change): {per_rule(set(parse_jobs(proc.stdout + proc.stderr)))}")
    assert "Nothing to be done" in proc.stdout + proc.stderr
    assert parse_jobs(proc.stdout + proc.stderr) == {}


def test_a_settings_nobody_uses_rerun_nothing(done):
    """The random split's settings under the official split, and another label's override."""
    assert CONFIG["cohort"]["split"] == "official"
    assert plan(done, extra={"cohort": {"split_fractions": [0.4, 0.3, 0.3], "split_seed": 7}}) == set()
    assert plan(done, extra={"overrides": {"Edema": {"d3m": {"beta": 5.0}}}}) == set()


# --------------------------------------------------------------------------------------------
# b. one label's training setting


def test_b_one_labels_training_setting(done, say):
    change = {"overrides": {CONFIG["labels"][0]: {"train": {"finetune_epochs": 2}}}}
    jobs = planned_jobs(done, extra=change)
    planned, roots = set(jobs), params_changed(jobs)
    say(f"\nrerun b (one label's finetune_epochs): {per_rule(planned)}")
    # Every method's continued training of that label reads finetune_epochs, nothing else does.
    assert {j for j in planned if j[0] == "finetune"} == {
        job("finetune", label=CHANGED, seed=s, method=m) for s in SEEDS for m in METHODS}
    assert {j[0] for j in roots} == {"finetune"}
    assert_same(planned, downstream(dag(done, change), roots))
    assert not any(wc(j).get("label") == OTHER for j in planned), "the other label must not rerun"
    assert not rules_of(planned) & (EXPENSIVE | {"group_attribution", "alignment", "selection"})
    assert "report" in rules_of(planned)


# --------------------------------------------------------------------------------------------
# c. beta, the weighting, the selection rule: D3M's cheap tail only


@pytest.mark.parametrize(
    "d3m, first",
    [
        ({"beta": 2.0}, "alignment"),
        ({"weighting": "linear"}, "alignment"),
        ({"selection": "num_to_discard", "num_to_discard": 10}, "selection"),
    ],
    ids=["beta", "weighting", "selection"],
)
def test_c_d3m_settings_rerun_only_the_d3m_tail(done, d3m, first, say):
    change = {"overrides": {CONFIG["labels"][0]: {"d3m": d3m}}}
    jobs = planned_jobs(done, extra=change)
    planned, roots = set(jobs), params_changed(jobs)
    say(f"\nrerun c (one label's d3m {d3m}): {per_rule(planned)}")
    # The jobs that read the setting (alignment or selection; other D3M-family rules that take
    # it, like auto_d3m, may join), of the changed label only; then exactly their downstream.
    assert {job(first, label=CHANGED, seed=s) for s in SEEDS} <= roots
    assert all(wc(j).get("label") == CHANGED for j in roots)
    assert_same(planned, downstream(dag(done, change), roots))
    # What the issue names, spelled out:
    for s in SEEDS:
        named = {job("selection", label=CHANGED, seed=s), job("finetune", label=CHANGED, seed=s, method="d3m"),
                 job("predict_test", label=CHANGED, seed=s, method="d3m"), job("metrics", label=CHANGED, seed=s, method="d3m")}
        if first == "alignment":
            named.add(job("alignment", label=CHANGED, seed=s))
        assert named <= planned
        assert job("finetune", label=CHANGED, seed=s, method="erm") not in planned
    assert "report" in rules_of(planned)
    assert not rules_of(planned) & (EXPENSIVE | {"group_attribution", "predict_base", "task", "cohort"})
    assert not any(wc(j).get("label") == OTHER for j in planned)


# --------------------------------------------------------------------------------------------
# d. the race groups of the D3M objective


def test_d_adding_a_group(done, say):
    change = {"groups": [*CONFIG["groups"], NEW_GROUP]}
    planned = plan(done, extra=change)
    say(f"\nrerun d (group {NEW_GROUP} added): {per_rule(planned)}")
    new = group_slug(NEW_GROUP)
    roots = {job("group_members", group=new)}
    assert_same(planned, downstream(dag(done, change), roots))
    tau = {j for j in planned if j[0] == "group_attribution"}
    assert tau == {job("group_attribution", label=l, seed=s, group=new) for l in LABELS for s in SEEDS}
    assert not rules_of(planned) & (EXPENSIVE | {"race", "cohort", "image_table", "task", "predict_base"})


# PORTUGUESE is in Other by default (config/README.md); the remap moves it to Hispanic/Latino.
REMAP = {"cohort": {"race_map": {"PORTUGUESE": "Hispanic/Latino"}}}
REMAPPED = {group_slug("Other"), group_slug("Hispanic/Latino")}


def test_d_race_remap_reruns_only_the_changed_groups_tau(copy, say):
    """The documented two-phase rerun (README "Partial reruns"): `--until group_members`
    rewrites the membership files, then a normal run skips the tau jobs of groups whose
    membership bytes did not change (Snakemake >= 9.18 compares inputs <= 1 MB by checksum)."""
    race = pd.read_parquet(copy / "results" / "cohort" / "race.parquet")
    assert (race["race_raw"] == "PORTUGUESE").any(), "the demo cohort must contain the remapped string"
    before = {g: (copy / "results" / "cohort" / "groups" / f"{g}.parquet").read_bytes() for g in GROUPS}
    tau_mtime = {(l, s, g): (copy / "results" / "d3m" / l / f"s{s}" / "tau" / f"{g}.parquet").stat().st_mtime_ns
                 for l in LABELS for s in SEEDS for g in GROUPS}

    # A plain dry run cannot know which membership files will keep their bytes: it lists every
    # tau job, but nothing upstream of the attribution features.
    planned = plan(copy, extra=REMAP)
    say(f"\nrerun d (race remap, one-step plan): {per_rule(planned)}")
    upstream = {job("race"), job("cohort"), *(job("group_members", group=g) for g in GROUPS)}
    assert upstream <= planned
    assert not rules_of(planned) & (EXPENSIVE | {"image_table", "task", "image_cache", "predict_base", "demo_cohort"})

    # Phase 1: only the cohort side.
    proc = smk(copy, "--cores", "2", "--until", "group_members", extra=REMAP)
    assert_same(set(parse_jobs(proc.stdout + proc.stderr)), upstream)
    after = {g: (copy / "results" / "cohort" / "groups" / f"{g}.parquet").read_bytes() for g in GROUPS}
    assert {g for g in GROUPS if before[g] != after[g]} == REMAPPED

    # Phase 2: the plan is now exact.
    roots = {job("group_attribution", label=l, seed=s, group=g) for l in LABELS for s in SEEDS for g in REMAPPED}
    jobs = dag(copy, REMAP)
    # ... and every job that reads the cohort table itself (its race column changed).
    cohort_readers = consumers_of(jobs, "results/cohort/images.parquet") - upstream
    expected = downstream(jobs, roots | cohort_readers)
    planned = plan(copy, extra=REMAP)
    say(f"rerun d (race remap, after --until group_members): {per_rule(planned)}")
    assert_same(planned, expected)

    proc = smk(copy, "--cores", "2", extra=REMAP)
    ran = set(parse_jobs(proc.stdout + proc.stderr))
    assert_same(ran, expected)
    for (l, s, g), mtime in tau_mtime.items():
        now = (copy / "results" / "d3m" / l / f"s{s}" / "tau" / f"{g}.parquet").stat().st_mtime_ns
        assert (now != mtime) == (g in REMAPPED), (l, s, g)
    assert plan(copy, extra=REMAP) == set()


# --------------------------------------------------------------------------------------------
# e. one more TRAK model


def test_e_one_more_trak_model(done, say):
    m = CONFIG["defaults"]["trak"]["num_models"]
    change = {"overrides": {CONFIG["labels"][0]: {"trak": {"num_models": m + 1}}}}
    planned = plan(done, extra=change)
    say(f"\nrerun e (one label's num_models {m} -> {m + 1}): {per_rule(planned)}")
    roots = {job("trak_model", label=CHANGED, seed=s, m=m) for s in SEEDS}
    assert_same(planned, downstream(dag(done, change), roots))
    assert {j for j in planned if j[0] in EXPENSIVE} == {
        *roots, *(job("trak_features", label=CHANGED, seed=s, m=m) for s in SEEDS)}
    assert not any(wc(j).get("label") == OTHER for j in planned)


# --------------------------------------------------------------------------------------------
# f. a deleted intermediate output, and the failed-rerun trap


def missing_outputs(workdir: Path) -> set:
    """Outputs that `snakemake --summary` reports as missing."""
    proc = smk(workdir, "--summary")
    rows = [line.split("\t") for line in proc.stdout.splitlines()[1:] if line.strip()]
    return {row[0] for row in rows if len(row) > 4 and row[4] == "missing"}


def test_f_deleted_intermediate_output(copy, say):
    """Snakemake 9 does not rebuild a missing intermediate file whose consumers are up to date:
    `-n` says "Nothing to be done". `--summary` shows it as missing, and `-R <file>` replans
    exactly that job and its dependents (README "Partial reruns")."""
    label_dir = f"results/d3m/{CHANGED}/s{SEEDS[0]}"
    deleted = f"{label_dir}/alignment.parquet"
    (copy / deleted).unlink()
    assert plan(copy) == set()
    assert missing_outputs(copy) == {deleted}
    planned = plan(copy, "-R", deleted)
    say(f"\nrerun f (alignment.parquet deleted, -R it): {per_rule(planned)}")
    assert_same(planned, downstream(dag(copy), {job("alignment", label=CHANGED, seed=SEEDS[0])}))
    assert not rules_of(planned) & (EXPENSIVE | {"group_attribution"})


def test_f_failed_rerun_trap(copy):
    """A changed setting reruns selection; the job fails and Snakemake deletes its old output
    (recording the failed attempt's params). Run again with the SAME config, `snakemake -n`
    plans neither it nor its consumers ("Nothing to be done" when nothing else reads the
    setting): the failure is hidden and selection.parquet is gone. `--summary` shows it
    missing; naming the missing files as targets reruns them (and shows the error again)."""
    selection = f"results/d3m/{CHANGED}/s{SEEDS[0]}/selection.parquet"
    finetuned = copy / f"results/models/{CHANGED}/s{SEEDS[0]}/d3m.pt"
    finetuned_mtime = finetuned.stat().st_mtime_ns
    bad = {"overrides": {CONFIG["labels"][0]: {"d3m": {"selection": "num_to_discard", "num_to_discard": 10**9}}}}
    log = copy / "results" / "logs" / "selection" / f"{CHANGED}.s{SEEDS[0]}.log"
    proc = smk(copy, "--cores", "2", selection, extra=bad, check=False)
    assert proc.returncode != 0 and "num_to_discard" in proc.stdout + proc.stderr + log.read_text()
    assert not (copy / selection).exists(), "snakemake removes the output of a failed job"

    # The trap: the same config again plans neither the failed job nor its consumers (jobs of
    # other rules that read the changed setting themselves may still be planned).
    planned = plan(copy, extra=bad)
    assert not any(j[0] == "selection" or j == job("finetune", label=CHANGED, seed=SEEDS[0], method="d3m") for j in planned)
    missing = missing_outputs(copy)
    assert missing == {selection}
    proc = smk(copy, "--cores", "2", *sorted(missing), extra=bad, check=False)
    assert proc.returncode != 0, "naming the missing file brings the failure back"

    # Back on the good config: rebuild the missing file first; its bytes are the old ones, so
    # (checksum comparison) nothing downstream reruns.
    proc = smk(copy, "--cores", "2", *sorted(missing))
    assert set(parse_jobs(proc.stdout + proc.stderr)) == {job("selection", label=CHANGED, seed=SEEDS[0])}
    assert missing_outputs(copy) == set()
    assert plan(copy) == set()
    assert finetuned.stat().st_mtime_ns == finetuned_mtime
