"""`passportnorm bench`: every figure as a ratio to plain, measured in the same process."""

import json

import pytest

from passportnorm.bench import BenchOptions, bench_table, run_bench
from passportnorm.cli import main


@pytest.mark.parametrize(
    "processes", [pytest.param([], id="no scaling runs"), pytest.param([1, 2], marks=pytest.mark.slow, id="1 and 2")]
)
def test_bench_measures_every_figure_against_plain(tmp_path, processes):
    """Every figure, from the JSON as written; the scaling runs (torchrun launches, 30 s) are slow."""
    options = BenchOptions(dataset="digits", epochs=1, rounds=1, steps=1, processes=processes, out=str(tmp_path))
    result = run_bench(options)
    assert json.loads((tmp_path / "bench.json").read_text())["options"]["arch"] == "small_cnn"
    seconds = result["seconds"]
    assert len(seconds) == 9 and all(value > 0 for value in seconds.values())
    memory = result["peak_memory_bytes"]
    # the joint step keeps both graphs until its one backward; alternate frees the first before the second
    assert memory["plain"] <= memory["alternate"] < memory["joint"]
    epochs = result["epochs"]
    assert set(epochs["seconds_per_epoch"]) == {"plain", "alternate"}
    assert (
        epochs["protected_seconds_to_plain_accuracy"] is None
        or epochs["protected_seconds_to_plain_accuracy"] > 0
    )
    scaling = result["scaling_seconds_per_epoch"]
    if processes:
        assert set(scaling) == {"train", "protect"} and all(set(t) == {1, 2} for t in scaling.values())
    else:
        assert scaling == {}
    table = bench_table(json.loads((tmp_path / "bench.json").read_text()))  # also from the JSON as written
    assert "peak training memory, joint" in table
    assert ("| one epoch, protected, 2 processes |" in table) == (processes == [1, 2])  # scaling: against 1


def test_bench_refuses_bad_process_counts_in_one_line(tmp_path, capsys):
    assert main(["bench", "--processes", "one,two", "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--processes 'one,two'" in err
    assert main(["bench", "--processes", "0", "--out", str(tmp_path / "b")]) == 2
    assert "--processes count must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()
