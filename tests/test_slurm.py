"""profiles/slurm on a real single-node Slurm cluster (scripts/slurm-local.sh) with one fake GPU.

The tiny config runs through `--profile profiles/slurm`; the checks read what Slurm itself
recorded (`scontrol show job`: partition, GPU request, memory, state) and what the jobs logged.
The cluster keeps finished jobs for an hour (MinJobAge), so every job of a run can be looked up
by its working directory. Run with `make test-slurm` (as root: the fixture starts the cluster if
it is not running). Under CI=true a cluster that cannot start fails the tests instead of skipping.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import REPO, SNAKEMAKE, TINY, snakemake

pytestmark = pytest.mark.slurm

SCRIPT = REPO / "scripts" / "slurm-local.sh"
PROFILE_DIR = REPO / "profiles" / "slurm"
PROFILE = yaml.safe_load((PROFILE_DIR / "profile.yaml").read_text())
GPU_RULES = set(PROFILE["set-resources"])
# The profile as users run it, with one timing knob lowered: the tiny jobs take seconds, and
# the profile's 20 s before the first status query would make each step of the DAG wait for it.
SLURM_ARGS = ("--profile", str(PROFILE_DIR), "--slurm-init-seconds-before-status-checks", "5")
# A value only the selection job reads, and that only fails when it runs: discard more training
# images than there are. (A config file: `--config` would pass the nested number as a string.)
BAD_SELECTION = {"overrides": {"Cardiomegaly": {"d3m": {"selection": "num_to_discard", "num_to_discard": 1000000}}}}
FALLBACK = "falling back to CPU"


@pytest.fixture(scope="session")
def slurm_cluster():
    """The local cluster: used as is when running, else started (and stopped again at the end)."""
    if subprocess.run([SCRIPT, "status"], capture_output=True).returncode == 0:
        yield
        return
    proc = subprocess.run([SCRIPT, "start"], capture_output=True, text=True)
    if proc.returncode != 0:
        msg = f"the local Slurm cluster could not be started:\n{proc.stdout}\n{proc.stderr}"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    yield
    subprocess.run([SCRIPT, "stop"], check=True)


def slurm_jobs(workdir: Path) -> list[dict[str, str]]:
    """Every job Slurm recorded for a run in `workdir`, as scontrol's KEY=VALUE fields, with the
    rule name (from the comment the executor gives each job: rule_<name>[_wildcards_<...>])."""
    out = subprocess.run(["scontrol", "show", "job", "-o"], capture_output=True, text=True, check=True).stdout
    jobs = []
    for line in out.splitlines():
        fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
        if fields.get("WorkDir") == str(workdir):
            fields["rule"] = re.sub(r"^rule_|_wildcards_.*$", "", fields["Comment"])
            jobs.append(fields)
    return jobs


def mem_mb(job: dict[str, str]) -> int:
    return int(job["MinMemoryNode"].rstrip("M"))


def results_files(workdir: Path) -> set[str]:
    return {str(p.relative_to(workdir)) for p in (workdir / "results").rglob("*") if p.is_file()}


@pytest.fixture(scope="session")
def slurm_run(slurm_cluster, tmp_path_factory, say) -> Path:
    """One complete run of the tiny config through the SLURM profile."""
    workdir = tmp_path_factory.mktemp("slurm_run")
    start = time.monotonic()
    snakemake(workdir, *SLURM_ARGS)
    say(f"\nslurm end-to-end run: {time.monotonic() - start:.0f} s, {len(slurm_jobs(workdir))} sbatch jobs")
    return workdir


def test_profile_memory_fits_the_cluster(slurm_cluster):
    """The largest mem_mb of any rule on its last retry fits the node (sbatch rejects it otherwise)."""
    last = PROFILE["retries"] + 1
    asks = [PROFILE["default-resources"]["mem_mb"]] + [r["mem_mb"] for r in PROFILE["set-resources"].values()]
    largest = max(eval(str(expr), {"attempt": last}) for expr in asks)
    node = subprocess.run(["scontrol", "show", "node", "-o"], capture_output=True, text=True, check=True).stdout
    real_memory = int(re.search(r"RealMemory=(\d+)", node).group(1))
    assert largest <= real_memory, f"profile asks up to {largest} MB on attempt {last}; the node has {real_memory} MB"


def test_gpu_rules_exist_in_the_workflow(tmp_path):
    """A renamed GPU rule would silently lose its GPU request."""
    rules = set(snakemake(tmp_path, "--list-rules").stdout.split())
    assert GPU_RULES <= rules, f"profile names rules the workflow lacks: {sorted(GPU_RULES - rules)}"
    assert GPU_RULES == set(PROFILE["set-threads"])


def test_dry_run_shows_resources(tmp_path):
    dry = snakemake(tmp_path, "-n", "--profile", str(PROFILE_DIR))
    out = dry.stdout + dry.stderr
    assert re.search(r"resources: .*mem_mb=6000.*slurm_partition=gpu.*gpu=1, cpus_per_gpu=2", out)
    assert re.search(r"resources: .*mem_mb=2000.*slurm_partition=cpu, runtime=60\n", out)


def test_every_output_and_the_report_match_a_local_run(slurm_run, tiny_run):
    assert results_files(slurm_run) == results_files(tiny_run)
    report = Path("results") / "report"
    for csv in sorted((tiny_run / report).glob("*.csv")):
        local, cluster = pd.read_csv(csv), pd.read_csv(slurm_run / report / csv.name)
        assert list(cluster.columns) == list(local.columns), csv.name
        for col in local.select_dtypes(exclude="number").columns:
            assert set(cluster[col]) == set(local[col]), f"{csv.name}: {col}"
    headings = [[line for line in (w / report / "report.md").read_text().splitlines() if line.startswith("#")]
                for w in (tiny_run, slurm_run)]
    assert headings[0] == headings[1]


def test_gpu_rules_asked_for_a_gpu_and_cpu_rules_did_not(slurm_run, say):
    jobs = slurm_jobs(slurm_run)
    assert {j["JobState"] for j in jobs} == {"COMPLETED"}
    ran = {j["rule"] for j in jobs}
    assert GPU_RULES <= ran and ran - GPU_RULES, "the run should have both kinds of job"
    for job in jobs:
        if job["rule"] in GPU_RULES:
            assert (job["Partition"], job.get("TresPerJob"), job.get("CpusPerTres")) == (
                "gpu", "gres:gpu:1", "gres:gpu:2"), job
        else:
            assert job["Partition"] == "cpu" and "TresPerJob" not in job and "gpu" not in job["TRES"], job
    for rule in ("train_base", "report"):
        job = next(j for j in jobs if j["rule"] == rule)
        say(f"{rule}: " + " ".join(f"{k}={job[k]}" for k in (
            "JobId", "Partition", "TimeLimit", "NumCPUs", "MinMemoryNode", "TRES", "TresPerJob", "CpusPerTres")
            if k in job))


def test_gpu_jobs_saw_the_fake_gpu_and_fell_back_to_cpu(slurm_run):
    """Only jobs given the (fake) GPU see CUDA_VISIBLE_DEVICES; they log the CPU fallback.

    A CPU-partition job that chooses a device (logging "using cpu") would be a model-running rule
    missing from the profile's GPU rules."""
    logs = sorted((slurm_run / "results" / "logs").rglob("*.log"))
    for log in logs:
        rule = log.relative_to(slurm_run / "results" / "logs").parts[0].removesuffix(".log")
        text = log.read_text()
        if rule in GPU_RULES:
            assert "CUDA_VISIBLE_DEVICES=0" in text and FALLBACK in text, log
        else:
            assert "CUDA_VISIBLE_DEVICES" not in text and "using cpu" not in text, log
    assert {log.relative_to(slurm_run / "results" / "logs").parts[0] for log in logs} >= GPU_RULES


def test_cancelled_job_is_retried_and_the_run_completes(slurm_run, tmp_path):
    """scancel the report job while it runs: Snakemake resubmits it (attempt 2, more memory)."""
    workdir = tmp_path / "run"
    shutil.copytree(slurm_run, workdir, symlinks=True)
    report = workdir / "results" / "report" / "report.md"
    before = report.stat().st_mtime
    cmd = [SNAKEMAKE, "-s", str(REPO / "Snakefile"), "--directory", str(workdir), "--configfile", str(TINY),
           *SLURM_ARGS, "--forcerun", "report"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    cancelled = None
    deadline = time.monotonic() + 300
    while cancelled is None and proc.poll() is None and time.monotonic() < deadline:
        running = subprocess.run(["squeue", "-h", "-t", "RUNNING", "-o", "%i|%k|%Z"],
                                 capture_output=True, text=True, check=True).stdout
        for line in running.splitlines():
            jobid, comment, jobdir = line.split("|")
            if comment.strip() == "rule_report" and jobdir == str(workdir):
                subprocess.run(["scancel", jobid], check=True)
                cancelled = jobid
        time.sleep(0.2)
    out, _ = proc.communicate(timeout=600)
    assert cancelled, f"never saw the report job running:\n{out[-4000:]}"
    assert proc.returncode == 0, out[-6000:]
    jobs = [j for j in slurm_jobs(workdir) if j["rule"] == "report"]
    assert [j["JobState"] for j in jobs] == ["CANCELLED", "COMPLETED"], jobs
    assert jobs[0]["JobId"] == cancelled
    assert mem_mb(jobs[1]) == 2 * mem_mb(jobs[0]), "the retry asks for more memory"
    assert report.stat().st_mtime > before


def test_failed_job_leaves_no_finished_output_and_rerun_completes(slurm_run, tmp_path):
    """A finished run, then a config change that makes selection fail on every attempt: its old
    output must be gone (not left looking finished), and with the cause fixed a plain rerun must
    redo selection and what follows, not say "Nothing to be done"."""
    workdir = tmp_path / "run"
    shutil.copytree(slurm_run, workdir, symlinks=True)
    bad = tmp_path / "bad_selection.yaml"
    bad.write_text(yaml.safe_dump(BAD_SELECTION))
    failed = snakemake(workdir, *SLURM_ARGS, "--configfile", str(TINY), str(bad), check=False)
    assert failed.returncode != 0
    tries = [j for j in slurm_jobs(workdir) if j["rule"] == "selection"]
    assert [j["JobState"] for j in tries] == ["FAILED"] * (PROFILE["retries"] + 1)
    assert [mem_mb(j) for j in tries] == [mem_mb(tries[0]) * a for a in range(1, len(tries) + 1)]
    # The executor keeps a failed job's Slurm log (it holds the traceback) and names it.
    assert tries[-1]["StdOut"] in failed.stdout + failed.stderr
    assert "num_to_discard must be in" in Path(tries[-1]["StdOut"]).read_text()
    d3m_files = {p.name for p in (workdir / "results" / "d3m").rglob("*") if p.is_file()}
    assert not any(name.startswith("selection") for name in d3m_files), d3m_files
    # The cause fixed (the bad override dropped): the plan redoes selection and the report, and
    # keeps the finished work before it.
    dry = snakemake(workdir, "-n", "--quiet", "rules")
    plan = dry.stdout + dry.stderr
    assert "selection" in plan and "report" in plan and "train_base" not in plan, plan
    snakemake(workdir, *SLURM_ARGS)
    assert any(p.name.startswith("selection") for p in (workdir / "results" / "d3m").rglob("*"))
    assert results_files(workdir) == results_files(slurm_run)
    dry = snakemake(workdir, "-n")
    assert "Nothing to be done" in dry.stdout + dry.stderr
