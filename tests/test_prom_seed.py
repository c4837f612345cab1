"""The seed study's CSV exports: imported into gawm's tidy metric frame (time zone, metric names and units, phases),
refused with the file and line where they are broken, and drawn by notebooks/07_seed_import.ipynb."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest

from gawm_lib import plots
from gawm_lib.prom import FRAME_COLUMNS, SeedCsvError, import_seed_csv, read_seed_phases, seed

ROOT = Path(__file__).resolve().parent.parent
SEED = ROOT / "tests" / "fixtures" / "seed_csv"
BERLIN = "Europe/Berlin"


@pytest.fixture(autouse=True)
def close_figures():
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


@pytest.fixture(scope="module")
def berlin() -> pd.DataFrame:
    return import_seed_csv(SEED, tz=BERLIN)


def write(root: Path, files: dict[str, str]) -> dict[str, Path]:
    paths = {}
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        paths[rel] = path
    return paths


def raw_rows(path: Path) -> list[tuple[str, float]]:
    with path.open() as f:
        return [(r["timestamp"], float(r["value"])) for r in csv.DictReader(f)]


# --- a good import -------------------------------------------------------------------------------------------------


def test_fixture_imports_into_the_tidy_frame_with_catalogue_names_and_units(berlin):
    frame = berlin
    assert list(frame.columns) == [*FRAME_COLUMNS, "workload", "replicas"]
    assert str(frame["time"].dtype) == "datetime64[ns, UTC]" and str(frame["replicas"].dtype) == "int64"
    assert set(zip(frame["workload"], frame["replicas"])) == {("resnet50", 1), ("resnet50", 2), ("distilbert", 1)}
    assert set(frame["query"]) == {
        "gpu_util_dcgm",
        "gpu_memory_used_dcgm",
        "gpu_power_dcgm",
        "gpu_temp_dcgm",
        "container_cpu",
        "latency_p50",
        "latency_p95",
        "throughput",
    }
    units = frame.groupby("query")["unit"].unique().map(list).to_dict()
    assert units == {
        "gpu_util_dcgm": ["ratio"],
        "gpu_memory_used_dcgm": ["bytes"],
        "gpu_power_dcgm": ["watts"],
        "gpu_temp_dcgm": ["celsius"],
        "container_cpu": ["cores"],
        "latency_p50": ["seconds"],
        "latency_p95": ["seconds"],
        "throughput": ["requests/s"],
    }
    assert (frame["labels"] == "{}").all()
    # every value of every file, converted: percent -> ratio, MiB -> bytes, ms -> s
    files = sorted(SEED.rglob("*.csv"))
    assert len(files) == len(frame.attrs["files"]) == 20
    for path in files:
        run, rest = path.name.split("_r", 1)
        replicas = int(rest.split("_", 1)[0])
        metric = rest.split("_", 1)[1].rsplit("_", 2)[0]
        spec = seed._metric(metric, None)
        got = frame[(frame["workload"] == run) & (frame["replicas"] == replicas) & (frame["query"] == spec.query)]
        want = np.array([v for _, v in raw_rows(path)]) * spec.factor
        np.testing.assert_allclose(got["value"].to_numpy(), want, rtol=1e-12, err_msg=str(path))
    r1 = frame[(frame["workload"] == "resnet50") & (frame["replicas"] == 1)]
    at = r1[r1["time"] == pd.Timestamp("2025-06-12T12:00:30Z")].set_index("query")["value"]
    assert at["gpu_util_dcgm"] == pytest.approx(0.44)  # 44 % in the file, 14:00:30 in Berlin (CEST, UTC+2)
    assert at["gpu_memory_used_dcgm"] == 2098 * 2**20  # 2098 MiB
    assert at["latency_p95"] == pytest.approx(0.02007)  # 20.07 ms
    assert at["gpu_power_dcgm"] == pytest.approx(48.4) and at["gpu_temp_dcgm"] == 52.0


def test_local_times_are_read_in_the_given_zone_and_epoch_times_are_zone_free(berlin, caplog):
    with caplog.at_level(logging.WARNING, logger="gawm.prom.seed"):
        utc = import_seed_csv(SEED)
    # the default is named: in the log, in attrs, in each file's time basis
    assert utc.attrs["tz"] == "UTC" and not utc.attrs["tz_given"]
    assert "read as UTC: no tz was given" in utc.attrs["tz_note"]
    assert any(
        "read as UTC" in r.getMessage() and "18 file(s) with local times" in r.getMessage() for r in caplog.records
    )
    assert berlin.attrs["tz"] == BERLIN and "local times read in Europe/Berlin" in berlin.attrs["tz_note"]
    bases = {(f["workload"], f["replicas"]): f["time_basis"] for f in berlin.attrs["files"]}
    assert bases == {
        ("resnet50", 1): "local time, Europe/Berlin",
        ("resnet50", 2): "local time, Europe/Berlin",
        ("distilbert", 1): "Unix epoch milliseconds (zone-free)",
    }
    shift = berlin["time"] - utc["time"]
    local = berlin["workload"] == "resnet50"
    assert (shift[local] == pd.Timedelta(hours=-2)).all()  # summer: 14:00 in Berlin is 12:00 UTC
    assert (shift[~local] == pd.Timedelta(0)).all()  # Unix times do not depend on tz
    first = berlin[berlin["workload"] == "distilbert"]["time"].min()
    assert first == pd.Timestamp("2025-06-13T07:00:00Z")  # 1749798000000 ms


def test_winter_time_offsets_and_daylight_saving(tmp_path):
    write(
        tmp_path,
        {
            "a_r1_gpu_power_20250115_100500.csv": "timestamp,value\n2025-01-15 10:00:00,50\n2025-01-15 10:00:05,51\n",
            "b_r1_gpu_power_20250115_100500.csv": "timestamp,value\n2025-01-15T10:00:00+05:30,50\n",
            # the night the clocks go back: 02:30 comes twice, in order, so it can be told apart
            "c_r1_gpu_power_20251026_030000.csv": "timestamp,value\n2025-10-26 02:30:00,1\n2025-10-26 02:45:00,2\n"
            "2025-10-26 02:15:00,3\n2025-10-26 02:30:00,4\n",
        },
    )
    frame = import_seed_csv(tmp_path, tz=BERLIN)
    times = frame.groupby("workload")["time"].apply(list).to_dict()
    assert times["a"] == [pd.Timestamp("2025-01-15T09:00:00Z"), pd.Timestamp("2025-01-15T09:00:05Z")]  # CET, UTC+1
    assert times["b"] == [pd.Timestamp("2025-01-15T04:30:00Z")]  # its own offset, whatever tz says
    assert times["c"] == [
        pd.Timestamp(t) for t in ("2025-10-26T00:30Z", "2025-10-26T00:45Z", "2025-10-26T01:15Z", "2025-10-26T01:30Z")
    ]
    bases = {f["workload"]: f["time_basis"] for f in frame.attrs["files"]}
    assert bases["b"] == "ISO 8601 with a UTC offset" and bases["a"] == "local time, Europe/Berlin"


def test_phases_are_read_from_the_timestamps_file_and_label_the_samples(berlin):
    phases = seed.seed_phases(berlin)
    r1 = phases[(phases["workload"] == "resnet50") & (phases["replicas"] == 1)].set_index("phase")
    assert list(r1.index) == ["warmup", "load", "cooldown"]
    assert r1.loc["load", "start"] == pd.Timestamp("2025-06-12T12:00:30Z")  # 14:00:30 Berlin
    assert r1.loc["load", "end"] == pd.Timestamp("2025-06-12T12:02:00Z")
    d1 = phases[phases["workload"] == "distilbert"].set_index("phase")
    assert d1.loc["warmup", "start"] == pd.Timestamp("2025-06-13T07:00:00Z")  # Unix seconds in that file
    gpu = berlin[(berlin["workload"] == "resnet50") & (berlin["replicas"] == 1) & (berlin["query"] == "gpu_util_dcgm")]
    elapsed = (gpu["time"] - pd.Timestamp("2025-06-12T12:00:00Z")).dt.total_seconds()
    want = np.where(elapsed < 30, "warmup", np.where(elapsed < 120, "load", "cooldown"))
    assert list(gpu["phase"]) == list(want)
    assert gpu["phase"].iloc[-1] == "cooldown" and elapsed.iloc[-1] == 150  # the sample at the very end of the phase
    assert (berlin.groupby(["workload", "replicas"])["phase"].unique().map(set) == {"warmup", "load", "cooldown"}).all()


def test_phases_file_format_and_samples_outside_every_phase(tmp_path):
    write(
        tmp_path,
        {
            "w_r3/w_r3_cpu_usage_20250612_140300.csv": "timestamp,value\n1749729600,1\n1749729610,2\n1749729620,3\n",
            "w_r3/_timestamps.txt": "phase,start,end\n\nsteady, 1749729605 , 1749729615\n# the end\n",
            "v_r1_cpu_20250612_140300.csv": "timestamp,value\n1749729600,1\n",
        },
    )
    frame = import_seed_csv(tmp_path, phase="outside")
    assert list(frame[frame["workload"] == "w"]["phase"]) == ["outside", "steady", "outside"]
    assert list(frame[frame["workload"] == "v"]["phase"]) == ["outside"]  # a run without a timestamps file
    table = read_seed_phases(tmp_path / "w_r3" / "_timestamps.txt")
    assert table[["phase", "line"]].values.tolist() == [["steady", 3]]


def test_flat_layout_labels_catalogue_names_and_more_seed_names(tmp_path):
    write(
        tmp_path,
        {
            "resnet50_r4_gpu_util_dcgm_20250612_140300.csv": "timestamp,value,gpu,pod\n1749729600,0.5,0,a\n"
            "1749729600,0.25,1,b\n",
            "resnet50_r4_latency_p95_20250612_140300.csv": "timestamp,value\n1749729600,0.1\n",
            "resnet50_r4_queue_len_20250612_140300.csv": "timestamp,value\n1749729600,7\n",
            "resnet50_r4_p99_us_20250612_140300.csv": "timestamp,value\n1749729600,2500\n",
            "resnet50_r4_timestamps.txt": "load,1749729600,1749729660\n",
        },
    )
    frame = import_seed_csv(tmp_path, metrics={"p99_us": ("latency_p99", 1e-6, "µs")})
    by = frame.set_index(["query", "labels"])["value"]
    assert by["gpu_util_dcgm", '{"gpu":"0","pod":"a"}'] == 0.5  # a catalogue name: already in the catalogue's unit
    assert by["gpu_util_dcgm", '{"gpu":"1","pod":"b"}'] == 0.25
    assert by["latency_p95", "{}"] == 0.1
    assert by["latency_p99", "{}"] == pytest.approx(0.0025)
    assert by["queue_len", "{}"] == 7 and frame.set_index("query").loc["queue_len", "unit"] == ""  # kept, no unit
    assert (frame["phase"] == "load").all() and (frame["replicas"] == 4).all()
    assert "no file has local times" in frame.attrs["tz_note"]


def test_the_name_table_maps_onto_the_catalogue():
    from gawm_lib.prom import CATALOGUE

    table = seed.seed_metric_table()
    assert set(table["query"]) <= set(CATALOGUE)
    rows = table.set_index("seed name")
    assert rows.loc["gpu_util", "factor"] == 0.01 and rows.loc["gpu_util", "unit"] == "ratio"
    assert rows.loc["gpu_mem_used", "factor"] == 1048576 and rows.loc["gpu_mem_used", "unit"] == "bytes"
    assert rows.loc["latency_p95_ms", "factor"] == 1e-3 and rows.loc["latency_p95_ms", "unit"] == "seconds"
    assert rows.loc["dcgm_fi_dev_gpu_util", "query"] == "gpu_util_dcgm"


def test_drop_nonfinite_drops_and_counts(tmp_path):
    write(
        tmp_path,
        {
            "a_r1_throughput_20250612_140300.csv": "timestamp,value\n1749729600,1\n1749729605,NaN\n"
            "1749729610,inf\n1749729615,4\n"
        },
    )
    frame = import_seed_csv(tmp_path, drop_nonfinite=True)
    assert list(frame["value"]) == [1.0, 4.0] and frame.attrs["files"][0]["dropped_nonfinite"] == 2


# --- bad inputs: the file and the line ---------------------------------------------------------------------------

GOOD = "timestamp,value\n2025-06-12 14:00:00,1\n"
CSV = "resnet50_r1/resnet50_r1_gpu_power_20250612_140300.csv"
PHASES = "resnet50_r1/resnet50_r1_timestamps.txt"


@pytest.mark.parametrize(
    "files, bad, line, match",
    [
        # a line cut short
        ({CSV: "timestamp,value\n2025-06-12 14:00:00,1\n2025-06-12 14:00:05\n"}, CSV, 3, "cut short"),
        ({CSV: "timestamp,value\n2025-06-12 14:00:00,1\n2025-06-12 14:00:05,\n"}, CSV, 3, "cut short"),
        ({CSV: "timestamp,value,gpu\n2025-06-12 14:00:00,1,0\n2025-06-12 14:00:05,2\n"}, CSV, 3, "cut short"),
        ({CSV: "timestamp,value\n2025-06-12 14:00:00,1,7\n"}, CSV, 2, "3 fields, but the header"),
        # a file with only a header, or nothing
        ({CSV: "timestamp,value\n"}, CSV, 1, "only a header"),
        ({CSV: ""}, CSV, 1, "empty"),
        ({CSV: "time,value\n1,2\n"}, CSV, 1, r"missing column\(s\) \['timestamp'\]"),
        # a malformed time
        ({CSV: "timestamp,value\n2025-06-12 14:00:00,1\n2025-06-12 14:0x:05,2\n"}, CSV, 3, "is not a time"),
        ({CSV: "timestamp,value\n2025-06-12 14:00:00,1\n2025-13-12 14:00:05,2\n"}, CSV, 3, "is not a time"),
        ({CSV: "timestamp,value\nyesterday,1\n"}, CSV, 2, "is not a time"),
        ({CSV: "timestamp,value\n1749729600,1\n1749729605,2\n2025-06-12 14:00:10,3\n"}, CSV, 4, "not a time like"),
        ({CSV: "timestamp,value\n2025-06-12T14:00:00Z,1\n2025-06-12 14:00:05,2\n"}, CSV, 3, "has no UTC offset"),
        ({CSV: "timestamp,value\n2025-03-30 02:30:00,1\n"}, CSV, 2, "does not exist in Europe/Berlin"),
        ({CSV: "timestamp,value\n2025-10-26 02:30:00,1\n"}, CSV, 2, "is ambiguous in Europe/Berlin"),
        # a non-finite value, or not a number
        ({CSV: "timestamp,value\n2025-06-12 14:00:00,1\n2025-06-12 14:00:05,NaN\n"}, CSV, 3, "'NaN' is not finite"),
        ({CSV: "timestamp,value\n2025-06-12 14:00:00,inf\n"}, CSV, 2, "'inf' is not finite"),
        ({CSV: "timestamp,value\n2025-06-12 14:00:00,-Infinity\n"}, CSV, 2, "is not finite"),
        ({CSV: "timestamp,value\n2025-06-12 14:00:00,abc\n"}, CSV, 2, "'abc' is not a number"),
        # a percent under a ratio's catalogue name
        (
            {"r_r1_gpu_util_dcgm_20250612_140300.csv": "timestamp,value\n1749729600,0.5\n1749729605,45\n"},
            "r_r1_gpu_util_dcgm_20250612_140300.csv",
            3,
            "outside 0..1",
        ),
        # the phases file
        (
            {CSV: GOOD, PHASES: "warmup,2025-06-12 14:00:00,2025-06-12 14:00:30\nload,2025-06-12 14:00:30\n"},
            PHASES,
            2,
            "cut short",
        ),
        ({CSV: GOOD, PHASES: "phase,start,end\nwarmup,2025-06-12 14:00:00,14:00:30\n"}, PHASES, 2, "is not a time"),
        (
            {
                CSV: GOOD,
                PHASES: "a,2025-06-12 14:00:00,2025-06-12 14:01:00\nb,2025-06-12 14:00:30,2025-06-12 14:02:00\n",
            },
            PHASES,
            2,
            "starts before phase 'a'",
        ),
        ({CSV: GOOD, PHASES: "a,2025-06-12 14:01:00,2025-06-12 14:00:00\n"}, PHASES, 1, "ends before it starts"),
        (
            {
                CSV: GOOD,
                PHASES: "a,2025-06-12 14:00:00,2025-06-12 14:00:10\na,2025-06-12 14:01:00,2025-06-12 14:02:00\n",
            },
            PHASES,
            2,
            "listed twice",
        ),
        ({CSV: GOOD, PHASES: "# nothing\n"}, PHASES, 1, "empty"),
        ({CSV: GOOD, "_timestamps.txt": "a,1,2\n"}, "_timestamps.txt", None, "which run's phases"),
        # misnamed files
        (
            {"resnet50/resnet50_throughput_20250301_120000.csv": GOOD},
            "resnet50/resnet50_throughput_20250301_120000.csv",
            None,
            "does not match",
        ),
        (
            {"resnet50_r1/resnet50_r2_throughput_20250301_120000.csv": GOOD},
            "resnet50_r1/resnet50_r2_throughput_20250301_120000.csv",
            None,
            "does not match its folder",
        ),
        (
            {"resnet50_r1/resnet50_r1_throughput_2025-03-01.csv": GOOD},
            "resnet50_r1/resnet50_r1_throughput_2025-03-01.csv",
            None,
            "does not match",
        ),
        (
            {"resnet50_r1/resnet50_r1_throughput_20251399_120000.csv": GOOD},
            "resnet50_r1/resnet50_r1_throughput_20251399_120000.csv",
            None,
            "bad export timestamp '20251399_120000' in",
        ),
        (
            {"a/b/resnet50_r1_throughput_20250301_120000.csv": GOOD},
            "a/b/resnet50_r1_throughput_20250301_120000.csv",
            None,
            "folders deep",
        ),
        ({"stray_20250301_120000.csv": GOOD}, "stray_20250301_120000.csv", None, "does not match"),
    ],
)
def test_bad_inputs_name_the_file_and_the_line(tmp_path, files, bad, line, match):
    paths = write(tmp_path, files)
    with pytest.raises(SeedCsvError, match=match) as info:
        import_seed_csv(tmp_path, tz=BERLIN)
    message = str(info.value)
    assert message.startswith(f"{paths[bad]}: "), message
    if line is not None:
        assert f": line {line}: " in message, message


@pytest.mark.parametrize(
    "second",
    [
        "resnet50_r1/resnet50_r1_gpu_power_20250612_150000.csv",
        "resnet50_r1/resnet50_r1_dcgm_fi_dev_power_usage_20250612_140300.csv",
        "resnet50_r1_gpu_power_dcgm_20250612_140300.csv",
    ],
)
def test_the_same_metric_exported_twice_is_refused_naming_both_files(tmp_path, second):
    paths = write(tmp_path, {CSV: GOOD, second: GOOD})
    with pytest.raises(SeedCsvError, match="the same metric exported twice") as info:
        import_seed_csv(tmp_path, tz=BERLIN)
    message = str(info.value)
    assert str(paths[CSV]) in message and str(paths[second]) in message and "line 1" in message
    assert "'gpu_power_dcgm'" in message


def test_a_second_phases_file_for_a_run_and_an_unknown_zone_are_refused(tmp_path):
    paths = write(
        tmp_path,
        {CSV: GOOD, PHASES: "a,1749729600,1749729660\n", "resnet50_r1/_timestamps.txt": "a,1749729600,1749729660\n"},
    )
    with pytest.raises(SeedCsvError, match="a second phases file for resnet50_r1") as info:
        import_seed_csv(tmp_path)
    assert str(paths[PHASES]) in str(info.value) and str(paths["resnet50_r1/_timestamps.txt"]) in str(info.value)
    with pytest.raises(ValueError, match=r"tz='Europe/Berln' is not a time zone.*Europe/Berlin"):
        import_seed_csv(SEED, tz="Europe/Berln")
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        import_seed_csv(tmp_path / "nowhere")


# --- tables, sentences, figures --------------------------------------------------------------------------------------


def test_runs_table_means_and_sentences_come_from_the_numbers(berlin):
    runs = seed.seed_runs(berlin)
    assert runs[["workload", "replicas", "rows", "span [s]"]].values.tolist() == [
        ["resnet50", 1, 234, 150.0],
        ["resnet50", 2, 234, 150.0],
        ["distilbert", 1, 110, 150.0],
    ]
    assert runs["first (UTC)"].tolist() == ["2025-06-12 12:00:00", "2025-06-12 13:00:00", "2025-06-13 07:00:00"]
    assert runs["phases"].tolist() == ["warmup, load, cooldown"] * 3
    means = seed.seed_means(berlin)
    assert set(means["phase"]) == {"load"}  # each run's longest phase
    path = next((SEED / "resnet50_r2").glob("*_gpu_util_*.csv"))
    load = [v for t, v in raw_rows(path) if "15:00:30" <= t[11:] < "15:02:00"]
    got = means[(means["workload"] == "resnet50") & (means["replicas"] == 2) & (means["query"] == "gpu_util_dcgm")]
    assert got["mean"].item() == pytest.approx(np.mean(load) / 100) and got["n"].item() == len(load) == 18
    table = seed.seed_result_table(means)
    assert len(table.columns) <= 10 and "phase" not in table
    assert table.loc[1, "GPU utilisation [%]"] == pytest.approx(np.mean(load), abs=1e-3)
    sentences = seed.describe_seed(means)
    assert 2 <= len(sentences) <= 3
    assert sentences[0].startswith(
        "ResNet50 with 1 and 2 replicas (in phase 'load', means): GPU utilisation 44.9 % and 77.9 %"
    )
    assert "The hottest GPU reading was 60 °C (ResNet50, 2 replicas)" in sentences[-1]
    warm = seed.seed_means(berlin, "warmup")
    assert set(warm["phase"]) == {"warmup"} and warm["n"].sum() < means["n"].sum()


@pytest.mark.parametrize("name", list(seed.SEED_FIGURES))
def test_each_figure_plots_the_imported_values(berlin, name):
    queries = seed.SEED_FIGURES[name]
    fig = seed.seed_timeline(berlin, queries)
    starts = seed.seed_phases(berlin).groupby(["workload", "replicas"], as_index=False)["start"].min()
    data = plots.figure_data(fig)
    assert list(data.columns[: len(plots.DATA_COLUMNS)]) == plots.DATA_COLUMNS
    assert set(data["panel"]) == set(queries)
    for ax in fig.axes:
        assert "[" in ax.get_ylabel() and "_" not in ax.get_ylabel()  # words with a unit, not a query name
    assert fig.axes[-1].get_xlabel() == "time since the run's start [s]"
    for query in queries:
        unit = berlin.loc[berlin["query"] == query, "unit"].iloc[0]
        _, factor = plots.query_axis_label(query, unit)
        rows = berlin[berlin["query"] == query]
        mine = data[data["panel"] == query]
        assert len(mine) == len(rows)
        merged = mine.assign(
            time=pd.to_datetime(mine["time_utc"], utc=True),
            workload=mine["run_id"].str.extract(r"seed:(.+)_r\d+$")[0],
            replicas=mine["config"].str.removeprefix("replicas=").astype(int),
        ).merge(rows, on=["time", "workload", "replicas"], suffixes=("", "_frame"))
        assert len(merged) == len(rows)
        np.testing.assert_allclose(merged["y"], merged["value_frame"] * factor)
        start = merged.merge(starts, on=["workload", "replicas"])["start"]  # the run's first phase
        np.testing.assert_allclose(merged["x"], (merged["time"] - start).dt.total_seconds())
        assert merged["x"].between(0, 150).all()
    lines = {
        line.get_label(): line for ax in fig.axes for line in ax.get_lines() if not line.get_label().startswith("_")
    }
    from matplotlib.colors import to_hex

    assert to_hex(lines["ResNet50, 1 replica"].get_color()) == plots.workload_style("resnet50")[0].lower()
    assert lines["ResNet50, 2 replicas"].get_linestyle() == "--"
    if "DistilBERT, 1 replica" in lines:
        assert to_hex(lines["DistilBERT, 1 replica"].get_color()) == plots.workload_style("distilbert")[0].lower()


def test_figure_with_runs_of_different_phases_and_without_data(tmp_path):
    write(
        tmp_path,
        {
            "a_r1_gpu_temp_20250612_140300.csv": "timestamp,value\n1749729600,40\n1749729700,50\n",
            "a_r1_timestamps.txt": "x,1749729600,1749729650\n",
            "a_r2_gpu_temp_20250612_140300.csv": "timestamp,value\n1749729600,41\n1749729700,52\n",
            "a_r2_timestamps.txt": "y,1749729600,1749729620\nz,1749729620,1749729700\n",
        },
    )
    frame = import_seed_csv(tmp_path)
    fig = seed.seed_timeline(frame, ["gpu_temp_dcgm"])
    dotted = [ln for ln in fig.axes[0].get_lines() if ln.get_linestyle() == ":"]
    assert len(dotted) == 3  # one at each phase start of each run
    assert plots.figure_data(fig)["y"].tolist() == [40.0, 50.0, 41.0, 52.0]
    with pytest.raises(ValueError, match="no samples of"):
        seed.seed_timeline(frame, ["gpu_util_dcgm"])


# --- the notebook ------------------------------------------------------------------------------------------------


@pytest.mark.integration
def test_notebook_imports_the_fixture_and_draws_the_seed_figures(tmp_path, monkeypatch):
    import papermill

    figures = tmp_path / "figures"
    monkeypatch.setenv("GAWM_FIGURES_DIR", str(figures))
    out = tmp_path / "out.ipynb"
    papermill.execute_notebook(
        str(ROOT / "notebooks" / "07_seed_import.ipynb"),
        str(out),
        parameters={"tz": BERLIN, "fig_prefix": "seedtest"},
        cwd=str(ROOT / "notebooks"),
        progress_bar=False,
        kernel_name="python3",
    )
    nb = nbformat.read(out, as_version=4)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "local times read in Europe/Berlin (tz='Europe/Berlin')" in text
    assert "ResNet50 with 1 and 2 replicas (in phase 'load', means)" in text
    assert "stderr" not in {o.get("name") for o in outputs if o.output_type == "stream"}  # no warnings, no noise
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == len(seed.SEED_FIGURES)  # each figure inline
    frame = import_seed_csv(SEED, tz=BERLIN)
    for name, queries in seed.SEED_FIGURES.items():
        stem = figures / f"seedtest_{name}"
        assert stem.with_suffix(".png").read_bytes()[:4] == b"\x89PNG" and stem.with_suffix(".pdf").is_file()
        sidecar = json.loads(stem.with_suffix(".json").read_text())
        assert sidecar["notebook"] == "notebooks/07_seed_import.ipynb" and sidecar["parameters"]["tz"] == BERLIN
        assert sidecar["run_ids"] == ["seed:resnet50_r1", "seed:resnet50_r2", "seed:distilbert_r1"]
        data = pd.read_csv(stem.with_suffix(".csv"))
        rows = frame[frame["query"].isin(queries)]
        assert len(data) == len(rows) and set(data["panel"]) == set(queries)
        for query in queries:
            _, factor = plots.query_axis_label(query, rows.loc[rows["query"] == query, "unit"].iloc[0])
            mine = data[data["panel"] == query]
            np.testing.assert_allclose(mine["y"], mine["value"] * factor)
            assert sorted(mine["value"]) == pytest.approx(sorted(rows.loc[rows["query"] == query, "value"]))


@pytest.mark.integration
def test_notebook_on_a_folder_without_tz_says_it_reads_utc(tmp_path, monkeypatch):
    import papermill

    monkeypatch.setenv("GAWM_FIGURES_DIR", str(tmp_path / "figures"))
    write(
        tmp_path / "exports",
        {
            "whisper_r3_gpu_util_20250612_140300.csv": "timestamp,value\n2025-06-12 14:00:00,50\n"
            "2025-06-12 14:00:05,60\n"
        },
    )
    out = tmp_path / "out.ipynb"
    papermill.execute_notebook(
        str(ROOT / "notebooks" / "07_seed_import.ipynb"),
        str(out),
        parameters={"seed_dir": str(tmp_path / "exports"), "tz": ""},
        progress_bar=False,
        kernel_name="python3",
        cwd=str(ROOT / "notebooks"),
    )
    nb = nbformat.read(out, as_version=4)
    text = "".join(
        o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "stream"
    )
    assert "local times read as UTC: no tz was given" in text
    assert "gpu_memory: no samples of gpu_memory_used_dcgm" in text  # a figure without data is skipped, said so
    assert (tmp_path / "figures" / "seed_gpu_util.png").is_file()
    assert not (tmp_path / "figures" / "seed_gpu_memory.png").exists()
