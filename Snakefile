# d3mflow: D3M data debiasing of chest X-ray classifiers across race groups.
# Plan: snakemake -n    Run: snakemake --cores 2 (or make run)    Cluster: --profile profiles/slurm
import os

from snakemake.utils import min_version

min_version("9.0")


configfile: os.path.join(workflow.basedir, "config", "config.yaml")


# Landing page of `snakemake --report`: embeds results/report/summary.html.
report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/attribution.smk"
include: "workflow/rules/d3m.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        report_outputs(),
