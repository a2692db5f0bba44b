"""``reelgate google doctor``: checks credentials and lists reachable models against the fake
Google server, in both modes, without ever creating an operation."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import launcher
from tests.fake_google import FakeGoogle, write_service_account


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeGoogle]:
    srv = FakeGoogle(b"not needed: doctor never downloads")
    yield srv
    srv.close()


def doctor(env: dict[str, str], tmp_path: Path) -> tuple[int, dict]:  # type: ignore[type-arg]
    clean = {k: v for k, v in os.environ.items() if not k.startswith("REELGATE_")}
    out = launcher.run(
        [sys.executable, "-m", "reelgate.backends.google.cli", "doctor", "--json"],
        env={**clean, "REELGATE_DATA_DIR": str(tmp_path), **env}, timeout=60)
    assert out.stdout, out.stderr
    return out.returncode, json.loads(out.stdout)


def test_doctor_gemini_key(fake: FakeGoogle, tmp_path: Path) -> None:
    code, report = doctor({"REELGATE_GOOGLE_API_KEY": "key-good",
                           "REELGATE_GOOGLE_BASE_URL": fake.url}, tmp_path)
    assert code == 0 and report["ok"]
    (ch,) = report["channels"]
    assert ch["credentials_ok"] and ch["mode"] == "gemini"
    served = {m["model"]: (m["serves"], m["reachable"]) for m in ch["models"]}
    assert served == {
        "veo-3.1-generate-preview": (["veo3", "veo3-pro", "veo3.1", "veo3.1-pro"], True),
        "veo-3.1-fast-generate-preview": (["veo3-fast", "veo3.1-fast"], True),
    }
    assert not fake.calls("create")  # nothing was generated


def test_doctor_reports_a_bad_key_and_an_unknown_model(fake: FakeGoogle, tmp_path: Path) -> None:
    code, report = doctor({"REELGATE_GOOGLE_API_KEY": "key-revoked",
                           "REELGATE_GOOGLE_BASE_URL": fake.url}, tmp_path)
    assert code == 1 and not report["channels"][0]["credentials_ok"]
    assert "API key not valid" in report["channels"][0]["error"]
    code, report = doctor({"REELGATE_GOOGLE_API_KEY": "key-good",
                           "REELGATE_GOOGLE_BASE_URL": fake.url,
                           "REELGATE_GOOGLE_MODELS": '{"veo3": "veo-3.0-generate-001"}'},
                          tmp_path)
    assert code == 1
    bad = [m for m in report["channels"][0]["models"] if not m["reachable"]]
    assert [(m["model"], m["serves"]) for m in bad] == [("veo-3.0-generate-001", ["veo3"])]
    assert bad[0]["error"].startswith("404")


def test_doctor_vertex_service_account_and_express(fake: FakeGoogle, tmp_path: Path) -> None:
    sa = write_service_account(tmp_path / "sa.json", f"{fake.url}/token")
    channels = [{"name": "project", "mode": "vertex", "project": "fake-project",
                 "credentials_file": str(sa)},
                {"name": "express", "mode": "vertex", "api_key": "key-good"}]
    code, report = doctor({"REELGATE_GOOGLE_CHANNELS": json.dumps(channels),
                           "REELGATE_GOOGLE_BASE_URL": fake.url}, tmp_path)
    assert code == 0, report
    assert [c["channel"] for c in report["channels"]] == ["project", "express"]
    for ch in report["channels"]:
        assert {m["model"] for m in ch["models"]} == {"veo-3.1-generate-001",
                                                      "veo-3.1-fast-generate-001"}
    assert fake.calls("token")  # the service account's key was exchanged for a token
    assert not fake.calls("create")


def test_doctor_without_configuration_says_what_to_set(tmp_path: Path) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("REELGATE_")}
    out = launcher.run([sys.executable, "-m", "reelgate.backends.google.cli", "doctor"],
                       env={**clean, "REELGATE_DATA_DIR": str(tmp_path)}, timeout=60)
    assert out.returncode == 2
    assert "REELGATE_GOOGLE_API_KEY" in out.stderr
