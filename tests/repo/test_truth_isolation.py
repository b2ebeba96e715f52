"""Truth isolation, enforced by the repository: a processing run is never raw or truth, and a stage's butler
never resolves a dataset from the truth run (only validation reads it)."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.table import Table
from astropy.wcs import WCS

from twinkles.cli import main
from twinkles.image import Exposure, VisitInfo
from twinkles.repo import (DatasetNotFoundError, QuantumButler, Repository, TruthIsolationError,
                           validate_processing_run)


@pytest.fixture()
def repo(tmp_path):
    repo = Repository.create(tmp_path / "repo", {"field": {"ra_deg": 53.0091, "dec_deg": -27.4389}})
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [53.0091, -27.4389]
    w.wcs.crpix = [32.5, 32.5]
    w.wcs.cd = np.array([[-0.2, 0.0], [0.0, 0.2]]) / 3600.0
    image = np.random.default_rng(0).normal(100.0, 10.0, (64, 64))
    repo.put(Exposure(image, None, image + 25.0, w, visit_info=VisitInfo(840, "r", 60000.25)), "eimage",
             {"visit": 840, "detector": 0})
    repo.put(Table({"id": [1, 2], "ra": [53.0, 53.01], "dec": [-27.4, -27.41]}), "truth_catalog", run="truth")
    return repo


@pytest.mark.parametrize("run", ["raw", "truth", "truth/l2", "raw/more"])
def test_a_processing_run_is_never_raw_or_truth(repo, run):
    with pytest.raises(TruthIsolationError, match=f"run '{run}' cannot be a processing run.*give another --run"):
        validate_processing_run(run)
    with pytest.raises(TruthIsolationError, match="cannot be a processing run"):
        QuantumButler(repo, run)
    assert validate_processing_run("runs/l2") == "runs/l2" and validate_processing_run("truthful") == "truthful"


def test_a_stages_butler_never_resolves_the_truth(repo):
    assert repo.get("truth_catalog", runs=["truth"]) is not None  # there, for validation
    with pytest.raises(TruthIsolationError, match="never reads the simulator's truth"):
        QuantumButler(repo, "runs/l2", ["raw", "truth"])
    butler = QuantumButler(repo, "runs/l2")
    assert not butler.exists("truth_catalog")
    with pytest.raises(DatasetNotFoundError):
        butler.get("truth_catalog")
    (ref,) = repo.query("truth_catalog", runs=["truth"])
    with pytest.raises(TruthIsolationError, match="is in the truth run"):
        butler.read(ref)  # not even given the ref


def test_the_commands_refuse_truth_and_raw_as_output_runs(repo, capsys):
    before = {p for p in (repo.root / "truth").rglob("*")}
    assert main(["stage", "process_eimage", str(repo.root), "--run", "truth"]) == 2
    err = capsys.readouterr().err
    assert "twinkles stage: error: run 'truth' cannot be a processing run" in err, err
    assert main(["run", str(repo.root), "--pipeline", "process_eimage", "--run", "raw", "--executor", "threads",
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "twinkles run: error: run 'raw' cannot be a processing run" in err, err
    assert {p for p in (repo.root / "truth").rglob("*")} == before  # nothing written there
