"""engine/hub.py against a local server that answers like the Hugging Face Hub (tests/fake_hub.py): a complete pull,
an interrupted one that resumes, a cancel, a corrupt file, a gated repo, no network at all."""

from __future__ import annotations

import random
import stat

import pytest

from engine import hub
from engine.errors import CancelledError, ModelError
from engine.events import CancelToken
from tests.conftest import make_tiny_model_dir
from tests.fake_hub import FakeHub, FakeRepo, closed_port_url, fake_hub_env, repo_from_folder

JUNK = {"modeling_custom.py": b"raise SystemExit('remote code ran')\n", "pytorch_model.bin": b"\x80pickle" * 100,
        "consolidated.safetensors": b"other format" * 100, "README.md": b"# tiny\n"}
TOKEN = "hf_fakeTokenForTests123"


@pytest.fixture(scope="module")
def model_folders(tmp_path_factory):
    single = make_tiny_model_dir(tmp_path_factory.mktemp("single"))
    sharded = tmp_path_factory.mktemp("sharded")
    make_tiny_model_dir(sharded)
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(sharded).save_pretrained(sharded, max_shard_size="150KB")
    (sharded / "model.safetensors").unlink(missing_ok=True)
    return single, sharded


@pytest.fixture
def fake_hub(model_folders, tmp_path, monkeypatch):
    single, sharded = model_folders
    plain = repo_from_folder(single)
    plain.files.update(JUNK)
    repos = {"folio-test/tiny": plain, "folio-test/tiny-sharded": repo_from_folder(sharded),
             "folio-test/gated": repo_from_folder(single, gated=True, allowed_tokens={TOKEN})}
    with fake_hub_env(repos, monkeypatch, tmp_path) as server:
        yield server


def progress_log():
    events = []
    return events, events.append


def test_complete_pull_fetches_only_what_folio_needs_and_loads(fake_hub, model_folders):
    events, progress = progress_log()
    folder = hub.pull_model("folio-test/tiny", progress)
    single = model_folders[0]
    expected = {p.name for p in single.iterdir()}
    assert {p.name for p in folder.iterdir()} == expected
    for name in expected:
        assert (folder / name).read_bytes() == (single / name).read_bytes()
    fetched = {path.rsplit("/", 1)[-1] for method, path, _, _ in fake_hub.requests if method == "GET"
               and "/resolve/" in path}
    assert fetched == expected and not fetched & set(JUNK)  # never code, pickles or other formats
    downloads = [e for e in events if e.stage == "download"]
    total = sum((single / n).stat().st_size for n in expected)
    assert downloads[-1].done == downloads[-1].total == total
    assert [e.done for e in downloads] == sorted(e.done for e in downloads)
    assert [e for e in events if e.stage == "verify"][-1].done == total
    fake_hub.requests.clear()
    assert hub.pull_model("folio-test/tiny") == folder and hub.installed_folder("folio-test/tiny") == folder
    assert fake_hub.requests == []  # installed: no network at all

    from engine.model import load_model

    loaded = load_model("folio-test/tiny", device="cpu", dtype="float32")
    assert loaded.path == folder and loaded.name == "folio-test/tiny"


def test_sharded_model_takes_its_index_and_shards(fake_hub, model_folders):
    folder = hub.pull_model("folio-test/tiny-sharded")
    shards = sorted(p.name for p in folder.glob("model-*.safetensors"))
    assert len(shards) >= 2 and (folder / hub.WEIGHTS_INDEX).exists()


def add_big_repo(server: FakeHub) -> bytes:
    """A repo whose weights file spans more than one of huggingface_hub's 10 MiB reads."""
    weights = random.Random(0).randbytes(12 << 20)
    server.repos["folio-test/big"] = FakeRepo({"config.json": b"{}", "tokenizer.json": b"{}",
                                               "model.safetensors": weights})
    return weights


def test_dropped_connection_resumes_with_a_range_request(fake_hub):
    weights = add_big_repo(fake_hub)
    fake_hub.faults.drop_after["model.safetensors"] = 11 << 20
    folder = hub.pull_model("folio-test/big")
    gets = fake_hub.file_gets("model.safetensors")
    assert gets[0] is None and len(gets) == 2 and gets[1] == f"bytes={10 << 20}-"  # resumed, not restarted
    assert (folder / "model.safetensors").read_bytes() == weights


def test_cancelled_pull_resumes_with_the_files_it_finished(fake_hub):
    cancel = CancelToken()
    shards = sorted(n for n in fake_hub.repos["folio-test/tiny-sharded"].files if n.startswith("model-"))
    fake_hub.faults.delay_s[shards[1]] = 0.05
    done_first = []

    def progress(event):
        if event.stage == "download" and fake_hub.file_gets(shards[1]) and not done_first:
            done_first.append(event.done)
            cancel.cancel()

    with pytest.raises(CancelledError):
        hub.pull_model("folio-test/tiny-sharded", progress, cancel)
    assert hub.installed_folder("folio-test/tiny-sharded") is None
    assert not list(hub.hub_cache_dir().rglob("*.incomplete"))  # nothing half-written left behind
    fake_hub.faults.delay_s.clear()
    fake_hub.requests.clear()
    hub.pull_model("folio-test/tiny-sharded")
    assert fake_hub.file_gets(shards[0]) == []  # finished before the cancel: not fetched again
    assert len(fake_hub.file_gets(shards[1])) == 1


def test_cancel_stops_within_a_file(fake_hub):
    weights = add_big_repo(fake_hub)
    cancel = CancelToken()
    seen = []

    def progress(event):
        seen.append(event)
        if event.stage == "download" and event.done > 1 << 20:  # inside the weights file
            cancel.cancel()

    with pytest.raises(CancelledError):
        hub.pull_model("folio-test/big", progress, cancel)
    assert 1 << 20 < seen[-1].done < len(weights) < seen[-1].total  # stopped after the first read of the weights
    assert hub.installed_folder("folio-test/big") is None
    assert not list(hub.hub_cache_dir().rglob("*.incomplete"))
    assert not [p for p in hub.hub_cache_dir().rglob("*") if p.is_file() and p.stat().st_size >= 10 << 20]


def test_corrupt_file_is_detected_deleted_and_pulled_again(fake_hub, model_folders):
    fake_hub.faults.corrupt.add("model.safetensors")
    with pytest.raises(ModelError, match=r"model.safetensors .* is damaged \(its checksum.*deleted.*Pull"):
        hub.pull_model("folio-test/tiny")
    assert hub.installed_folder("folio-test/tiny") is None
    fake_hub.faults.corrupt.clear()
    folder = hub.pull_model("folio-test/tiny")
    assert (folder / "model.safetensors").read_bytes() == (model_folders[0] / "model.safetensors").read_bytes()


def test_gated_repo_explains_licence_and_token(fake_hub):
    with pytest.raises(ModelError) as error:
        hub.pull_model("folio-test/gated")
    message = str(error.value)
    assert "gated" in message and "licence" in message and "access token" in message
    assert "/folio-test/gated" in message and "model picker" in message
    path = hub.save_hub_token("hf_wrongToken")
    with pytest.raises(ModelError, match="refused the access token"):
        hub.pull_model("folio-test/gated")
    hub.save_hub_token(TOKEN)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.read_text().strip() == TOKEN
    folder = hub.pull_model("folio-test/gated")
    assert (folder / "config.json").exists()
    assert all(had_token for method, path, _, had_token in fake_hub.requests[-3:])


def test_token_is_never_in_messages(fake_hub):
    hub.save_hub_token("hf_secretValue")
    with pytest.raises(ModelError) as error:
        hub.pull_model("folio-test/gated")
    assert "hf_secretValue" not in str(error.value)
    with pytest.raises(ModelError, match="spaces"):
        hub.save_hub_token("hf_a b")
    hub.save_hub_token("")
    assert hub.stored_hub_token() is None and not hub.token_path().exists()


def test_no_network_is_a_clear_message_and_installed_models_still_load(fake_hub, monkeypatch):
    folder = hub.pull_model("folio-test/tiny")
    monkeypatch.setenv("HF_ENDPOINT", closed_port_url())
    assert hub.pull_model("folio-test/tiny") == folder  # installed: used as it is
    with pytest.raises(ModelError, match=r"Could not download 'folio-test/tiny-sharded'.*internet"):
        hub.pull_model("folio-test/tiny-sharded")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="HF_HUB_OFFLINE"):
        hub.pull_model("folio-test/tiny-sharded")


def test_unknown_repo(fake_hub):
    with pytest.raises(ModelError, match="has no model 'folio-test/missing'"):
        hub.pull_model("folio-test/missing")


def test_disk_space_is_checked_before_downloading(fake_hub, monkeypatch):
    monkeypatch.setattr(hub, "free_disk", lambda folder: 1000)
    with pytest.raises(ModelError, match="needs .* more on the disk, but only 1000 B is free"):
        hub.pull_model("folio-test/tiny")
    assert fake_hub.file_gets("model.safetensors") == []


def test_remove_frees_the_cache(fake_hub):
    hub.pull_model("folio-test/tiny")
    assert hub.remove_model("folio-test/tiny") > 0
    assert hub.installed_folder("folio-test/tiny") is None
    assert hub.remove_model("folio-test/tiny") == 0


def test_needed_files_refuses_repos_without_safetensors():
    with pytest.raises(ModelError, match="no safetensors"):
        hub.needed_files(["config.json", "pytorch_model.bin", "tokenizer.json"], None)
    with pytest.raises(ModelError, match="shards the repo does not have"):
        hub.needed_files(["config.json", hub.WEIGHTS_INDEX], {"weight_map": {"a": "model-1.safetensors"}})
    assert hub.needed_files(["config.json", "tokenizer.json", "model.safetensors", "x.py"], None) == [
        "config.json", "tokenizer.json", "model.safetensors"]


def test_models_command_pulls_lists_and_removes(fake_hub, capsys, monkeypatch):
    import io
    import json

    from engine.cli import main

    assert main(["models", "pull", "folio-test/tiny"]) == 0
    folder = capsys.readouterr().out.strip()
    assert hub.installed_folder("folio-test/tiny") == hub.Path(folder)
    assert main(["models", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert {m["id"] for m in listed["models"]} >= {"smollm2-135m-instruct", "qwen2.5-7b-instruct"}
    assert sum(m["recommended_weights"] is not None for m in listed["models"]) == 1
    assert main(["models", "remove", "folio-test/tiny"]) == 0 and "freed" in capsys.readouterr().err
    assert main(["models", "remove", "folio-test/tiny"]) == 1
    monkeypatch.setattr("sys.stdin", io.StringIO(TOKEN + "\n"))
    assert main(["models", "token"]) == 0 and hub.stored_hub_token() == TOKEN
    assert TOKEN not in capsys.readouterr().err
    assert main(["models", "pull", "folio-test/gated"]) == 0
    assert main(["models", "remove", "default"]) == 2 and "cannot be removed" in capsys.readouterr().err
