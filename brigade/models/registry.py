"""From a model spec (``builtin:<name>`` or a directory) to files on disk.

Built-in models are generated on first use into the cache directory. Several workers may start at
once on one volume, so generation holds a file lock and writes into a temporary directory that is
renamed into place: a reader sees either no directory or a complete one, never half-written files.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from tokenizers import Tokenizer

from brigade.config_error import ConfigurationError
from brigade.models.specs import BUILTIN_MODELS, BuiltinSpec
from brigade.models.tokenizer import write_tokenizer_files
from schemas.settings import Settings

BUILTIN_PREFIX = "builtin:"
MODEL_FILES = ("model.onnx", "decoder_model_merged.onnx")  # Optimum's names, newest first


class ModelNotFound(ConfigurationError, ValueError):
    """The spec names no built-in model and no usable model directory."""

    def __init__(self, message: str, *, spec: str) -> None:
        super().__init__(message)
        self.spec = spec

    def variable_in(self, settings: Settings) -> str:
        return settings.model_variable(self.spec)


def _accepted_forms() -> str:
    builtins = ", ".join(BUILTIN_PREFIX + name for name in BUILTIN_MODELS)
    return (
        f"accepted forms: {builtins}, or a directory exported with "
        "`optimum-cli export onnx --task text-generation-with-past` (holding model.onnx and tokenizer.json)"
    )


def _builtin(spec: str) -> BuiltinSpec | None:
    if not spec.startswith(BUILTIN_PREFIX):
        return None
    name = spec.removeprefix(BUILTIN_PREFIX)
    if name not in BUILTIN_MODELS:
        raise ModelNotFound(f"unknown built-in model {spec!r}; {_accepted_forms()}", spec=spec)
    return BUILTIN_MODELS[name]


def _user_dir(spec: str, *, need: tuple[str, ...]) -> Path:
    path = Path(spec).expanduser()
    if not path.is_dir():
        raise ModelNotFound(
            f"model {spec!r} is neither a built-in model nor a directory; {_accepted_forms()}", spec=spec
        )
    if "model" in need and not any((path / name).is_file() for name in MODEL_FILES):
        raise ModelNotFound(
            f"model directory {spec!r} holds none of {', '.join(MODEL_FILES)}; {_accepted_forms()}", spec=spec
        )
    if "tokenizer" in need and not (path / "tokenizer.json").is_file():
        raise ModelNotFound(f"model directory {spec!r} has no tokenizer.json; {_accepted_forms()}", spec=spec)
    return path.resolve()


@contextlib.contextmanager
def _locked(cache_dir: Path, name: str) -> Iterator[None]:
    """Serialize generators of one directory, so two workers don't both spend minutes on 500 MB."""
    with (cache_dir / f".{name}.lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _generate_once(cache_dir: Path, name: str, write: Callable[[Path], None]) -> Path:
    final = cache_dir / name
    if final.is_dir():
        return final
    cache_dir.mkdir(parents=True, exist_ok=True)
    with _locked(cache_dir, name):
        if final.is_dir():  # another process finished while we waited for the lock
            return final
        for stale in cache_dir.glob(f".{name}.*"):  # left by a generator that was killed; only we write now
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=cache_dir))
        try:
            write(tmp)
            tmp.chmod(0o755)  # mkdtemp makes it private; pods with another uid share the volume
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final


def tokenizer_dir(spec: str, *, cache_dir: Path) -> Path:
    """A directory with the model's tokenizer files, without generating its weights (the ingress only
    tokenizes)."""
    builtin = _builtin(spec)
    if builtin is None:
        return _user_dir(spec, need=("tokenizer",))
    model_dir = cache_dir / builtin.dir_name
    if (model_dir / "tokenizer.json").is_file():
        return model_dir

    def write(tmp: Path) -> None:
        write_tokenizer_files(tmp, model_max_length=builtin.n_positions)

    return _generate_once(cache_dir, builtin.tokenizer_dir_name, write)


def load_tokenizer(spec: str, *, cache_dir: Path) -> Tokenizer:
    """The tokenizer of a model, without generating the model's weights."""
    return Tokenizer.from_file(str(tokenizer_dir(spec, cache_dir=cache_dir) / "tokenizer.json"))


def resolve_model(spec: str, *, cache_dir: Path) -> Path:
    """A directory holding ``model.onnx`` (or Optimum's merged decoder), config and tokenizer files."""
    builtin = _builtin(spec)
    if builtin is None:
        return _user_dir(spec, need=("model", "tokenizer"))

    def write(tmp: Path) -> None:
        from brigade.models.builtin import write_model  # onnx is needed only here, not by the ingress

        write_model(builtin, tmp)

    return _generate_once(cache_dir, builtin.dir_name, write)


def model_file(model_dir: Path) -> Path:
    for name in MODEL_FILES:
        if (model_dir / name).is_file():
            return model_dir / name
    raise ModelNotFound(
        f"model directory {str(model_dir)!r} holds none of {', '.join(MODEL_FILES)}", spec=str(model_dir)
    )
