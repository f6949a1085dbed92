"""The command line's smaller frictions: every flag has help text; ``generate --save``
chooses layers, heads and fields; ``inspect`` says what a run captured and tells a
directory that is neither a run nor a model apart from a model with no config.json; the
context length is checked (``--beyond-context``)."""

from __future__ import annotations

import argparse
import json

import pytest
from tiny_models import save_tiny_hf_dir

from attnvar import cli, load_run
from attnvar.cli import main


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_hf_dir(tmp_path_factory.mktemp("tiny_hf"))


def walk(parser: argparse.ArgumentParser, where: str = "attnvar"):
    """(where, action) for every action of the parser and its subcommands."""
    for action in parser._actions:
        yield where, action
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from walk(sub, f"{where} {name}")


def test_every_flag_of_every_subcommand_has_help():
    missing = [f"{where}: {'/'.join(action.option_strings) or action.dest}"
               for where, action in walk(cli._parser())
               if not isinstance(action, argparse._HelpAction)
               and not (action.help and action.help.strip())]
    assert not missing, "flags without help text:\n" + "\n".join(missing)
    # Every subcommand is listed with a line of help too.
    sub = next(a for a in cli._parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert all(choice.help for choice in sub._choices_actions)


def test_generate_save_captures_the_chosen_layers_heads_and_fields(model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["generate", "the cat sat", "--model", str(model_dir), "--max-steps", "3",
                 "--threshold", "0.05", "--save", str(out), "--layers", "0,2", "--heads", "1",
                 "--fields", "scores,value_norms"]) == 0
    run = load_run(out)
    assert run.capture_layers == [0, 2] and run.capture_heads == [1]
    assert run.scores.shape[:2] == (2, 1) and run.value_norms.shape[:2] == (2, 1)
    with pytest.raises(ValueError, match="did not capture attention"):
        run.attention  # noqa: B018
    capsys.readouterr()
    assert main(["inspect", str(out)]) == 0
    shown = capsys.readouterr().out
    report = json.loads(shown[shown.index("{"):])
    assert report["capture"]["fields"] == ["scores", "value_norms"]
    assert report["capture"]["layers"] == [0, 2] and report["capture"]["heads"] == [1]
    assert report["capture"]["dtype"] == "float32"
    assert report["capture"]["passes"] == len(run.passes)


def test_the_default_save_captures_probabilities_and_scores_of_everything(
        model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["generate", "the cat", "--model", str(model_dir), "--max-steps", "2",
                 "--save", str(out)]) == 0
    capture = load_run(out).capture_summary()
    assert capture["fields"] == ["probabilities", "scores"]
    assert capture["layers"] == [0, 1, 2] and capture["heads"] is None


@pytest.mark.parametrize("args, needle", [
    (["--layers", "0"], "--layers: only with --save"),
    (["--fields", "scores"], "--fields: only with --save"),
    (["--save", "SAVE", "--layers", "7"], "layer 7 outside [0, 3)"),
    (["--save", "SAVE", "--heads", "1,1"], "repeats [1]"),
])
def test_capture_choices_are_checked(model_dir, tmp_path, capsys, args, needle):
    args = [str(tmp_path / "r") if a == "SAVE" else a for a in args]
    assert main(["generate", "the cat", "--model", str(model_dir), "--max-steps", "1",
                 *args]) == 2
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_unknown_fields_are_an_argument_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["generate", "x", "--save", "r", "--fields", "attention_weights"])
    assert info.value.code == 2
    assert "probabilities, scores, value_norms" in capsys.readouterr().err


def test_inspect_tells_a_plain_directory_from_a_model(tmp_path, capsys, model_dir):
    plain = tmp_path / "notes"
    plain.mkdir()
    (plain / "todo.txt").write_text("nothing here")
    assert main(["inspect", str(plain)]) == 2
    err = capsys.readouterr().err
    assert "neither a saved run (no run.json) nor an HF model directory" in err
    assert str(plain) in err and len(err.strip().splitlines()) == 1
    study = tmp_path / "results"
    study.mkdir()
    (study / "study.json").write_text("{}")
    assert main(["inspect", str(study)]) == 2
    assert "study results directory" in capsys.readouterr().err
    assert main(["inspect", str(model_dir)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["num_layers"] == 3


def test_inspect_html_writes_a_runs_views_and_refuses_anything_else(
        model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["generate", "the cat sat", "--model", str(model_dir), "--max-steps", "3",
                 "--threshold", "0.05", "--save", str(out)]) == 0
    page = tmp_path / "view.html"
    assert main(["inspect", str(out), "--html", str(page)]) == 0
    text = page.read_text()
    assert text.startswith("<!DOCTYPE html>") and "data:image/png;base64," in text
    assert "attnvar-set-view" in text and "<script" not in text
    assert str(page) in capsys.readouterr().err
    # A model (or anything but a saved run) has no views: one line, nothing written.
    other = tmp_path / "model_view.html"
    assert main(["inspect", str(model_dir), "--html", str(other)]) == 2
    err = capsys.readouterr().err
    assert "--html writes a saved run's views" in err and len(err.strip().splitlines()) == 1
    assert not other.exists()


def test_a_run_past_the_context_is_refused_with_the_numbers_unless_asked(model_dir, capsys):
    # The tiny model's context is 256 positions.
    args = ["generate", "the cat", "--model", str(model_dir), "--max-steps", "300",
            "--threshold", "0.9"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "302 positions" in err and "context of 256" in err and "beyond_context" in err
    assert main([*args, "--beyond-context"]) == 0
    assert capsys.readouterr().out.startswith("the cat")
