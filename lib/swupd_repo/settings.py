"""Settings: one validated object built from YAML, BitBake variables or CLI flags.

Validation happens once, here, at the edge; everything past this point trusts ``Settings``.
The defaults live in ``conf/swupd-repo.yaml`` (shared with the bbclass and the CLI); the
dataclass defaults below mirror them so the library also works from a wheel, and a test keeps
the two equal.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .bundles.definitions import BundleDef, from_mapping
from .errors import SettingsError

BACKENDS = ("native", "docker")
COMPRESSIONS = ("smallest", "xz", "gzip")

#: The defaults file in a source checkout (editable install, BitBake's addpylib).
DEFAULTS_FILE = Path(__file__).resolve().parents[2] / "conf" / "swupd-repo.yaml"


@dataclass(frozen=True)
class Settings:
    """Everything one run needs; field names are the YAML keys."""

    storage_dir: Path | None = None
    backend: str = "native"
    version_step: int = 10
    os_version: int | None = None
    disk_layout: Path | None = None
    disk_image: Path | None = None
    partition: str | None = None
    deltapack_versions: int = 2
    keep_trees: int = 0
    compression: str = "gzip"
    jobs: int = 0
    max_file_size: int = 4 << 30
    signing_key: Path | None = None
    signing_cert: Path | None = None
    signing_chain: Path | None = None
    signing_passphrase_file: Path | None = None
    docker_image: str = "ostroproject/ostro-swupd-server"
    docker_command: str = "/home/clrbuilder/projects/process_rootfs.sh"
    docker_privileged: bool = True
    docker_volumes: tuple[str, ...] = field(default_factory=tuple)
    docker_host: str | None = None
    check: bool = False
    force: bool = False
    release: bool = True
    report: bool = True
    bundles: tuple[BundleDef, ...] = field(default_factory=tuple)

    @property
    def signing(self) -> bool:
        """Whether the repository is signed (key and certificate given)."""
        return self.signing_key is not None

    @property
    def workers(self) -> int:
        """Worker processes to use: ``jobs`` (0 = cores), never more than the usable cores
        nor than available memory allows (:func:`~.swupd.workpool.worker_count`)."""
        from .swupd.workpool import available_memory, usable_cores, worker_count

        return worker_count(self.jobs, usable_cores(), available_memory())

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``changes`` applied and validated."""
        return make_settings({**dataclasses.asdict(self), **changes}, source="overrides")


_PATH_KEYS = {"storage_dir", "disk_layout", "disk_image", "signing_key", "signing_cert",
              "signing_chain", "signing_passphrase_file"}
_INT_KEYS = {"version_step": 1, "os_version": 1, "deltapack_versions": 0, "keep_trees": 0,
             "jobs": 0, "max_file_size": 1}
_BOOL_KEYS = {"docker_privileged", "check", "force", "release", "report"}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _coerce(key: str, value: Any, source: str) -> Any:
    """Turn a raw value (YAML scalar, BitBake string, CLI string) into the field's type."""
    if value is None or (isinstance(value, str) and value == "" and key not in _BOOL_KEYS):
        return None if key not in ("docker_volumes", "bundles") else ()
    where = f"{key} in {source}"
    if key == "bundles":
        return from_mapping(value, source)
    if key in _PATH_KEYS:
        return Path(os.path.expanduser(str(value)))
    if key in _INT_KEYS:
        try:
            number = int(str(value).strip())
        except ValueError:
            raise SettingsError(f"{where} must be an integer, got {value!r}") from None
        if number < _INT_KEYS[key]:
            raise SettingsError(f"{where} must be at least {_INT_KEYS[key]}, got {number}")
        return number
    if key in _BOOL_KEYS:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise SettingsError(f"{where} must be 1/0 (true/false), got {value!r}")
    if key == "docker_volumes":
        items = value.split() if isinstance(value, str) else list(value)
        return tuple(str(v) for v in items)
    return str(value)


def make_settings(values: dict[str, Any], source: str = "settings",
                  origins: dict[str, str] | None = None) -> Settings:
    """Validate a mapping of YAML keys into :class:`Settings`; unknown keys are errors.

    ``origins`` names where each key's value came from (a file, the command line, BitBake
    variables) so an error points there; ``source`` names the rest.
    """
    origins = origins or {}
    names = {f.name for f in dataclasses.fields(Settings)}
    unknown = sorted(set(values) - names)
    if unknown:
        where = sorted({origins.get(k, source) for k in unknown})
        raise SettingsError(f"unknown setting(s) {', '.join(unknown)} in {', '.join(where)}",
                            hint=f"known settings: {', '.join(sorted(names))}")
    coerced = {k: _coerce(k, v, origins.get(k, source)) for k, v in values.items()}
    settings = Settings(**coerced)
    if settings.backend not in BACKENDS:
        raise SettingsError(f"backend {settings.backend!r} in {source} is not one of "
                            f"{', '.join(BACKENDS)}", hint="set SWUPD_REPO_BACKEND / --backend")
    if settings.compression not in COMPRESSIONS:
        raise SettingsError(f"compression {settings.compression!r} in {source} is not one of "
                            f"{', '.join(COMPRESSIONS)}", hint="set SWUPD_REPO_COMPRESSION")
    if settings.bundles and settings.backend == "docker":
        raise SettingsError(
            f"bundles ({', '.join(b.name for b in settings.bundles)}) are defined in {source}, "
            "but the docker backend publishes os-core only",
            hint="use the native backend (SWUPD_REPO_BACKEND = \"native\", --backend native) "
                 "or define no bundles (SWUPD_REPO_BUNDLES)")
    signing = [settings.signing_key, settings.signing_cert]
    if any(signing) and not all(signing):
        raise SettingsError(
            f"signing needs both a key and a certificate in {source}",
            hint="set SWUPD_REPO_SIGNING_KEY and SWUPD_REPO_SIGNING_CERT, or neither",
        )
    return settings


def load_yaml(path: Path) -> dict[str, Any]:
    """Read a settings YAML file into a mapping (empty file = no keys)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise SettingsError(f"cannot read settings file {path}: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SettingsError(f"invalid YAML in {path}{where}: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SettingsError(f"{path} must hold a mapping of settings, not {type(data).__name__}")
    return data


def load_settings(config: Path | None = None, overrides: dict[str, Any] | None = None, *,
                  overrides_source: str = "the command line") -> Settings:
    """Defaults file, then ``config``, then ``overrides`` (None values in overrides are ignored).

    Errors name the layer a bad value came from (``overrides_source`` for the overrides).
    """
    layers: list[tuple[dict[str, Any], str]] = []
    if DEFAULTS_FILE.is_file():
        layers.append((load_yaml(DEFAULTS_FILE), str(DEFAULTS_FILE)))
    if config is not None:
        layers.append((load_yaml(config), str(config)))
    layers.append(({k: v for k, v in (overrides or {}).items() if v is not None},
                   overrides_source))
    values: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for layer, origin in layers:
        values.update(layer)
        origins.update(dict.fromkeys(layer, origin))
    return make_settings(values, source=", ".join(origin for _, origin in layers),
                         origins=origins)
