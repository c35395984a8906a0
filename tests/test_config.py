"""The typed config. Names that registries hold (algo.name, reschedule.mix, ...) are checked at load
against the registries imported, which treerl.commands imports all of, as every command does."""

from pathlib import Path

import pytest

from treerl import commands  # noqa: F401  (every registry)
from treerl.cli import main
from treerl.config import SHIPPED_CONFIGS, AlgoConfig, Config, load_config, shipped_configs
from treerl.errors import UserError


def test_defaults_load():
    cfg = load_config()
    assert isinstance(cfg, Config)
    assert cfg == Config()
    assert cfg.algo.name == "grpo" and cfg.rollout.n >= 1


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  lr: 0.001\n  steps: 7\nrollout:\n  n: 3\n")
    cfg = load_config(
        path, ["train.lr=1e-5", "curriculum.levels=[easy,hard]", "output.progress=false"]
    )
    assert cfg.train.lr == 1e-5 and isinstance(cfg.train.lr, float)  # override wins over the file
    assert cfg.train.steps == 7 and cfg.rollout.n == 3  # the file wins over defaults
    assert cfg.curriculum.levels == ["easy", "hard"]
    assert cfg.output.progress is False
    assert cfg.algo == AlgoConfig()  # untouched sections keep defaults


def test_config_files_merge_in_order_then_the_overrides(tmp_path):
    first, second = tmp_path / "first.yaml", tmp_path / "second.yaml"
    first.write_text(
        "train:\n  lr: 0.001\n  steps: 7\nrollout:\n  n: 3\nalgo:\n  params: {eps: 0.5}\n"
    )
    second.write_text(
        "train:\n  steps: 9\nrollout:\n  max_new_tokens: 20\neval:\n  levels: [hard]\n"
    )
    cfg = load_config([first, second], ["rollout.n=5"])
    assert (cfg.train.lr, cfg.train.steps) == (0.001, 9)  # a section merges key by key, second wins
    assert (cfg.rollout.n, cfg.rollout.max_new_tokens) == (5, 20)  # the overrides come last
    assert (cfg.algo.params, cfg.eval.levels) == ({"eps": 0.5}, ["hard"])
    assert load_config([second, first]).train.steps == 7
    assert load_config(["treerpo_demo", second]).algo.name == "treerpo"  # shipped names too


@pytest.mark.parametrize("command", ["train", "eval", "score", "tree", "pretrain"])
def test_every_command_that_takes_config_takes_it_again(command):
    from treerl.cli import build_parser

    extra = ["--out", "x"] if command == "score" else []
    args = build_parser().parse_args([command, "--config", "a", "--config", "b", *extra])
    assert args.config == ["a", "b"]


@pytest.mark.slow
def test_two_config_files_merge_on_the_command_line_and_the_run_records_the_merge(
    in_tmp, model_dir
):
    (in_tmp / "small.yaml").write_text(
        f"model: {{name_or_path: {model_dir}}}\n"
        "rollout: {n: 2, batch_prompts: 1, max_new_tokens: 8}\n"
        "tree: {step_tokens: 2}\n"
        "eval: {problems: 1, levels: [easy], max_new_tokens: 4}\n"
        "train: {steps: 5, threads: 1}\n"
    )
    argv = ["--config", "treerpo_demo", "--config", "small.yaml", "--out", "run", "train.steps=1"]
    assert main(["train", *argv, "output.progress=false"]) == 0
    recorded = load_config(in_tmp / "run" / "config.yaml")
    assert (recorded.algo.name, recorded.tree.depth) == ("treerpo", 3)  # treerpo_demo's
    assert (recorded.rollout.n, recorded.tree.step_tokens) == (2, 2)  # small.yaml's, over it
    assert recorded.train.steps == 1  # the override's, over both
    assert recorded.algo.params == {"prune_tau": 0.1, "norm": "bernoulli"}


def test_empty_yaml_is_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert load_config(path) == Config()


def test_unknown_key_names_key_and_allowed_keys():
    with pytest.raises(UserError) as err:
        load_config(None, ["algo.clip_hgh=0.3"])
    message = str(err.value)
    assert "algo.clip_hgh" in message
    for allowed in AlgoConfig.model_fields:
        assert allowed in message


def test_unknown_section_is_rejected():
    with pytest.raises(UserError, match="bogus"):
        load_config(None, ["bogus.x=1"])


@pytest.mark.parametrize(
    "override, key",
    [
        ("rollout.n=abc", "rollout.n"),
        ("rollout.n=0", "rollout.n"),
        ("algo.clip_low=1.5", "algo.clip_low"),
        ("train.lr=-1", "train.lr"),
        ("reschedule.mix=cubic", "reschedule.mix"),
        ("algo.clip_ratio_c=0.5", "algo.clip_ratio_c"),
        # every pool problem is generated at start-up: 10^9 never started (the fuzz test hung)
        ("curriculum.pool_size=1000000000", "curriculum.pool_size"),
    ],
)
def test_bad_values_name_the_key(override, key):
    with pytest.raises(UserError, match=key.replace(".", r"\.")):
        load_config(None, [override])


def test_override_without_equals_sign():
    with pytest.raises(UserError, match="train.lr"):
        load_config(None, ["train.lr"])


def test_missing_and_invalid_yaml(tmp_path):
    with pytest.raises(UserError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lr: [1, 2\n")
    with pytest.raises(UserError, match="bad.yaml"):
        load_config(bad)
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(UserError):
        load_config(listing)


def test_escaped_surrogate_pairs_are_read_as_their_character(tmp_path):
    """JSON writes a character beyond U+FFFF as two escapes, which YAML reads as two surrogates:
    joined, in an override and in a file alike."""
    assert load_config(
        None, ['task.system_prompt="\\ud83d\\ude00 be brief"']
    ).task.system_prompt == ("\U0001f600 be brief")
    config = tmp_path / "config.yaml"
    config.write_text('task:\n  system_prompt: "\\ud83d\\ude00"\n', encoding="utf-8")
    assert load_config(config).task.system_prompt == "\U0001f600"


def test_half_a_character_is_a_user_error_naming_the_override_or_file(tmp_path):
    with pytest.raises(UserError, match="task.system_prompt.*half a character"):
        load_config(None, ['task.system_prompt="\\ud800"'])
    config = tmp_path / "config.yaml"
    config.write_text('task:\n  system_prompt: "x\\udc00"\n', encoding="utf-8")
    with pytest.raises(UserError, match="config.yaml.*half a character"):
        load_config(config)
    # bytes of the command line that are not UTF-8 reach argv as lone surrogates
    with pytest.raises(UserError, match="not UTF-8 text"):
        load_config(None, ["task.system_prompt=\udcff"])


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("treerl: error:")
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_cli_bad_override_is_one_line(in_tmp, capsys):
    assert main(["train", "algo.bogus=1"]) == 2
    assert "algo.bogus" in one_error_line(capsys)
    assert not (in_tmp / "runs").exists()


def test_cli_missing_model_path(in_tmp, capsys):
    missing = in_tmp / "no-such-model"
    assert (
        main(
            [
                "train",
                "--out",
                str(in_tmp / "run"),
                f"model.name_or_path={missing}",
                "output.progress=false",
            ]
        )
        == 2
    )
    assert str(missing) in one_error_line(capsys)
    assert not (
        in_tmp / "run" / "config.yaml"
    ).exists()  # a retry with the same --out must not be refused


def test_cli_resume_needs_a_run(in_tmp, capsys):
    (in_tmp / "empty").mkdir()
    assert main(["train", "--resume", str(in_tmp / "empty")]) == 2
    assert "config.yaml" in one_error_line(capsys)


def test_cli_out_refuses_existing_run(in_tmp, capsys):
    run = in_tmp / "old"
    run.mkdir()
    (run / "config.yaml").write_text("seed: 3\n")
    (run / "metrics.jsonl").write_text('{"step": 1}\n')
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    assert main(["train", "--out", str(run), "output.progress=false"]) == 2
    assert str(run) in one_error_line(capsys)
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


def test_cli_unknown_eval_level_is_a_user_error(in_tmp, capsys, model_dir):
    run = in_tmp / "run"
    code = main(
        [
            "train",
            "--out",
            str(run),
            f"model.name_or_path={model_dir}",
            "eval.levels=[easy,bogus]",
            "output.progress=false",
            "train.steps=1",
            "eval.problems=1",
            "rollout.batch_prompts=1",
            "rollout.n=2",
            "rollout.max_new_tokens=2",
            "eval.max_new_tokens=2",
        ]
    )
    assert code == 2
    assert "bogus" in one_error_line(capsys)
    assert not (run / "config.yaml").exists()


@pytest.mark.parametrize("name", shipped_configs())
def test_ready_configs_load_by_name_from_anywhere(name, in_tmp):
    cfg = load_config(name)
    assert cfg == load_config(SHIPPED_CONFIGS / f"{name}.yaml")
    if cfg.algo.name == "treerpo":
        assert cfg.tree.depth * cfg.tree.step_tokens == cfg.rollout.max_new_tokens


def test_an_unknown_config_name_lists_the_shipped_ones(in_tmp):
    assert set(shipped_configs()) == {
        "dash_paper",
        "e2h_blocksworld_paper",
        "e2h_countdown_paper",
        "e2h_demo",
        "reschedule_demo",
        "reschedule_paper",
        "treerpo_demo",
        "treerpo_paper",
    }
    with pytest.raises(
        UserError, match="does not exist .configs shipped with treerl: dash_paper, e2h_blocksworld"
    ):
        load_config("treerpo_dem")
    (in_tmp / "treerpo_demo.yaml").write_text(
        "seed: 7\n"
    )  # a file of the user's wins over a shipped name
    assert load_config("treerpo_demo.yaml").seed == 7


def paper_tables() -> dict[str, list[tuple[str, str]]]:
    """{config name: [(key, value)]} from the settings tables of docs/methods.md (a heading naming
    one shipped config, then rows `| setting | paper | key | value | source |`)."""
    import re

    page = (Path(__file__).parents[1] / "docs" / "methods.md").read_text()
    tables: dict[str, list[tuple[str, str]]] = {}
    current = None
    for line in page.splitlines():
        if line.startswith("#"):
            names = [n for n in re.findall(r"`(\w+)`", line) if n in shipped_configs()]
            current = names[0] if len(names) == 1 else None
        elif current and line.startswith("| ") and not line.startswith("| setting"):
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            if len(cells) == 5 and cells[2].startswith("`"):
                tables.setdefault(current, []).append((cells[2].strip("`"), cells[3].strip("`")))
    return tables


def test_every_paper_config_has_the_settings_its_table_in_methods_md_names():
    import yaml

    from treerl.config import flat

    tables = paper_tables()
    assert set(tables) == {name for name in shipped_configs() if name.endswith("_paper")}
    for name, rows in tables.items():
        config = flat(load_config(name).model_dump())
        for key, value in rows:
            expected = yaml.safe_load(value)
            section_key, _, param = key.partition(
                ".params."
            )  # an estimator's or a schedule's own parameter
            got = config[section_key + ".params"][param] if param else config[key]
            assert (
                got == pytest.approx(expected) if isinstance(expected, float) else got == expected
            ), (name, key)
    assert len(tables["reschedule_paper"]) >= 20 and len(tables["treerpo_paper"]) >= 15


def test_vllm_log_probs_of_a_nucleus_are_never_the_updates_old_log_probs():
    """With top_p < 1 vLLM's log-probs are of the renormalised nucleus, the update's new ones of the
    whole softmax: rollout.vllm.old_logprobs=sampler would put two distributions in one ratio, and
    is refused in one line."""
    with pytest.raises(
        UserError, match="set rollout.vllm.old_logprobs=trainer or rollout.top_p=1$"
    ):
        load_config(
            None, ["rollout.backend=vllm", "rollout.vllm.old_logprobs=sampler", "rollout.top_p=0.9"]
        )
    for fine in (
        ["rollout.vllm.old_logprobs=sampler"],
        ["rollout.backend=vllm", "rollout.top_p=0.9"],
        ["rollout.backend=lean", "rollout.vllm.old_logprobs=sampler", "rollout.top_p=0.9"],
    ):
        load_config(None, fine)


def test_tree_weighting_is_read_as_the_estimators_weighting_with_a_warning(capsys):
    """tree.weighting sits beside tree.norm and tree.prune_tau, which moved to algo.params: it is
    read as algo.params.weighting, and one line says so, since algo.params is the one place the
    estimator's parameters live."""
    from treerl.algo.advantages import ESTIMATORS

    cfg = load_config(None, ["algo.name=treerpo", "tree.weighting=groups", "tree.norm=none"])
    assert cfg.algo.params == {"weighting": "groups", "norm": "none"}
    assert ESTIMATORS.lookup("treerpo").params(cfg.algo.params)["weighting"] == "groups"
    assert "tree.weighting is now algo.params.weighting: read as that" in capsys.readouterr().err


def test_branch_top_k_needs_entropy_branching():
    with pytest.raises(UserError, match="tree.branch_top_k ranks fork points by entropy"):
        load_config(None, ["tree.branch_top_k=2"])
    cfg = load_config(None, ["tree.branch_at=entropy", "tree.branch_top_k=2"])
    assert (cfg.tree.branch_at, cfg.tree.branch_top_k) == ("entropy", 2)
