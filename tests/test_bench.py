"""`d2lport bench`: the report's arithmetic (ratios, goals, JSON, Markdown, README section)
on made-up measurements, and the whole tool once on a tiny run in every installed framework.
No test asserts a speed: the machines are shared and their rates move by 3x."""
import json
import math

import pytest

from d2lport import cli, registry
from d2lport.bench import report as rep
from d2lport.bench.run import check_model, devices_used, merge
from d2lport.compare.workers import available

# what a worker can run: each framework in its worker's Python (MXNet: .venv-mxnet)
INSTALLED = available(registry.FRAMEWORKS)[0]


def _run(fw, path, train, peak=1.0, model="googlenet"):
    s = {"median": train, "min": train * 0.9, "max": train * 1.1, "all": [train]}
    i = {"median": 3 * train, "min": 3 * train, "max": 3 * train, "all": [3 * train]}
    return {"model": model, "path": path, "framework": fw, "training": s,
            "inference": i, "peak_gb": peak, "seconds": 1.0,
            "describe": f"{path}: made up"}


def _report():
    runs = [_run("torch", "d2lport", 70, 1.2), _run("torch", "book", 50), _run("torch", "fast", 60),
            _run("mxnet", "d2lport", 35, 3.0), _run("mxnet", "book", 20), _run("mxnet", "fast", 40)]
    return rep.BenchReport(
        settings=dict(batch_size=128, steps=3, repeats=3, warmup=1),
        machine=dict(date="2026-11-24", cpu="test CPU", cores=2),
        flops={"googlenet": 552_132_608},
        matmul={"torch": {"n": 2048, "gflops": {"median": 150.0}},
                "mxnet": {"n": 2048, "gflops": {"median": 100.0}}},
        runs=runs)


@pytest.mark.core
def test_ratios_are_taken_within_the_run():
    rows = {(r.framework, r.path): r for r in _report().rows()}
    torch, mx = rows["torch", "d2lport"], rows["mxnet", "d2lport"]
    assert torch.vs_book == pytest.approx(70 / 50) and torch.vs_fast == pytest.approx(70 / 60)
    assert torch.vs_fastest == 1.0 and mx.vs_fastest == pytest.approx(0.5)
    assert rows["mxnet", "fast"].vs_book == pytest.approx(2.0)
    assert rows["torch", "book"].vs_fastest is None        # only d2lport rows have one
    # 3 x the forward FLOPs per trained example, against the best matmul rate of the run
    assert torch.gflops == pytest.approx(70 * 3 * 0.552132608)
    assert torch.of_matmul == pytest.approx(torch.gflops / 150.0)


@pytest.mark.core
def test_goals_say_which_are_met_with_their_numbers():
    goals = {g.text: g for g in _report().goals()}
    assert goals["googlenet torch: >= 1.3x the book path"].met            # 1.40x
    assert not goals["googlenet mxnet: >= 1.0x the framework's fast path"].met   # 0.88x
    assert not goals["googlenet mxnet: >= 0.7x the fastest framework"].met       # 0.50x
    memory = goals["googlenet: MXNet peak memory <= 1.5x the leanest (torch)"]
    assert not memory.met and memory.detail == "3.00 / 1.20 GB = 2.50x"
    matmul = next(g for t, g in goals.items() if "matmul" in t)
    assert matmul.met and "(torch)" in matmul.text                      # 116 / 150 = 0.77


@pytest.mark.core
def test_json_round_trip_markdown_and_readme_section(tmp_path):
    report = _report()
    again = rep.BenchReport.from_json(report.to_json())
    assert [r.__dict__ for r in again.rows()] == [r.__dict__ for r in report.rows()]
    assert json.loads(report.to_json())["goals"][0]["text"].startswith("googlenet torch")
    md = report.to_markdown()
    table = [line for line in md.splitlines() if line.startswith("| googlenet")]
    assert len(table) == 6 and "| 1.40x |" in table[0]
    assert "**not met**: googlenet mxnet: >= 0.7x the fastest framework (0.50x)" in md
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\n{rep.README_START}\nold table\n{rep.README_END}\n\n## next\n")
    rep.update_readme(readme, md)
    text = readme.read_text()
    assert "old table" not in text and md in text and text.endswith("## next\n")
    rep.update_readme(readme, "second\n")                  # the markers survive a rewrite
    assert "second\n" + rep.README_END in readme.read_text()


@pytest.mark.core
def test_readme_without_markers_is_an_error_naming_the_fix(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# no section\n")
    with pytest.raises(ValueError, match="no benchmark section: put the lines"):
        rep.update_readme(readme, "table\n")
    assert readme.read_text() == "# no section\n"          # nothing lost


@pytest.mark.core
def test_rounds_of_one_path_pool_their_passes():
    a, b = _run("torch", "fast", 60, peak=1.5), _run("torch", "fast", 80, peak=1.25)
    merged = merge([a, b])
    assert merged["training"]["all"] == [60, 80] and merged["training"]["median"] == 70
    assert merged["inference"]["median"] == 210 and merged["peak_gb"] == 1.5
    assert merged["processes"] == 2 and a["training"]["all"] == [60]   # inputs untouched


def _gpu_report():
    gpu = dict(device="cuda:0", accelerator="NVIDIA H100 80GB HBM3")
    runs = [dict(_run("torch", "d2lport", 8300, 2.0), **gpu, device_peak_gb=1.5),
            dict(_run("torch", "book", 6000, 2.1), **gpu, device_peak_gb=1.25),
            _run("mxnet", "d2lport", 40, 3.0)]
    runs[2].update(device="cpu(0)", accelerator=None, device_peak_gb=None)
    report = rep.BenchReport(
        settings=dict(batch_size=128, steps=30, repeats=1, warmup=2),
        machine=dict(date="2026-11-25", cpu="test CPU", cores=16),
        flops={"googlenet": 552_132_608},
        matmul={"torch": {"n": 2048, "gflops": {"median": 50000.0}, **gpu},
                "mxnet": {"n": 2048, "gflops": {"median": 900.0}, "device": "cpu(0)",
                          "accelerator": None}},
        runs=runs)
    report.machine["device"] = devices_used(report)
    return report


@pytest.mark.core
def test_a_gpu_run_names_its_gpu_shows_gpu_memory_and_sets_no_matmul_goal():
    report = _gpu_report()
    assert report.machine["device"] == "NVIDIA H100 80GB HBM3 (torch); CPU (mxnet)"
    assert devices_used(_report()) == "CPU"          # workers that report no accelerator
    md = report.to_markdown()
    assert "16 cores, NVIDIA H100 80GB HBM3 (torch); CPU (mxnet);" in md
    assert "float32 matmul torch 50000 (cuda:0), mxnet 900 GFLOP/s" in md
    assert md.splitlines()[4].endswith("| peak GB | GPU GB |")
    rows = [line for line in md.splitlines() if line.startswith("| googlenet")]
    assert rows[0].endswith("| 2.00 | 1.50 |") and rows[2].endswith("| 3.00 |  |")
    goals = [g.text for g in report.goals()]
    assert goals and not any("matmul" in t for t in goals)    # issue 10's goal is a CPU goal
    assert "GPU GB" not in _report().to_markdown()               # a CPU run: no such column
    again = rep.BenchReport.from_json(report.to_json())
    assert [r.device_peak_gb for r in again.rows()] == [1.5, 1.25, None]
    merged = merge([report.runs[0], dict(report.runs[0], device_peak_gb=2.5)])
    assert merged["device_peak_gb"] == 2.5 and merge([_run("torch", "fast", 1)])["device_peak_gb"] is None


@pytest.mark.core
def test_networks_that_do_not_take_fashion_mnist_are_refused(capsys):
    assert check_model("vgg_d2l") == "vgg_d2l"
    with pytest.raises(ValueError, match="trains on Fashion-MNIST: residual_block takes"):
        check_model("residual_block")
    # one line naming the problem, before any worker starts
    assert cli.main(["bench", "googlenet", "--paths", "d2lport,slow"]) == 2
    assert "unknown path 'slow': choose from d2lport, book, fast" in capsys.readouterr().err


@pytest.mark.parity
@pytest.mark.skipif(not INSTALLED, reason="no framework installed")
def test_bench_runs_every_path_in_every_framework(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{rep.README_START}\n{rep.README_END}\n")
    out_json, out_md = tmp_path / "b.json", tmp_path / "b.md"
    code = cli.main(["bench", "googlenet", "--batch-size", "2", "--steps", "2", "--repeats", "1",
                     "--rounds", "1", "--warmup", "0", "--matmul-size", "64", "--json", str(out_json),
                     "--markdown", str(out_md), "--readme", str(readme)])
    printed = capsys.readouterr().out
    assert code == 0 and "goals met:" in printed
    data = json.loads(out_json.read_text())
    assert data["failed"] == {}, data["failed"]
    assert data["flops_forward_per_example"] == {"googlenet": 552132608}
    got = {(r["framework"], r["path"]) for r in data["rows"]}
    assert got == {(fw, p) for fw in INSTALLED for p in ("d2lport", "book", "fast")}
    for r in data["rows"]:
        assert r["training"] > 0 and r["inference"] > 0 and math.isfinite(r["gflops"])
        assert 0.05 < r["peak_gb"] < 20, r
    assert set(data["matmul"]) == set(INSTALLED)
    assert out_md.read_text() in readme.read_text()
    # every path and the matmul of a framework on one device: here the CPU
    assert data["machine"]["device"] == "CPU"
    for meta in data["runs"] + list(data["matmul"].values()):
        assert meta["accelerator"] is None and "cpu" in meta["device"].lower(), meta
