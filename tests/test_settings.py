"""Settings: the YAML defaults equal the dataclass defaults; validation names the key."""

from __future__ import annotations

import dataclasses

import pytest

from swupd_repo.errors import SettingsError
from swupd_repo.settings import DEFAULTS_FILE, Settings, load_settings, load_yaml, make_settings


def test_yaml_defaults_match_dataclass() -> None:
    data = load_yaml(DEFAULTS_FILE)
    fields = {f.name for f in dataclasses.fields(Settings)}
    assert set(data) == fields
    assert make_settings(data) == Settings()


def test_bitbake_style_strings_are_coerced() -> None:
    s = make_settings({"version_step": "20", "check": "1", "docker_volumes": "a:b c:d",
                       "storage_dir": "/tmp/x", "os_version": ""})
    assert s.version_step == 20 and s.check is True and s.os_version is None
    assert s.docker_volumes == ("a:b", "c:d")


@pytest.mark.parametrize("values, word", [
    ({"backend": "podman"}, "backend"),
    ({"version_step": "ten"}, "version_step"),
    ({"version_step": 0}, "version_step"),
    ({"check": "maybe"}, "check"),
    ({"nonsense": 1}, "nonsense"),
    ({"signing_key": "/k"}, "SIGNING_CERT"),
])
def test_bad_values_name_the_key(values: dict, word: str) -> None:
    with pytest.raises(SettingsError, match=word):
        make_settings(values)


def test_config_file_and_overrides(tmp_path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("backend: docker\nversion_step: 5\n")
    s = load_settings(cfg, {"version_step": 7, "backend": None})
    assert s.backend == "docker" and s.version_step == 7


def test_bad_yaml_names_line(tmp_path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("backend: [native\n")
    with pytest.raises(SettingsError, match=r"c\.yaml at line"):
        load_settings(cfg)


def test_jobs_are_bounded_by_cores_and_memory() -> None:
    """The rule: jobs (0 = cores), at most the usable cores, at most one per WORKER_MEMORY
    of available memory, at least one."""
    from swupd_repo.swupd.workpool import WORKER_MEMORY, usable_cores, worker_count

    plenty = 64 * WORKER_MEMORY
    assert worker_count(0, 8, plenty) == 8
    assert worker_count(3, 8, plenty) == 3
    assert worker_count(100000, 8, plenty) == 8
    assert worker_count(0, 8, 3 * WORKER_MEMORY + 1) == 3
    assert worker_count(0, 8, 0) == 1
    assert worker_count(100000, 8, None) == 8
    assert 1 <= Settings(jobs=100000).workers <= usable_cores()
    assert Settings(jobs=1).workers == 1


def test_rebase_is_a_boolean_of_the_native_backend() -> None:
    assert make_settings({"rebase": "1"}).rebase is True
    with pytest.raises(SettingsError, match="rebase in SWUPD_REPO_REBASE needs the native"):
        make_settings({"rebase": "1", "backend": "docker"},
                      origins={"rebase": "SWUPD_REPO_REBASE"})
