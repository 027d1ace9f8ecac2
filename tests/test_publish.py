"""Publishing: the real huggingface_hub client against a local stand-in of the Hub (hub_standin.py).

A tiny LoRA run (linear x2, 64 -> 128 positions) is trained, evaluated and published by extend/train.py
itself (publish.repo_id); the tests check what arrived at the stand-in file by file, the card, the
scrubbing, resumption, the dry-run command, and that every bad input and every folder failing
verification gets one error while nothing is uploaded.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from hashlib import sha256
from pathlib import Path

import pytest
from huggingface_hub import ModelCard, constants

from extend.config import ConfigError, ModelConfig, PublishConfig
from extend.models import build_random, load_base_config
from extend.models.tokenizer import load_tokenizer
from extend.publish import PublishError, publish_run
from extend.publish.__main__ import expand_short_keys
from extend.publish.export_info import ExportInfo, evaluations
from extend.publish.hub import NO_TOKEN, upload
from extend.publish.layout import files_under
from extend.publish.scrub import machine_paths, scrub_paths
from extend.publish.stage import stage
from extend.publish.verify import Expectations, check_card, check_contents, check_files
from extend.train import train

from hub_standin import HubStandIn, Repo
from training_fixtures import compose_typed, dataset_dir, make_config  # noqa: F401  (fixtures)

pytestmark = pytest.mark.slow  # trains, evaluates and publishes a tiny run against the Hub stand-in

REPO = Path(__file__).resolve().parent.parent
TOKEN = "hf_" + "PublishTestToken" * 2 + "x" * 2  # shaped like a real token: hf_ + 34 letters
REPO_ID = "test-org/tiny-linear"
# Two steps of the shared tiny dataset's first stage are enough to have an export to publish.
FAST_TRAINING = ["train.max_steps=2", "train.checkpoint_every=0"]
EVAL_OVERRIDES = [
    "eval.after_training=true", "eval.tasks=[perplexity,passkey]", "eval.lengths=[128]", "eval.depths=[0.5]",
    "eval.items_per_cell=1", "eval.perplexity.max_windows=1", "eval.perplexity.max_documents=2",
]


def stand_in_env(monkeypatch: pytest.MonkeyPatch, hub: HubStandIn, token: str | None = TOKEN) -> None:
    """Point the in-process huggingface_hub client at `hub` with `token` (or none at all) and LFS uploads."""
    monkeypatch.setattr(constants, "ENDPOINT", hub.endpoint)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", "/nonexistent/token")  # no stored login
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    if token is None:
        monkeypatch.delenv("HF_TOKEN", raising=False)
    else:
        monkeypatch.setenv("HF_TOKEN", token)


@pytest.fixture(scope="module")
def published(dataset_dir, tmp_path_factory):  # noqa: F811
    """A run trained, evaluated and published to the stand-in by extend/train.py: (run folder, stand-in)."""
    run = tmp_path_factory.mktemp("published") / "run"
    cfg = compose_typed(f"data.output_dir={dataset_dir}", f"output_dir={run}", "run_name=tiny-linear", *FAST_TRAINING,
                        *EVAL_OVERRIDES,
                        f"publish.repo_id={REPO_ID}", "publish.private=true")
    with HubStandIn(TOKEN) as hub, pytest.MonkeyPatch.context() as mp:
        stand_in_env(mp, hub)
        train(cfg)
    return run, hub


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {rel: (folder / rel).read_bytes() for rel in files_under(folder)}


def test_training_publishes_the_verified_folder_file_by_file(published):
    run, hub = published
    staged = run / "publish"
    repo = hub.repos[REPO_ID]
    assert repo.private
    assert {k: v for k, v in repo.files.items() if k != ".gitattributes"} == folder_bytes(staged)
    assert sorted(files_under(staged)) == sorted([
        "README.md", "adapter/adapter_config.json", "adapter/adapter_model.safetensors", "chat_template.jinja",
        "config.json", "eval/eval.json", "eval/passkey.png", "eval/passkey_heatmap.png", "eval/perplexity.png",
        "eval/report.md", "generation_config.json", "model.safetensors", "run_card.json", "tokenizer.json",
        "tokenizer_config.json",
    ])  # peft's adapter/README.md, checkpoints and the run's logs stay home
    # Weights travelled through the LFS batch API, the rest as regular blobs, in one commit.
    weights = {"model.safetensors", "adapter/adapter_model.safetensors"}
    assert repo.lfs_paths == weights
    assert sorted(hub.lfs_uploads) == sorted(sha256((staged / w).read_bytes()).hexdigest() for w in weights)
    assert [c["summary"] for c in repo.commits] == ["Publish tiny-linear with extend"]
    assert not (run / "publish.tmp").exists()


def test_card_metadata_parses_with_huggingface_hub_and_carries_the_eval_results(published):
    run, hub = published
    card = ModelCard(hub.repos[REPO_ID].files["README.md"].decode())
    data = card.data
    assert data.library_name == "transformers" and data.pipeline_tag == "text-generation"
    assert {"extend", "long-context", "rope-linear", "lora"} <= set(data.tags)
    assert data.get("base_model") is None  # a random preset is not a Hub model: nothing is invented
    assert data.model_name == "tiny-linear"
    evaluated = json.loads((run / "final" / "eval" / "after_training" / "eval.json").read_text())["results"]["tiny-linear"]
    expected = {(task, cell["length"], block["metric"], round(cell["value"], 6))
                for task, block in evaluated.items() for cell in block["by_length"].values()}
    assert {(r.dataset_type, int(r.dataset_config.split("-")[0]), r.metric_type, r.metric_value)
            for r in data.eval_results} == expected
    text = card.text
    assert "**Context length: 128 tokens**" in text
    assert "| vLLM (`max_model_len`) | 128 |" in text
    assert "`linear` (position interpolation: theta_i / s): factor=2.0, original_max_position_embeddings=64" in text
    assert f'vllm serve {REPO_ID} --max-model-len 128' in text
    assert f"pretrained={REPO_ID},max_length=128" in text
    assert 'PeftModel.from_pretrained(base, "test-org/tiny-linear", subfolder="adapter")' not in text  # base not on the Hub
    assert "![perplexity](eval/perplexity.png)" in text and "| `model.safetensors` |" in text
    assert "LoRA r=8, alpha=16" in text and "| training | 2 steps, 1,024 tokens" in text
    assert "Evaluation `after_training` (the one training ran on its export)." in text


def test_published_files_name_no_local_path_and_no_token(published):
    run, hub = published
    files = hub.repos[REPO_ID].files
    forbidden = [str(run.parent), str(Path.home()) + "/", TOKEN]
    for rel, data in files.items():
        for text in forbidden:
            assert text.encode() not in data, f"{rel} contains {text}"
    card = json.loads(files["run_card.json"])
    assert card["config"]["output_dir"] == "<local>/run" and card["steps"] == 2
    evaluated = json.loads(files["eval/eval.json"])
    assert evaluated["model"] == REPO_ID and evaluated["conditions"][0]["model"] == REPO_ID
    assert files["eval/report.md"].decode().startswith(f"# Evaluation of {REPO_ID}")
    assert json.loads(files["adapter/adapter_config.json"])["base_model_name_or_path"] is None


def test_upload_resumes_after_a_failed_commit_and_mirrors_the_folder(published, monkeypatch):
    staged = published[0] / "publish"
    with HubStandIn(TOKEN) as hub:
        stand_in_env(monkeypatch, hub)
        hub.repos[REPO_ID] = stale = Repo(private=False)
        stale.files["adapter/old_notes.txt"] = b"from an earlier publish"
        hub.fail_next_commit = True
        with pytest.raises(PublishError, match=r"HTTP 500.*rerun the same command to resume"):
            upload(staged, REPO_ID, TOKEN, private=False, commit_message="first try")
        assert len(hub.lfs_uploads) == 2 and stale.commits == []
        upload(staged, REPO_ID, TOKEN, private=False, commit_message="second try")
        assert len(hub.lfs_uploads) == 2, "the LFS objects that arrived before the failure are not sent again"
        assert {k: v for k, v in stale.files.items() if k != ".gitattributes"} == folder_bytes(staged)
        upload(staged, REPO_ID, TOKEN, private=False, commit_message="nothing changed")
        assert [c["summary"] for c in stale.commits] == ["second try"]


def test_xet_pipeline_uploads_the_same_files(published, monkeypatch):
    staged = published[0] / "publish"
    with HubStandIn(TOKEN, regular_only=True) as hub:
        stand_in_env(monkeypatch, hub)
        monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", False)  # huggingface_hub's default path with hf_xet
        upload(staged, REPO_ID, TOKEN, private=True, commit_message="via the streamed pipeline")
        assert {k: v for k, v in hub.repos[REPO_ID].files.items() if k != ".gitattributes"} == folder_bytes(staged)


def test_dry_run_command_writes_the_exact_folder_and_sends_nothing(published, tmp_path):
    run, _ = published
    with HubStandIn(TOKEN) as hub:
        env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")}
        env.update(PYTHONPATH=str(REPO), HF_ENDPOINT=hub.endpoint, HF_HOME=str(tmp_path / "hf_home"))
        proc = subprocess.run(
            [sys.executable, "-m", "extend.publish", f"run={run}", f"repo_id={REPO_ID}", "private", "dry_run",
             f"publish.output_dir={tmp_path / 'dry'}"],
            capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert hub.requests == []
    assert folder_bytes(tmp_path / "dry") == folder_bytes(run / "publish")  # exactly what was uploaded
    out = proc.stdout
    assert "verified, reloads with stock transformers at 128 tokens" in out
    for rel in files_under(tmp_path / "dry"):
        assert f"  {rel} " in out
    assert "left out of the export (not part of a published checkpoint): adapter/README.md" in out
    assert "dry run: nothing was sent; without dry_run these 15 files" in out and f"{hub.endpoint}/{REPO_ID} (private)" in out
    assert TOKEN not in out + proc.stderr


def copy_run(run: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(run / "final", target / "final")
    return target


@pytest.mark.parametrize("case", ["no_final", "bad_repo_ids", "no_token", "adapter_only", "output_dir"])
def test_bad_input_gets_one_error_and_uploads_nothing(published, tmp_path, monkeypatch, case):
    run, _ = published
    with HubStandIn(TOKEN) as hub:
        stand_in_env(monkeypatch, hub, token=None if case == "no_token" else TOKEN)
        attempts = {
            "no_final": [(PublishConfig(run=str(tmp_path), repo_id=REPO_ID), f"{tmp_path} has no final/ folder")],
            "bad_repo_ids": [(PublishConfig(run=str(run), repo_id=bad), "is not a Hub repository id: use ORG/NAME")
                             for bad in ("tiny", "a/b/c", "org/bad--name", "org/-x", "org/name with space")],
            "no_token": [(PublishConfig(run=str(run), repo_id=REPO_ID), NO_TOKEN)],
            # Two reasons, in the one error: the run changed its positions, and its base is not on the Hub.
            "adapter_only": [(PublishConfig(run=str(run), repo_id=REPO_ID, adapter_only=True, dry_run=True),
                              "an adapter cannot carry a RoPE change")],
            # Staging replaces its folder: never the run, the export, or a folder of other files.
            "output_dir": [(PublishConfig(run=str(run), repo_id=REPO_ID, dry_run=True, output_dir=str(folder)),
                            "holds files publish did not stage (or the export itself)")
                           for folder in (run, run / "final", REPO / "tests")],
        }[case]
        for cfg, message in attempts:
            with pytest.raises(ConfigError) as err:
                publish_run(cfg)
            assert len(err.value.problems) == (2 if case == "adapter_only" else 1)
            assert message in err.value.problems[0]
        assert hub.requests == []


@pytest.mark.parametrize("damage,message", [
    ("token", "tokenizer_config.json: contains a Hugging Face token"),
    ("path", "chat_template.jinja: mentions the local path"),
    ("length", "tokenizer would derive 512 tokens, not the promised 128"),
])
def test_folder_failing_verification_is_never_uploaded(published, tmp_path, monkeypatch, damage, message):
    run = copy_run(published[0], tmp_path)
    final = run / "final"
    tokenizer = json.loads((final / "tokenizer_config.json").read_text())
    if damage == "token":
        tokenizer["note"] = "hf_" + "A1" * 18
    elif damage == "length":
        tokenizer["model_max_length"] = 512
    (final / "tokenizer_config.json").write_text(json.dumps(tokenizer))
    if damage == "path":
        (final / "chat_template.jinja").write_text(f"{{# written in {tmp_path / 'x'} #}}")
    with HubStandIn(TOKEN) as hub:
        stand_in_env(monkeypatch, hub)
        with pytest.raises(PublishError, match="verification failed, nothing was uploaded") as err:
            publish_run(PublishConfig(run=str(run), repo_id=REPO_ID))
        assert message in str(err.value)
        assert hub.requests == []
    assert not (run / "publish").exists() and not (run / "publish.tmp").exists()


def test_checkpoint_that_fails_to_reload_is_never_uploaded(published, tmp_path, monkeypatch):
    # Stock transformers loads a config with a layer more than the weights hold, with only a warning and
    # random weights for that layer; the fresh-process check refuses it.
    run = copy_run(published[0], tmp_path)
    config = json.loads((run / "final" / "config.json").read_text())
    config["num_hidden_layers"] += 1
    (run / "final" / "config.json").write_text(json.dumps(config))
    with HubStandIn(TOKEN) as hub:
        stand_in_env(monkeypatch, hub)
        with pytest.raises(PublishError) as err:
            publish_run(PublishConfig(run=str(run), repo_id=REPO_ID))
        assert "reloading with stock transformers: missing keys ['model.layers.2." in str(err.value)
        assert hub.requests == []
    assert not (run / "publish").exists()


def test_verification_refuses_pickles_and_stray_files(published, tmp_path):
    folder = tmp_path / "staged"
    shutil.copytree(published[0] / "publish", folder)
    (folder / "training_args.bin").write_bytes(b"\x80\x04\x95 pickled")
    (folder / "eval" / "extra.png").write_bytes(b"PK\x03\x04 a torch.save archive")
    (folder / "notes.txt").write_text("stray")
    with (folder / "model.safetensors").open("ab") as f:
        f.write(b"trailing bytes")
    expect = Expectations("merged", 128, False, None, True, TOKEN, [])
    problems = check_files(folder, expect)
    assert any(p.startswith("training_args.bin: not part of a published checkpoint") for p in problems)
    assert "training_args.bin: is a pickle or torch.save archive; only safetensors are published" in problems
    assert "eval/extra.png: is a pickle or torch.save archive; only safetensors are published" in problems
    assert any(p.startswith("notes.txt: not part of") for p in problems)
    assert any(p.startswith("model.safetensors: holds") for p in problems)
    assert len(problems) == 5


@pytest.mark.parametrize("overrides,message", [
    (["publish.repo_id=not/a/repo"], "publish.repo_id='not/a/repo' is not a Hub repository id"),
    (["publish.repo_id=org/name", "publish.run=outputs/x"], "training publishes the run it trains"),
    (["publish.repo_id=org/name", "publish.adapter_only=true"], "an adapter cannot carry a RoPE change"),
    (["publish.repo_id=org/name"], NO_TOKEN),
    (["publish.repo_id=org/name", "publish.eval=quick"], "training publishes the evaluation it runs itself"),
])
def test_training_refuses_bad_publish_settings_before_it_starts(make_config, monkeypatch, overrides, message):
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", "/nonexistent/token")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    cfg = make_config(*overrides)
    with pytest.raises(ConfigError) as err:
        train(cfg)
    assert message in str(err.value)
    assert not Path(cfg.output_dir, "final").exists() and not Path(cfg.output_dir, "checkpoints").exists()


HUB_BASE = "test-org/tiny-llama"


@pytest.fixture(scope="module")
def adapter_run(dataset_dir, tmp_path_factory):  # noqa: F811
    """A LoRA run that keeps its base's positions, the base being a Hub id found in a stand-in Hugging Face
    cache (with a card that states its license): (run folder, cache folder)."""
    root = tmp_path_factory.mktemp("adapter_run")
    cache = root / "hf_cache"
    repo = cache / ("models--" + HUB_BASE.replace("/", "--"))
    snapshot = repo / "snapshots" / ("0" * 40)
    config = load_base_config(ModelConfig(name_or_path="tiny-llama"), tokenizer=load_tokenizer("tiny", "~/.cache/extend"))
    config.max_position_embeddings = 128  # the shared dataset's stages reach 128 tokens
    build_random(config).save_pretrained(snapshot)
    (snapshot / "README.md").write_text("---\nlicense: mit\n---\n# A tiny base\n")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    cfg = compose_typed(f"model.name_or_path={HUB_BASE}", "rope.type=none", "rope.factor=1", f"data.output_dir={dataset_dir}",
                        f"output_dir={root / 'run'}", "train.max_steps=1", "train.checkpoint_every=0")
    with pytest.MonkeyPatch.context() as mp, warnings.catch_warnings():
        mp.setattr(constants, "HF_HUB_CACHE", str(cache))
        mp.setattr(constants, "HF_HUB_OFFLINE", True)
        # peft asks the Hub whether the base's vocabulary changed; offline it warns and assumes not.
        warnings.filterwarnings("ignore", message=".*(Unable to fetch remote file|Could not find a config file).*")
        train(cfg)
    return root / "run", cache


def test_adapter_only_layout_names_its_hub_base_and_inherits_its_license(adapter_run, tmp_path, monkeypatch):
    run, cache = adapter_run
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    cfg = PublishConfig(run=str(run), repo_id="test-org/tiny-adapter", adapter_only=True, dry_run=True)
    folder = tmp_path / "staged"
    folder.mkdir()
    left_out = stage(ExportInfo.read(run / "final"), cfg, folder)
    assert files_under(folder) == ["README.md", "adapter_config.json", "adapter_model.safetensors",
                                   "chat_template.jinja", "run_card.json", "tokenizer.json", "tokenizer_config.json"]
    assert {"config.json", "model.safetensors", "adapter/README.md"} <= set(left_out)
    assert json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"] == HUB_BASE
    card = ModelCard.load(folder / "README.md")
    assert card.data.base_model == HUB_BASE and card.data.base_model_relation == "adapter"
    assert card.data.library_name == "peft" and card.data.license == "mit"
    assert "`mit` (inherited from the base model's card)" in card.text
    assert "AutoPeftModelForCausalLM.from_pretrained(\"test-org/tiny-adapter\")" in card.text
    assert f"vllm serve {HUB_BASE} --enable-lora --lora-modules adapter=test-org/tiny-adapter" in card.text
    expect = Expectations("adapter_only", 128, False, HUB_BASE, False, TOKEN, machine_paths(run))
    assert check_files(folder, expect) + check_contents(folder, expect) + check_card(folder, expect) == []


def test_short_keys_and_flags_of_the_command():
    assert expand_short_keys(["run=outputs/tiny", "repo_id=me/x", "private", "adapter_only=false", "dry_run",
                              "output_dir=o", "publish.license=mit", "--cfg", "job"]) == [
        "publish.run=outputs/tiny", "publish.repo_id=me/x", "publish.private=true", "publish.adapter_only=false",
        "publish.dry_run=true", "output_dir=o", "publish.license=mit", "--cfg", "job"]


def test_scrub_keeps_relative_paths_and_hides_absolute_ones():
    renames = {"/runs/x/final": "org/name"}
    data = {"model": "/runs/x/final", "plots": "/runs/x/final/eval", "data": "/home/me/corpus/part.jsonl",
            "relative": "outputs/x", "overrides": ["data.output_dir=/scratch/me/data", "recipe=tiny"], "n": 3}
    assert scrub_paths(data, renames) == {
        "model": "org/name", "plots": "org/name/eval", "data": "<local>/part.jsonl", "relative": "outputs/x",
        "overrides": ["data.output_dir=<local>/data", "recipe=tiny"], "n": 3}


def test_publish_carries_the_chosen_evaluation_and_the_card_names_it(published, tmp_path):
    """A later evaluation of the export lives beside training's; publish carries after_training unless
    publish.eval picks another, and refuses to guess between several."""
    run = copy_run(published[0], tmp_path)
    final, evals = run / "final", run / "final" / "eval"
    shutil.copytree(evals / "after_training", evals / "quick")
    quick = json.loads((evals / "quick" / "eval.json").read_text())
    own = quick["conditions"][0]["name"]
    quick["results"][own]["perplexity"]["by_length"]["128"]["value"] = 999.0
    (evals / "quick" / "eval.json").write_text(json.dumps(quick))
    assert evaluations(final) == ["after_training", "quick"]

    def staged(evaluation):
        folder = tmp_path / f"staged-{evaluation}"
        folder.mkdir()
        info = ExportInfo.read(final, evaluation)
        left_out = stage(info, PublishConfig(run=str(run), repo_id=REPO_ID), folder)
        card = ModelCard.load(folder / "README.md")
        published_eval = json.loads((folder / "eval" / "eval.json").read_text())
        return info.eval_name, card, published_eval, left_out, files_under(folder)

    name, card, published_eval, left_out, files = staged(None)
    assert name == "after_training" and "Evaluation `after_training` (the one training ran" in card.text
    assert published_eval["results"][own]["perplexity"]["by_length"]["128"]["value"] != 999.0
    assert "eval/quick/eval.json" in left_out and not any(f.startswith("eval/quick") for f in files)
    name, card, published_eval, _, _ = staged("quick")
    assert name == "quick" and "Evaluation `quick`." in card.text
    assert published_eval["results"][own]["perplexity"]["by_length"]["128"]["value"] == 999.0
    assert 999.0 in {r.metric_value for r in card.data.eval_results}

    shutil.rmtree(evals / "after_training")
    shutil.copytree(evals / "quick", evals / "other")
    with pytest.raises(ConfigError) as err:
        ExportInfo.read(final)
    assert err.value.problems == [f"{evals} holds 2 evaluations (other, quick) and none is the run's own "
                                  "(after_training): choose the one the card carries with publish.eval=NAME"]
    with pytest.raises(ConfigError, match=r"publish.eval='nope': .* holds no such evaluation \(it holds: other, quick\)"):
        publish_run(PublishConfig(run=str(run), repo_id=REPO_ID, dry_run=True, eval="nope"))
    assert not (run / "publish").exists()
