"""Resuming a run trusts only what archrefine itself wrote into the run directory.

A run directory can be edited by anyone who can write to it, and `--resume` takes its config
from there, so a crafted `config.toml` could point `prompt.template` at a private file (whose
text would be sent to a server and stored), `generator.base_url` at another server, or weaken
the sandbox. The design (docs/real-loop.md, "Resuming a run you did not write"):

* At start the prompt template is copied into the run (`prompt.txt`); the loop reads only that
  copy, never the path the config names, so a resume reads no file outside the run directory.
* `run.json` carries an HMAC-SHA256 of `config.toml`, `prompt.txt` and the isolation recorded,
  keyed by a per-user secret (`$XDG_CONFIG_HOME/archrefine/run-key`, else
  `~/.config/archrefine/run-key`, mode 0600, created on first use). `--resume` refuses, in one
  line, a run whose digest does not match (edited, or written by another user or machine)
  unless `--trust-config` says the user vouches for it (the digest is then re-signed).
* The sandbox isolation of a resumed run is never weaker than the one recorded when it started
  (bwrap > rlimits; with the audit hook > without) unless `--weaker-isolation` is given, and the
  level each session got is recorded in `run.json`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import tempfile
from pathlib import Path

from archrefine.core.store import StoreError, write_json
from archrefine.real.prompts import TEMPLATE_FILE

KEY_FILE = "run-key"
_RANKS = {"rlimits": 0, "bwrap": 2}


def key_path() -> Path:
    """Where this user's signing key lives."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "archrefine" / KEY_FILE


def _key(create: bool) -> bytes | None:
    path = key_path()
    try:
        return _read_key(path)
    except FileNotFoundError:
        if not create:
            return None
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:  # O_EXCL: two runs starting at once agree on one key
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_key(path)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32) + "\n")
    return _read_key(path)


def _read_key(path: Path) -> bytes:
    info = path.stat()
    if info.st_mode & 0o077 or info.st_uid != os.getuid():
        raise StoreError(f"{path}: the run-signing key must be yours with mode 0600 (chmod 600)")
    key = path.read_bytes().strip()
    if len(key) < 32:
        raise StoreError(f"{path}: not a run-signing key (delete it to make a new one)")
    return key


def digest(run_dir: Path, isolation: str, key: bytes) -> str:
    """HMAC of what a resume trusts: config.toml, the template copy and the isolation."""
    mac = hmac.new(key, digestmod=hashlib.sha256)
    for part in (run_dir / "config.toml", run_dir / TEMPLATE_FILE):
        data = part.read_bytes() if part.exists() else b"\0missing"
        mac.update(len(data).to_bytes(8, "big") + data)
    mac.update(isolation.encode())
    return mac.hexdigest()


def sign(run_dir: Path, isolation: str) -> None:
    """Record `isolation` and the digest in run.json (at start, or when the user vouches)."""
    info = _run_json(run_dir)
    key = _key(create=True)
    assert key is not None
    info.update(isolation=isolation, config_hmac=digest(run_dir, isolation, key))
    write_json(run_dir / "run.json", info)


def verify(run_dir: Path, now: str, *, trust_config: bool, weaker_isolation: bool) -> None:
    """Refuse (one line) to resume a run whose config archrefine did not write for this user,
    or on weaker isolation than it started with; note the isolation `now` in run.json."""
    check_files(run_dir)
    try:  # a resume adds to the directory: say so now, not as a traceback halfway
        tempfile.TemporaryFile(dir=run_dir).close()
    except OSError as err:
        raise StoreError(
            f"{run_dir}: cannot write there ({err.strerror or err}); nothing was changed: make "
            "it writable, or copy the directory and resume the copy"
        ) from None
    info = _run_json(run_dir)
    if "config_hmac" not in info and not (run_dir / "candidates.sqlite").exists():
        raise StoreError(
            f"{run_dir} was stopped while starting: nothing to resume; start it again "
            f"(archrefine loop {run_dir}/config.toml --out {run_dir} --force)"
        )
    recorded = str(info.get("isolation", ""))
    key = _key(create=False)
    saved = info.get("config_hmac")
    good = (
        key is not None
        and isinstance(saved, str)
        and hmac.compare_digest(saved, digest(run_dir, recorded, key))
    )
    if not good and not trust_config:
        raise StoreError(
            f"config.toml in {run_dir} was changed after archrefine wrote it (or the run was "
            f"written by another user or machine, or by an older archrefine): not resuming. "
            f"Start a new run from it (archrefine loop {run_dir}/config.toml --out NEW), or "
            "pass --trust-config if you vouch for the directory"
        )
    if _rank(now) < _rank(recorded) and not weaker_isolation:
        raise StoreError(
            f"{run_dir} started with sandbox isolation {recorded!r} but would resume with "
            f"{now!r}: not resuming (fix bwrap, docs/sandbox.md, or pass --weaker-isolation)"
        )
    if not good:  # vouched for: sign what is there now, the prompt copy included
        sign(run_dir, recorded or now)
    info = _run_json(run_dir)
    info["resumed_isolation"] = [*info.get("resumed_isolation", []), now]
    write_json(run_dir / "run.json", info)


RUN_FILES = ("config.toml", TEMPLATE_FILE, "run.json", "state.json", "metrics.parquet",
             "candidates.sqlite", "candidates.sqlite-wal", "candidates.sqlite-shm")  # fmt: skip


def check_files(run_dir: Path) -> None:
    """Refuse a run directory whose state files are symlinks, FIFOs, devices or directories:
    a resume reads only regular files inside the run (a `prompt.txt` linked to a private file
    would be sent to the server; a FIFO or /dev/zero would hang or exhaust memory; SQLite
    would write beside a linked store)."""
    generator = run_dir / "generator"
    tree = sorted(generator.rglob("*")) if generator.is_dir() and not generator.is_symlink() else []
    for path in [*(run_dir / name for name in RUN_FILES), generator, *tree]:
        if path.is_symlink():
            what = "a symlink"
        elif not path.exists() or path.is_file() or (path.is_dir() and path in (generator, *tree)):
            continue
        else:
            what = "not a regular file"
        raise StoreError(
            f"{path} is {what}: a resumed run reads only regular files inside its "
            "directory; put back the file archrefine wrote, or start afresh with --force"
        )


def _rank(level: str) -> int:
    """bwrap > rlimits; the audit hook adds one; an unknown level ranks lowest."""
    mode, *extras = level.split("+")
    return _RANKS.get(mode, -1) + ("audit" in extras)


def _run_json(run_dir: Path) -> dict:
    path = run_dir / "run.json"
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise StoreError(f"{path}: missing or unreadable ({type(err).__name__})") from None
    if not isinstance(info, dict):
        raise StoreError(f"{path}: not a run record")
    return info
