"""The command line: thin over the library, one-line errors with exit code 2, outputs on disk."""

import json
import subprocess
import sys

import pytest

from todal.cli import main
from todal.errors import TodalError

FAST = ["--cycles", "2", "--epochs", "1", "--initial", "60", "--budget", "30", "--quiet"]


def test_strategies_lists_every_strategy(capsys):
    from todal import strategies

    assert main(["strategies"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in strategies.names()) and "ICCV 2021" in out


def test_run_writes_results_plot_and_table(tmp_path, capsys):
    assert main(["run", "--workdir", str(tmp_path / "r"), *FAST]) == 0
    out = capsys.readouterr().out
    res = json.loads((tmp_path / "r" / "results.json").read_text())
    assert set(res["strategies"]) == {"cod", "random"}  # the TOD loss is off by default (todal.flavor.DEFAULT_SEMI)
    assert json.loads((tmp_path / "r" / "config.json").read_text())["semi_supervised"] is False
    assert main(["run", "--workdir", str(tmp_path / "s"), "--strategy", "cod+semi", "--baseline", "none", *FAST]) == 0
    assert json.loads((tmp_path / "s" / "config.json").read_text())["semi_supervised"] is True
    assert (tmp_path / "r" / "learning_curve.png").stat().st_size > 1000
    assert "acc %" in out and "AUBC" in out
    assert len((tmp_path / "r" / "metrics.jsonl").read_text().splitlines()) == 2


def test_compare_aggregates_seeds(tmp_path, capsys):
    assert main(["compare", "--strategies", "random,cod+semi", "--seeds", "0,1", "--out", str(tmp_path), *FAST]) == 0
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["strategies"]["random"]["seeds"] == [0, 1]
    assert "±" in capsys.readouterr().out  # two seeds: mean ± std


@pytest.mark.parametrize("args, message", [
    (["run", "--dataset", "fmnistt"], "Unknown dataset 'fmnistt'"),
    (["run", "--strategy", "codd"], "Unknown strategy 'codd'"),
    (["run", "--budget", "1.5"], "'budget' parameter of ActiveLoop"),
    (["run", "--initial", "5000"], "needs"),
    (["run", "--model", "vgg"], "vgg"),
    (["compare", "--strategies", "cod+semii"], "NAME or NAME\\+semi"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, args, message):
    assert main([*args, "--workdir" if args[0] == "run" else "--out", str(tmp_path / "w"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("todal: error: ") and len(err.strip().splitlines()) == 1
    assert __import__("re").search(message, err)


def test_corrupted_pool_is_refused_and_kept(tmp_path, capsys):
    work = tmp_path / "r"
    assert main(["run", "--workdir", str(work), "--baseline", "none", *FAST]) == 0
    (work / "pool.json").write_text('{"format": "todal.pool", "version": 1, "size"')
    assert main(["run", "--workdir", str(work), "--baseline", "none", *FAST]) == 2
    assert "pool.json is corrupted" in capsys.readouterr().err
    assert (work / "pool.json").read_text().endswith('"size"')  # nothing overwritten


def test_different_config_on_a_run_directory_exits_2(tmp_path, capsys):
    work = str(tmp_path / "r")
    assert main(["run", "--workdir", work, "--baseline", "none", *FAST]) == 0
    assert main(["run", "--workdir", work, "--baseline", "none", "--seed", "1", *FAST]) == 2
    assert "different configuration (seed: 0 there, 1 now)" in capsys.readouterr().err


def test_console_script_has_no_traceback_on_bad_input(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "todal.cli", "run", "--dataset", "nope.npz", "--quiet",
                           "--workdir", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and proc.stderr.startswith("todal: error:")


def test_strategy_options_reach_the_strategy_and_scope_by_name(tmp_path):
    from todal.cli import _options

    pairs = ["space=logits", "cod.cache=false", "entropy.x=1"]
    assert _options(pairs, ["cod", "random", "entropy"]) == {"cod": {"space": "logits", "cache": False}, "random": {},
                                                             "entropy": {"x": 1}}
    with pytest.raises(TodalError, match=r"No strategy of this command \(random, entropy\) takes the option 'space'"):
        _options(["space=logits"], ["random", "entropy"])
    with pytest.raises(TodalError, match=r"Strategy option 'qbc.members=3' is for 'qbc', which this command does not run"):
        _options(["qbc.members=3"], ["cod", "random"])
    work = tmp_path / "r"
    assert main(["run", "--workdir", str(work), "--baseline", "none", "--option", "space=logits", *FAST]) == 0
    assert json.loads((work / "config.json").read_text())["strategy_options"] == {"space": "logits"}


def test_the_readme_option_command_runs_with_its_random_baseline(tmp_path):
    """`todal run --strategy mc_dropout --option passes=10`: the option is mc_dropout's; the random baseline
    beside it takes none (it used to be given `passes` too and fail after training)."""
    work = tmp_path / "r"
    assert main(["run", "--strategy", "mc_dropout", "--no-semi", "--option", "passes=3", "--workdir", str(work),
                 *FAST]) == 0
    assert json.loads((work / "config.json").read_text())["strategy_options"] == {"passes": 3}
    assert json.loads((work / "baseline-random" / "config.json").read_text())["strategy_options"] == {}


def test_bad_strategy_option_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["run", "--workdir", str(tmp_path / "r"), "--option", "spce=logits", *FAST]) == 2
    assert "No strategy of this command (cod, random) takes the option 'spce'" in capsys.readouterr().err
    assert main(["run", "--workdir", str(tmp_path / "q"), "--option", "cod.spce=logits", *FAST]) == 2
    assert "'spce' parameter of strategy 'cod'" in capsys.readouterr().err
    assert main(["run", "--workdir", str(tmp_path / "s"), "--option", "novalue", *FAST]) == 2
    assert "is not KEY=VALUE" in capsys.readouterr().err


def test_compare_all_runs_every_registered_strategy(tmp_path, monkeypatch):
    import todal.cli
    from todal import strategies

    ran = []
    fake = [{"cycle": 0, "labeled": 60, "labeled_fraction": 0.05, "accuracy": 0.5, "loss": 1.0}]
    monkeypatch.setattr(todal.cli, "_execute", lambda loop, title: ran.append(title) or fake)
    assert main(["compare", "--strategies", "all", "--seeds", "0", "--out", str(tmp_path), *FAST]) == 0
    assert ran == [f"{name} seed 0" for name in strategies.names()] + ["cod+semi seed 0"]


def test_bench_paper_protocol_on_cpu_is_refused_with_an_estimate(tmp_path, capsys):
    assert main(["bench", "--protocol", "paper", "--dataset", "digits", "--out", str(tmp_path), "--quiet",
                 "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("todal: error: The 'paper' protocol needs a GPU") and "would take about" in err


def test_first_cycle_reaches_the_flavor(tmp_path):
    work = tmp_path / "r"
    assert main(["run", "--workdir", str(work), "--baseline", "none", "--no-first-cycle-lowest", *FAST]) == 0
    flavor = json.loads((work / "config.json").read_text())["flavor"]
    assert flavor["name"] == "default" and flavor["first_cycle_lowest"] is False  # the default's pick, overridden
    paper = tmp_path / "p"
    assert main(["run", "--workdir", str(paper), "--baseline", "none", "--flavor", "paper", "--first-cycle-lowest",
                 *FAST]) == 0
    flavor = json.loads((paper / "config.json").read_text())["flavor"]
    assert flavor["name"] == "paper" and flavor["first_cycle_lowest"] is True


def test_training_flags_come_from_trainconfig_and_reach_the_run(tmp_path, capsys):
    work = tmp_path / "r"
    assert main(["run", "--workdir", str(work), "--baseline", "none", "--lr-drop-at", "0.5", "--precision", "fp32",
                 "--no-channels-last", "--lam", "0.2", *FAST]) == 0
    config = json.loads((work / "config.json").read_text())
    assert (config["train"]["lr_drop_at"], config["train"]["precision"], config["train"]["channels_last"]) == (
        0.5, "fp32", False)
    assert config["flavor"]["lam"] == 0.2 and config["flavor"]["name"] == "default"
    assert main(["run", "--workdir", str(tmp_path / "bad"), "--lr-drop-at", "2", *FAST]) == 2
    assert "The 'lr_drop_at' parameter of TrainConfig must be a float in (0, 1]. Got 2.0." in capsys.readouterr().err


def test_models_lists_the_built_in_models(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("resnet18") and "small_cnn" in out and "seg_cnn" in out


def test_run_stop_and_log_dir_reach_the_loop(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    work, logs = tmp_path / "r", tmp_path / "tb"
    assert main(["run", "--workdir", str(work), "--baseline", "none", "--stop", "plateau", "--log-dir", str(logs),
                 *FAST]) == 0
    assert json.loads((work / "config.json").read_text())["stop"]["criterion"] == "plateau"
    events = EventAccumulator(str(logs / "r"))
    events.Reload()
    assert [e.step for e in events.Scalars("cycle/accuracy")] == [0, 1]
