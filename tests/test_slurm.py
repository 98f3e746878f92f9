"""The SLURM profile, on a real single-node SLURM cluster started by the test.

scripts/slurm_cluster.sh installs the Debian packages when they are missing
(root only), starts munged, slurmctld and slurmd, and stops exactly those
processes afterwards. The test runs the whole default workflow on a tiny
config twice, once locally and once through workflow/profiles/slurm, checks
that every non-local job went through sbatch (SLURM job ids, SLURM's own log
files, squeue's final state) and that both runs wrote the same tables.

The dry-run test needs no cluster: it checks that the paper's config, run
through the slurm profile, asks for GPUs in trace jobs and nowhere else.
"""

from __future__ import annotations

import copy
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CLUSTER_SCRIPT = REPO / "scripts" / "slurm_cluster.sh"
SLURM_PROFILE = REPO / "workflow" / "profiles" / "slurm"
# hard limits: a run that hangs (a status command that never answers) must fail the test, not CI
RUN_TIMEOUT_S = 900

# The full default DAG, as small as it gets: one panels dataset in two shards
# (two trace jobs), one reference model trained for a few steps, short answers.
TINY_CONFIG = {
    "results": "results",
    "seed": 0,
    "datasets": {
        "panels": {"adapter": "panels", "options": {"seed": 7, "n_items": 4}, "shard_size": 2},
    },
    "models": {
        "grounded": {
            "reference": {"behaviour": "grounded", "steps": 5, "batch_size": 4, "warmup_steps": 1,
                          "stop_accuracy": None},
            "generation": {"max_new_tokens": 24},
            "batch_size": 4,
        },
    },
    "selective": {"bootstrap": 20},
    "figures": {"formats": ["png"], "dpi": 50},
    # the test cluster has no GPU and 2 cores: nothing may ask for a GPU, and memory stays small
    "resources": {
        "trace_gpus": 0,
        "trace_mem_mb": 2000,
        "trace_runtime": 20,
        "train_mem_mb": 2000,
        "train_runtime": 20,
        "default_mem_mb": 1000,
        "default_runtime": 20,
    },
}


# ---------------------------------------------------------------------------
# running snakemake with a hard kill


class Snakemake:
    """snakemake started in its own process group, killed with everything it started when it overruns."""

    def __init__(self, args: list[str], workdir: Path, env: dict):
        self.args, self.workdir = args, workdir
        cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
               *args]
        self.started = time.monotonic()
        self.proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, start_new_session=True)

    def wait(self, deadline: float) -> tuple[int, str, float]:
        """(exit status, output, seconds); fails the test at the deadline (time.monotonic())."""
        try:
            out, _ = self.proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                out, _ = self.proc.communicate(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                out, _ = self.proc.communicate()
            pytest.fail(f"snakemake {' '.join(self.args)} ran past its deadline; killed. Output:\n{out[-6000:]}")
        (self.workdir / "snakemake.out").write_text(out)
        return self.proc.returncode, out, time.monotonic() - self.started

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.communicate()


def run_snakemake(args: list[str], workdir: Path, env: dict, timeout: float = RUN_TIMEOUT_S) -> tuple[int, str]:
    code, out, _ = Snakemake(args, workdir, env).wait(time.monotonic() + timeout)
    return code, out


def base_env(**extra) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               MPLBACKEND="Agg", PYTHONHASHSEED="0", **extra)
    env.pop("SLURM_JOB_ID", None)  # if the test itself runs inside a SLURM job
    return env


# ---------------------------------------------------------------------------
# the cluster


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    """A running single-node cluster; yields the environment that points SLURM's commands at it."""
    install = subprocess.run(["bash", str(CLUSTER_SCRIPT), "install"], capture_output=True, text=True, timeout=600)
    if install.returncode == 2:
        pytest.skip(f"SLURM packages cannot be installed here: {install.stderr.strip()[-500:]}")
    assert install.returncode == 0, f"installing SLURM failed:\n{install.stderr[-3000:]}"
    state = tmp_path_factory.mktemp("slurm-cluster")
    started = time.monotonic()
    start = subprocess.run(["bash", str(CLUSTER_SCRIPT), "start", str(state)], capture_output=True, text=True,
                           timeout=120)
    assert start.returncode == 0, f"starting the cluster failed:\n{start.stderr[-3000:]}\n" + "\n".join(
        f"--- {p.name}\n{p.read_text()[-1500:]}" for p in sorted((state / "log").glob("*")) if p.is_file())
    print(f"cluster up in {time.monotonic() - started:.1f} s")
    pids = recorded_pids(state)
    assert set(pids) >= {"slurmctld", "slurmd"}, pids
    try:
        yield {"state": state, "env": base_env(SLURM_CONF=str(state / "slurm.conf"))}
    finally:
        stop = subprocess.run(["bash", str(CLUSTER_SCRIPT), "stop", str(state)], capture_output=True, text=True,
                              timeout=120)
        assert stop.returncode == 0, stop.stderr
        # the processes it started are gone
        for name, pid in pids.items():
            comm = Path(f"/proc/{pid}/comm")
            assert not (comm.exists() and comm.read_text().strip() == name), f"{name} ({pid}) still runs"


def recorded_pids(state: Path) -> dict[str, int]:
    return {name: int(pid) for name, pid in (line.split() for line in (state / "pids").read_text().splitlines())}


# ---------------------------------------------------------------------------
# comparing two results folders


def result_files(results: Path) -> dict[str, Path]:
    """Files of a results folder by relative path; a Zarr store counts as one entry; logs are left out."""
    files = {}
    for path in sorted(results.rglob("*")):
        rel = path.relative_to(results)
        if rel.parts[0] in ("logs", "benchmarks") or any(p.endswith(".zarr") for p in rel.parts[:-1]):
            continue
        if path.is_file() or path.suffix == ".zarr":
            files[str(rel)] = path
    return files


_VOLATILE_TEXT = re.compile(r"^(Date|Time):.*$", re.MULTILINE)  # statsmodels summaries carry the clock
_VOLATILE_KEYS = {"seconds", "data_seconds"}  # wall-clock durations (reference/<m>/training.json)


def _without_volatile(value):
    if isinstance(value, dict):
        return {k: _without_volatile(v) for k, v in value.items() if k not in _VOLATILE_KEYS}
    if isinstance(value, list):
        return [_without_volatile(v) for v in value]
    return value


def assert_same_content(rel: str, a: Path, b: Path) -> None:
    if rel.endswith(".parquet"):
        import pyarrow.parquet as pq

        left, right = pq.read_table(a), pq.read_table(b)
        assert left.schema.equals(right.schema, check_metadata=False), f"{rel}: schemas differ"
        assert left.equals(right), f"{rel}: table contents differ between the local and the SLURM run"
    elif rel.endswith(".zarr"):
        import xarray as xr

        with xr.open_zarr(a) as left, xr.open_zarr(b) as right:
            xr.testing.assert_equal(left, right)
    elif rel.endswith(".json"):
        left, right = (_without_volatile(json.loads(p.read_text())) for p in (a, b))
        assert left == right, f"{rel}: differs between the local and the SLURM run"
    elif rel.endswith(".txt"):
        left, right = (_VOLATILE_TEXT.sub("", p.read_text()) for p in (a, b))
        assert left == right, f"{rel}: text differs between the local and the SLURM run"
    elif not rel.endswith(".pdf"):  # PDFs carry their creation date
        assert a.read_bytes() == b.read_bytes(), f"{rel}: bytes differ between the local and the SLURM run"


# ---------------------------------------------------------------------------
# the test


_SUBMITTED = re.compile(r"Job (\d+) has been submitted with SLURM jobid (\d+) \(log: (\S+?)\)\.?$", re.MULTILINE)
_REMOTE_RULE = re.compile(r"^rule (\w+):$", re.MULTILINE)
_LOCAL_RULE = re.compile(r"^localrule (\w+):$", re.MULTILINE)


@pytest.mark.cluster
@pytest.mark.slow
def test_workflow_through_slurm_profile_matches_local_run(slurm_cluster, tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY_CONFIG, sort_keys=False))

    local, cluster = tmp_path / "local", tmp_path / "cluster"
    local.mkdir()
    cluster.mkdir()
    # side by side: the SLURM run spends much of its time waiting between status checks
    deadline = time.monotonic() + RUN_TIMEOUT_S
    local_run = Snakemake(["--configfile", str(config), "--cores", "2"], local, base_env())
    # a short first status check: the tiny jobs finish in seconds (the profile's 10 s suits real clusters)
    slurm_run = Snakemake(["--configfile", str(config), "--profile", str(SLURM_PROFILE),
                           "--slurm-init-seconds-before-status-checks", "2"], cluster, slurm_cluster["env"])
    try:
        code, out, local_s = local_run.wait(deadline)
        assert code == 0, f"local run failed:\n{out[-6000:]}"
        code, out, slurm_s = slurm_run.wait(deadline)
        assert code == 0, f"SLURM run failed:\n{out[-6000:]}"
    finally:
        local_run.kill()
        slurm_run.kill()
    print(f"local run {local_s:.0f} s, SLURM run {slurm_s:.0f} s (side by side)")

    # every job that was not a local rule went through sbatch, and SLURM ran it
    remote_rules = _REMOTE_RULE.findall(out)
    submitted = _SUBMITTED.findall(out)
    assert "traces" in remote_rules and "train_reference" in remote_rules, sorted(set(remote_rules))
    assert len(submitted) == len(remote_rules), f"{len(remote_rules)} remote jobs, {len(submitted)} submitted"
    slurm_ids = [int(slurm_id) for _, slurm_id, _ in submitted]
    assert len(set(slurm_ids)) == len(slurm_ids)
    assert len([r for r in remote_rules if r == "traces"]) == 2  # one job per shard
    assert len([r for r in remote_rules if r == "generate"]) == 2  # ... and one to generate it
    for _, slurm_id, log in submitted:
        log = Path(log)
        # SLURM itself wrote this file (sbatch --output=.../%j.log), named by the job id
        assert log.is_file() and log.stem == slurm_id, log
        assert log.resolve().is_relative_to((cluster / ".snakemake" / "slurm_logs").resolve())
        assert "Finished jobid" in log.read_text(), log.read_text()[-2000:]
    states = subprocess.run(["squeue", "--states=all", "--noheader", "--format=%i|%T"], capture_output=True,
                            text=True, env=slurm_cluster["env"], check=True).stdout
    final = dict(line.split("|") for line in states.split())
    assert all(final.get(str(i)) == "COMPLETED" for i in slurm_ids), {i: final.get(str(i)) for i in slurm_ids}
    # local rules (bookkeeping) did not go through SLURM
    assert not set(_LOCAL_RULE.findall(out)) & set(remote_rules)

    # same tables as the local run
    local_files = result_files(local / "results")
    cluster_files = result_files(cluster / "results")
    assert local_files, "the local run wrote nothing"
    assert sorted(local_files) == sorted(cluster_files)
    for rel in local_files:
        assert_same_content(rel, local_files[rel], cluster_files[rel])

    # the cluster is the one the script started, still up after the run
    for name, pid in recorded_pids(slurm_cluster["state"]).items():
        assert Path(f"/proc/{pid}/comm").read_text().strip() == name


# ---------------------------------------------------------------------------
# dry run of the paper's config: GPU requests only in trace jobs

_JOB_HEADER = re.compile(r"^(?:local)?rule (\w+):$")


def dry_run_jobs(output: str) -> list[tuple[str, dict[str, str]]]:
    """(rule, resources) of every job a dry run lists."""
    jobs: list[tuple[str, dict[str, str]]] = []
    for line in output.splitlines():
        header = _JOB_HEADER.match(line)
        if header:
            jobs.append((header.group(1), {}))
        elif jobs and line.strip().startswith("resources:"):
            for item in line.split(":", 1)[1].split(", "):
                key, _, value = item.strip().partition("=")
                jobs[-1][1][key] = value
    return jobs


def asks_for_gpu(resources: dict[str, str]) -> bool:
    gpu = resources.get("gpu", "0")
    return (gpu.isdigit() and int(gpu) > 0) or "gpu" in resources.get("gres", "") or bool(resources.get("gpu_model"))


def test_paper_config_dry_run_asks_for_gpus_in_trace_jobs_only(tmp_path):
    from fixtures import benchmarks as fx

    paper = yaml.safe_load((REPO / "configs" / "paper.yaml").read_text())
    config = copy.deepcopy(paper)
    for name, options in fx.write_all(tmp_path / "data").items():
        config["datasets"][name]["options"].update(options)
    (tmp_path / "paper.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

    from fixtures.workflow import hub_cache, hub_models

    cache = hub_cache(tmp_path / "hub", *hub_models(paper))
    code, out = run_snakemake(["-n", "--profile", str(SLURM_PROFILE), "--configfile", str(tmp_path / "paper.yaml")],
                              tmp_path, base_env(HF_HUB_CACHE=str(cache)), timeout=300)
    assert code == 0, out[-6000:]
    jobs = dry_run_jobs(out)
    assert jobs, out[-3000:]
    with_gpu = {rule for rule, res in jobs if asks_for_gpu(res)}
    assert with_gpu == {"generate", "traces", "boxes"}  # the model jobs: generating, replaying, making boxes
    traces = [res for rule, res in jobs if rule in ("generate", "traces")]
    # every trace job asks for the model's GPU (the paper's models: one each), memory and time
    assert traces and all(res["gpu"] == "1" and int(res["mem_mb"]) >= 64000 and int(res["runtime"]) >= 720
                          for res in traces), traces
    n_models = len(paper["models"])
    assert len({rule for rule, _ in jobs}) > 1
    assert len(traces) >= 2 * n_models * len(paper["datasets"])
