"""medgen.reports (the DESIGN.md report contract) and medgen.reproduce's notebook selection."""
from __future__ import annotations

import json
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from medgen import reports  # noqa: E402
from medgen.reports import Report, build_index, markdown_table  # noqa: E402
from medgen.reproduce import output_path, parse_papers, select_notebooks  # noqa: E402

RESULT_KEYS = {"notebook", "preset", "git_sha", "seed", "created", "metrics", "findings"}
LINK = re.compile(r"\]\(([^)#]+)\)")


def make_run(root: Path, notebook: str = "01_spine", preset: str = "ci", *, seed: int = 3) -> Report:
    """A saved run with one table, one figure, two metrics and two findings."""
    rep = Report(notebook, preset, root=root, seed=seed)
    rep.table("psnr", pd.DataFrame({"method": ["input", "cddpm"], "psnr": [17.123456, 21.5]}))
    fig, ax = plt.subplots(figsize=(2, 2))
    _ = ax.plot([0, 1], [0, 1])
    rep.figure("curve", fig)
    plt.close(fig)
    rep.metric("cddpm", "psnr", 21.5)
    rep.metrics({"input": {"psnr": np.float32(17.125)}})
    rep.finding("beats_input", True, "cddpm 21.5 dB vs input 17.1 dB.")
    rep.finding("ddim_beats_ddpm", False, "DDIM 20.1 dB\nvs DDPM 20.4 | dB.")
    rep.save()
    return rep


def test_report_dir_layout(tmp_path: Path) -> None:
    rep = Report("00_quickstart", "smoke", root=tmp_path)
    assert rep.dir == tmp_path / "00_quickstart" / "smoke" and rep.dir.is_dir()


def test_results_json_has_exactly_the_contract_keys(tmp_path: Path) -> None:
    rep = make_run(tmp_path)
    data = json.loads((rep.dir / "results.json").read_text())
    assert set(data) == RESULT_KEYS
    assert data["notebook"] == "01_spine" and data["preset"] == "ci" and data["seed"] == 3
    assert data["metrics"] == {"cddpm": {"psnr": 21.5}, "input": {"psnr": 17.125}}
    assert data["findings"]["beats_input"] == {"holds": True, "evidence": "cddpm 21.5 dB vs input 17.1 dB."}
    assert data["findings"]["ddim_beats_ddpm"]["holds"] is False
    assert "\n" not in data["findings"]["ddim_beats_ddpm"]["evidence"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", data["created"])
    assert data["git_sha"] == "unknown" or re.fullmatch(r"[0-9a-f]{40}", data["git_sha"])


def test_nan_metric_is_stored_as_null(tmp_path: Path) -> None:
    rep = Report("nb", "ci", root=tmp_path)
    rep.metric("m", "fid", float("nan"))
    data = json.loads(rep.save().read_text())  # strict JSON: no NaN literal
    assert data["metrics"] == {"m": {"fid": None}}


def test_table_writes_csv_and_markdown(tmp_path: Path) -> None:
    rep = make_run(tmp_path)
    csv = pd.read_csv(rep.dir / "psnr.csv")
    assert list(csv.columns) == ["method", "psnr"]
    assert csv["psnr"].tolist() == [17.123456, 21.5]  # full precision in the CSV
    md = (rep.dir / "psnr.md").read_text().splitlines()
    assert md == ["| method | psnr |", "|---|---:|", "| input | 17.123 |", "| cddpm | 21.500 |"]


def test_figure_is_a_png(tmp_path: Path) -> None:
    rep = make_run(tmp_path)
    assert (rep.dir / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_markdown_table_index_nan_and_pipes() -> None:
    df = pd.DataFrame({"a|b": ["x|y", None], "v": [1.0, np.nan], "n": [1, 2]}, index=pd.Index(["r1", "r2"], name="row"))
    lines = markdown_table(df, index=True, floatfmt=".1f").splitlines()
    assert lines[0] == "| row | a\\|b | v | n |"
    assert lines[1] == "|---|---|---:|---:|"
    assert lines[2] == "| r1 | x\\|y | 1.0 | 1 |"
    assert lines[3] == "| r2 |  |  | 2 |"


def test_bad_names_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="notebook name"):
        Report("a/b", "ci", root=tmp_path)
    with pytest.raises(ValueError, match="preset name"):
        Report("nb", "", root=tmp_path)


def test_reports_land_in_repo_root_whatever_the_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   repo_root: Path) -> None:
    monkeypatch.delenv("MEDGEN_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    assert reports.repo_root() == repo_root
    assert Report("nb", "ci", root="elsewhere").root == repo_root / "elsewhere"
    monkeypatch.setenv("MEDGEN_ROOT", str(tmp_path))
    assert reports.resolve_reports_root() == tmp_path / "reports"
    assert reports.git_sha() == "unknown"  # tmp_path is not a git checkout


def test_index_links_every_artifact(tmp_path: Path) -> None:
    make_run(tmp_path, "01_spine")
    make_run(tmp_path, "02_lung", "smoke")
    (tmp_path / "01_spine" / "ci" / "01_spine.ipynb").write_text("{}")
    text = build_index(tmp_path).read_text()
    links = LINK.findall(text)
    assert links and all((tmp_path / link).is_file() for link in links), links
    for name in ("01_spine.ipynb", "results.json", "psnr.md", "psnr.csv", "curve.png"):
        assert f"01_spine/ci/{name}" in links
    assert "02_lung/smoke/results.json" in links
    assert "| beats_input | yes | cddpm 21.5 dB vs input 17.1 dB. |" in text
    assert "| ddim_beats_ddpm | **no** | DDIM 20.1 dB vs DDPM 20.4 \\| dB. |" in text
    assert "| [01_spine](#01_spine) | ci |" in text and "| 1/2 |" in text
    assert "seed 3" in text


def test_index_headlines_the_largest_preset_and_shows_failed_runs(tmp_path: Path) -> None:
    make_run(tmp_path, "01_spine", "ci")
    newer = make_run(tmp_path, "01_spine", "smoke")
    data = json.loads((newer.dir / "results.json").read_text())
    data["created"] = "2999-01-01T00:00:00+00:00"
    (newer.dir / "results.json").write_text(json.dumps(data))
    (tmp_path / "03_knee" / "smoke").mkdir(parents=True)  # a run that died before save()
    (tmp_path / "03_knee" / "smoke" / "03_knee.ipynb").write_text("{}")
    text = build_index(tmp_path).read_text()
    spine = text.split("## 01_spine")[1].split("## ")[0]
    assert "Headline run (code-path check): preset `smoke`" in spine and "Other runs" not in spine  # ci: tests
    cpu = make_run(tmp_path, "01_spine", "cpu")  # older than the smoke run, still the headline
    data = json.loads((cpu.dir / "results.json").read_text())
    data["created"] = "2001-01-01T00:00:00+00:00"
    (cpu.dir / "results.json").write_text(json.dumps(data))
    (tmp_path / "demos" / "ci" / "screenshots").mkdir(parents=True)  # not a notebook run
    text = build_index(tmp_path).read_text()
    spine = text.split("## 01_spine")[1].split("## ")[0]
    assert "Headline run (the findings at CPU budget): preset `cpu`" in spine
    assert "Other runs: [smoke (2999-01-01T00:00:00+00:00; code-path check)" in spine
    assert "| [01_spine](#01_spine) | cpu |" in text and "demos" not in text
    knee = text.split("## 03_knee")[1]
    assert "No results.json" in knee and "03_knee/smoke/03_knee.ipynb" in knee


def test_index_lists_benchmarks_and_empty_state(tmp_path: Path) -> None:
    assert "No notebook has been run yet" in build_index(tmp_path).read_text()
    bench = tmp_path / "benchmark"
    bench.mkdir()
    (bench / "speed.csv").write_text("measure,value,unit,goal,holds\n")
    (bench / "speed.md").write_text("| measure |\n")
    text = build_index(tmp_path).read_text()
    assert "## Benchmarks" in text and "[speed](benchmark/speed.md)" in text
    assert "## benchmark" not in text  # not mistaken for a notebook


def test_parse_and_select_papers(tmp_path: Path) -> None:
    assert parse_papers(None) == [] and parse_papers("") == []
    assert parse_papers("spine, knee lung") == ["spine", "knee", "lung"]
    assert parse_papers(["a,b", "c"]) == ["a", "b", "c"]
    for stem in ("00_quickstart", "01_mri_to_ct_spine", "02_lung_us", "05_xray2mri_knee"):
        (tmp_path / f"{stem}.ipynb").write_text("{}")
    assert [p.stem for p in select_notebooks(tmp_path)][0] == "00_quickstart"
    assert [p.stem for p in select_notebooks(tmp_path, "SPINE,knee")] == ["01_mri_to_ct_spine", "05_xray2mri_knee"]
    with pytest.raises(ValueError, match="no notebook .* matches papers \\['heart'\\]"):
        select_notebooks(tmp_path, ["heart"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        select_notebooks(tmp_path / "missing")
    assert output_path(Path("r"), tmp_path / "02_lung_us.ipynb", "smoke") == Path("r/02_lung_us/smoke/02_lung_us.ipynb")
