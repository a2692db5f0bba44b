"""Where the SDK and the user CLI find the server URL and the API key.

Precedence, highest first: an explicit argument (or CLI flag), the environment
(``REELGATE_BASE_URL``, ``REELGATE_API_KEY``, ``REELGATE_TIMEOUT``), the config file, the
default. The config file is TOML, at ``$REELGATE_CONFIG`` or
``~/.config/reelgate/config.toml`` (``$XDG_CONFIG_HOME`` is honoured)::

    base_url = "https://video.example.com"
    api_key = "rg_..."
    timeout = 60

This module imports nothing heavy, so the CLI can resolve settings before it decides
what else to load.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_TIMEOUT_S",
    "ClientConfig",
    "ConfigError",
    "config_path",
    "load_config_file",
    "resolve",
]

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT_S = 60.0

ENV_API_KEY = "REELGATE_API_KEY"
ENV_BASE_URL = "REELGATE_BASE_URL"
ENV_TIMEOUT = "REELGATE_TIMEOUT"
ENV_CONFIG = "REELGATE_CONFIG"

_KNOWN_KEYS = frozenset({"base_url", "api_key", "timeout"})


class ConfigError(ValueError):
    """The config file (or a setting) is unreadable or malformed; the message says where."""


@dataclass(frozen=True)
class ClientConfig:
    api_key: str | None
    base_url: str
    timeout: float
    # Where each value came from ("argument", "environment", a file path, "default"), so
    # an error message can tell the user which setting to fix.
    api_key_source: str = "default"
    base_url_source: str = "default"


def config_path(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    explicit = env.get(ENV_CONFIG)
    if explicit:
        return Path(explicit).expanduser()
    base = env.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base).expanduser() / "reelgate" / "config.toml"


def load_config_file(path: Path, *, required: bool = False) -> dict[str, Any]:
    """The file's settings, or {} when it does not exist (an error if ``required``, which is
    the case when REELGATE_CONFIG names it: a typo there should not be silently ignored)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        if required:
            raise ConfigError(f"config file {path} does not exist") from None
        return {}
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    unknown = sorted(set(data) - _KNOWN_KEYS)
    if unknown:
        raise ConfigError(
            f"config file {path}: unknown setting(s) {', '.join(unknown)} "
            f"(known: {', '.join(sorted(_KNOWN_KEYS))})"
        )
    for name in ("base_url", "api_key"):
        if name in data and not isinstance(data[name], str):
            raise ConfigError(f"config file {path}: {name} must be a string")
    if "timeout" in data and (
        isinstance(data["timeout"], bool) or not isinstance(data["timeout"], int | float)
    ):
        raise ConfigError(f"config file {path}: timeout must be a number of seconds")
    return data


def _timeout(value: Any, where: str) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: timeout must be a number of seconds, not {value!r}") from None
    if seconds <= 0:
        raise ConfigError(f"{where}: timeout must be positive")
    return seconds


def resolve(
    api_key: str | None = None,
    base_url: str | None = None,
    timeout: float | None = None,
    *,
    env: dict[str, str] | None = None,
) -> ClientConfig:
    """Merge arguments, environment and config file into one ClientConfig."""
    env = dict(os.environ) if env is None else env
    path = config_path(env)
    # The file is read only when something is still missing: a broken file in the home
    # directory should not break a caller who passed everything explicitly.
    file: dict[str, Any] = {}
    need_file = (
        (api_key is None and not env.get(ENV_API_KEY))
        or (base_url is None and not env.get(ENV_BASE_URL))
        or (timeout is None and not env.get(ENV_TIMEOUT))
    )
    if need_file:
        file = load_config_file(path, required=bool(env.get(ENV_CONFIG)))

    def pick(arg: Any, env_name: str, file_key: str, default: Any) -> tuple[Any, str]:
        if arg is not None:
            return arg, "argument"
        if env.get(env_name):
            return env[env_name], "environment"
        if file.get(file_key) is not None:
            return file[file_key], str(path)
        return default, "default"

    key, key_src = pick(api_key, ENV_API_KEY, "api_key", None)
    url, url_src = pick(base_url, ENV_BASE_URL, "base_url", DEFAULT_BASE_URL)
    secs, secs_src = pick(timeout, ENV_TIMEOUT, "timeout", DEFAULT_TIMEOUT_S)

    url = str(url).strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ConfigError(
            f"base URL {url!r} (from {url_src}) must start with http:// or https://"
        )
    key = key.strip() if isinstance(key, str) else None
    return ClientConfig(
        api_key=key or None,
        base_url=url,
        timeout=_timeout(secs, secs_src),
        api_key_source=key_src,
        base_url_source=url_src,
    )
