"""An older revision of stratacache, importable next to the current one as ``stratacache_before``.

Benchmarks compare "before" and "after" in one process, in the same alternating rounds, so
that the noise of a shared machine hits both alike. Two copies of one package cannot share
a name in ``sys.modules``, so this materializes the revision's ``src/stratacache`` under
another top-level name::

    python benchmarks/before.py            # builds c1bdaeb (the commit before the redesign)
    python benchmarks/before.py HEAD~3     # any revision git can name

and in a benchmark::

    from before import load_before
    old = load_before("c1bdaeb")           # the module stratacache_before
    cache = old.Cache([old.MemoryTier(10_000)])

What the build does, in ``<tmp>/stratacache-before-<commit>/stratacache_before/``:

* ``git archive <rev> src/stratacache`` of the repository this file lives in, extracted and
  renamed;
* absolute self-references in its ``.py`` files rewritten: module names in strings
  (``"stratacache._speedups"``, ``"stratacache.tiers.redis"``, imported with importlib)
  and ``import stratacache`` / ``from stratacache`` lines. Relative imports need nothing;
* the module and type names in the C sources rewritten the same way, so that the compiled
  modules call themselves ``stratacache_before._speedups`` (a type's ``__module__`` is what
  pickle and the isolation check below look up, and it must not lead to the current
  package);
* both C extensions compiled as setup.py would (sysconfig's compiler and flags, then
  setup.py's extra arguments), ``STRATACACHE_SOURCE_SHA`` being the hash of the
  revision's own ``.c`` file, so ``__source_sha__`` names the source as committed.

The build is kept and reused (a directory appears only once complete, by one rename, so a
concurrent or interrupted build never leaves a half-built copy behind). After the import,
:func:`verify` checks that the compiled modules in use are this build's files and that
nothing in ``stratacache_before`` refers to the current ``stratacache`` package.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path
from types import BuiltinFunctionType, FunctionType, ModuleType

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_REV = "c1bdaeb"  # the commit before the redesign (5ff2f2f)
PACKAGE = "stratacache"
NAME = "stratacache_before"
MANIFEST = "BUILD.json"
FORMAT = 1  # bump when the build changes, so that an older build is not reused silently

# setup.py's extra_compile_args, per extension (keep in step with setup.py).
EXTENSIONS = {
    "_speedups": ["-O2"],
    "_cpolicies": ["-O2", "-ffp-contract=off", "-Wall", "-Wextra"],
}

# "stratacache.x" in a string literal (a module name for importlib), and absolute imports.
_QUOTED = re.compile(rf"""(?<=["']){PACKAGE}(?=\.\w)""")
_IMPORT = re.compile(rf"^(\s*(?:from|import)\s+){PACKAGE}(?=[\s.]|$)", re.MULTILINE)


def _git(*args: str) -> bytes:
    return subprocess.run(["git", "-C", str(ROOT), *args], check=True, capture_output=True).stdout


def resolve(rev: str) -> str:
    """The full commit hash ``rev`` names: a branch or ``HEAD~1`` moves, a build must not."""
    try:
        return _git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}").decode().strip()
    except subprocess.CalledProcessError:
        raise ValueError(f"git cannot name a commit {rev!r} in {ROOT}") from None


def build_dir(commit: str) -> Path:
    """Where the build of ``commit`` lives: the directory to put on ``sys.path``."""
    return Path(tempfile.gettempdir()) / f"stratacache-before-{commit[:12]}"


def _rewrite_python(package: Path) -> None:
    for path in package.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        new = _IMPORT.sub(rf"\g<1>{NAME}", _QUOTED.sub(NAME, text))
        if new != text:
            path.write_text(new, encoding="utf-8")


def _compile(package: Path, ext: str, source_sha: str) -> Path:
    """``package/<ext><EXT_SUFFIX>`` from ``package/<ext>.c``, the way setuptools builds
    setup.py's Extension: compile with sysconfig's CC, CFLAGS and CCSHARED followed by
    the extension's own arguments (so its -O2 wins over CFLAGS' -O3, as in setup.py), then
    link with LDSHARED. Written under a temporary name and renamed, never half-written."""
    config = sysconfig.get_config_var
    source = package / f"{ext}.c"
    target = package / f"{ext}{config('EXT_SUFFIX')}"
    with tempfile.TemporaryDirectory(dir=package) as work:
        obj = Path(work) / f"{ext}.o"
        so = Path(work) / target.name
        compile_cmd = [
            *shlex.split(config("CC")),
            *shlex.split(config("CFLAGS")),
            *shlex.split(config("CCSHARED")),
            f'-DSTRATACACHE_SOURCE_SHA="{source_sha}"',
            f"-I{sysconfig.get_paths()['include']}",
            "-c",
            str(source),
            "-o",
            str(obj),
            *EXTENSIONS[ext],
        ]
        link_cmd = [*shlex.split(config("LDSHARED")), str(obj), "-o", str(so)]
        for cmd in (compile_cmd, link_cmd):
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(
                    f"building {NAME}.{ext} failed:\n{shlex.join(cmd)}\n{done.stderr}"
                )
        os.replace(so, target)
    return target


def _source_shas(commit: str) -> dict[str, str]:
    """setup.py's STRATACACHE_SOURCE_SHA of each C file in ``commit`` (absent ones left out)."""
    listed = _git("ls-tree", "--name-only", commit, f"src/{PACKAGE}/").decode().split()
    shas = {}
    for ext in EXTENSIONS:
        path = f"src/{PACKAGE}/{ext}.c"
        if path in listed:
            blob = _git("show", f"{commit}:{path}")
            shas[ext] = hashlib.sha256(blob).hexdigest()[:16]
    return shas


def _materialize(commit: str, rev: str, into: Path) -> None:
    """Extract, rename, rewrite and compile ``commit`` into the empty directory ``into``."""
    archive = _git("archive", "--format=tar", commit, f"src/{PACKAGE}")
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    package = into / NAME
    (into / "src" / PACKAGE).rename(package)
    (into / "src").rmdir()
    _rewrite_python(package)
    shas = _source_shas(commit)
    for ext, sha in shas.items():
        source = package / f"{ext}.c"
        # Module and type names ("stratacache._speedups.Reader"): see the module docstring.
        text = source.read_text(encoding="utf-8")
        source.write_text(text.replace(f'"{PACKAGE}.', f'"{NAME}.'), encoding="utf-8")
        _compile(package, ext, sha)
    manifest = {"format": FORMAT, "rev": rev, "commit": commit, "source_sha": shas}
    (package / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")


def build(rev: str = DEFAULT_REV) -> Path:
    """The build of ``rev`` (made now, or reused): the directory to put on ``sys.path``."""
    commit = resolve(rev)
    root = build_dir(commit)
    if not root.exists():
        staging = Path(tempfile.mkdtemp(prefix=f"{root.name}.building-", dir=root.parent))
        try:
            _materialize(commit, rev, staging)
            try:
                staging.rename(root)
            except OSError:
                if not root.exists():
                    raise
                # Another process finished the same build first: use theirs.
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    package = root / NAME
    manifest = json.loads((package / MANIFEST).read_text())
    if manifest.get("format") != FORMAT or manifest.get("commit") != commit:
        raise RuntimeError(f"{root} was built differently; delete it to rebuild")
    # A build made by another Python version has no modules for this one: add them.
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    for ext, sha in manifest["source_sha"].items():
        if not (package / f"{ext}{suffix}").exists():
            _compile(package, ext, sha)
    return root


def _owner(value: object) -> str | None:
    """The module a global's value comes from, for the kinds that say so reliably."""
    if isinstance(value, ModuleType):
        return value.__name__
    if isinstance(value, type | FunctionType | BuiltinFunctionType):
        return getattr(value, "__module__", None)
    return None


def verify(package: ModuleType) -> None:
    """Raise unless ``package`` (stratacache_before) is this build and stands alone.

    Call it again after using parts imported lazily (the network tiers) to check them too.
    * every ``stratacache_before.*`` module loaded is a file of the build directory;
    * the compiled modules ``_accel`` picked are this build's, from the revision's C source
      (unless STRATACACHE_PURE_PYTHON turns them off, as it does for the current package);
    * no module, class or function in any of its modules' globals comes from ``stratacache``.
    """
    root = Path(package.__file__).resolve().parent
    manifest = json.loads((root / MANIFEST).read_text())
    problems = []
    modules = {
        name: module
        for name, module in list(sys.modules.items())
        if name == NAME or name.startswith(f"{NAME}.")
    }
    for name, module in modules.items():
        where = getattr(module, "__file__", None)
        if where is None or not Path(where).resolve().is_relative_to(root):
            problems.append(f"{name} is loaded from {where}, not from {root}")
        for attr, value in list(vars(module).items()):
            owner = _owner(value)
            if owner is not None and (owner == PACKAGE or owner.startswith(f"{PACKAGE}.")):
                problems.append(f"{name}.{attr} comes from the current package ({owner})")
    accel = modules.get(f"{NAME}._accel")
    pure = os.environ.get("STRATACACHE_PURE_PYTHON", "").lower() in ("1", "true", "yes")
    if accel is not None and not pure:
        suffix = sysconfig.get_config_var("EXT_SUFFIX")
        for attr, ext in (("speedups", "_speedups"), ("cpolicies", "_cpolicies")):
            if ext not in manifest["source_sha"]:
                continue  # the revision predates this extension
            module = getattr(accel, attr, None)
            expected = root / f"{ext}{suffix}"
            if module is None:
                problems.append(f"{NAME}._accel.{attr} is None: {expected} did not load")
                continue
            if Path(module.__file__).resolve() != expected.resolve():
                problems.append(f"{NAME}._accel.{attr} is {module.__file__}, not {expected}")
            if module.__name__ != f"{NAME}.{ext}":
                problems.append(f"{module.__file__} calls itself {module.__name__}")
            if module.__source_sha__ != manifest["source_sha"][ext]:
                problems.append(
                    f"{module.__file__} was built from {module.__source_sha__}, "
                    f"not {manifest['source_sha'][ext]} ({ext}.c at {manifest['commit'][:12]})"
                )
    if problems:
        raise RuntimeError(f"{NAME} is not isolated:\n  " + "\n  ".join(problems))


def load_before(rev: str = DEFAULT_REV) -> ModuleType:
    """``rev``'s stratacache, built if needed, imported as ``stratacache_before``, verified.

    One process holds one before-revision: asking for another one is an error."""
    commit = resolve(rev)
    loaded = sys.modules.get(NAME)
    if loaded is not None:
        if Path(loaded.__file__).resolve().parent.parent != build_dir(commit).resolve():
            raise RuntimeError(f"{NAME} is already loaded from {loaded.__file__}, not {rev}")
        return loaded
    root = build(commit)
    imported_before = set(sys.modules)
    sys.path.insert(0, str(root))
    package = importlib.import_module(NAME)
    # Modules the import brought in: none may be the current package.
    current = sorted(
        name
        for name in set(sys.modules) - imported_before
        if name == PACKAGE or name.startswith(f"{PACKAGE}.")
    )
    if current:
        raise RuntimeError(f"importing {NAME} imported the current package: {current}")
    verify(package)
    return package


def main() -> None:
    rev = sys.argv[1] if len(sys.argv) > 1 else DEFAULT_REV
    if len(sys.argv) > 2 or rev.startswith("-"):
        raise SystemExit(f"usage: python {sys.argv[0]} [REV]   (default {DEFAULT_REV})")
    package = load_before(rev)
    print(Path(package.__file__).parent)


if __name__ == "__main__":
    main()
