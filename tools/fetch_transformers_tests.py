"""Fetch the installed Transformers version's own test suite (its sdist's `tests/`) into a git-ignored folder.

    python -m tools.fetch_transformers_tests [--dest .transformers_tests] [--force]

The common tests (ModelTesterMixin, GenerationTesterMixin, ConfigTester, ProcessorTesterMixin) are not part of the
installed `transformers` wheel; they live in the source distribution's `tests/` package. This tool downloads the
sdist of exactly the installed version from PyPI (`pip download --no-binary :all:`) and extracts its `tests/` tree
to `<dest>/<version>/transformers_tests/`, renamed from `tests` to `transformers_tests`:

    * this repo has its own `tests/` directory (with a conftest.py that pytest imports as the package `tests`), so
      the sdist's package cannot keep that name in the same interpreter;
    * the sdist's modules import each other both as `from tests.X import ...` / `import tests.X` (absolute) and as
      `from ..X import ...` (relative). Renaming the package folder keeps the relative imports working unchanged,
      and the absolute ones are rewritten here, once, at extraction time (`tests.` -> `transformers_tests.`), so
      the whole tree is an ordinary importable package once `<dest>/<version>` is on sys.path. No import hooks.

The sdist ships only the top-level `tests/*.py`; the few modules from the source repository's subfolders that
those import (GenerationTesterMixin, ExportTesterMixin, config_common_kwargs, url_to_local_path) are not on PyPI, so
stand-ins from tests/transformers_suite/ (see its README.md) are put in their place, each only where the sdist lacks
the file. They are refreshed on every run, so editing a stand-in needs no --force.

Idempotent: when the extracted tree is complete (and --force is not given) nothing is downloaded.
Only the standard library and pip are used; nothing is copied into the repository's tracked files.
"""

import argparse
import os
import importlib.metadata
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DEST = ROOT / ".transformers_tests"
PACKAGE = "transformers_tests"
# Files the ArrCoc common tests need; their absence after extraction is an error (a changed sdist layout).
REQUIRED = (
    "__init__.py",
    "test_modeling_common.py",
    "test_configuration_common.py",
    "test_processing_common.py",
    "test_pipeline_mixin.py",
    "generation/test_utils.py",
)
# Stand-ins (tests/transformers_suite/<file>) for modules the sdist lacks, by their path under `<dest>/<version>/`.
STAND_INS = {
    f"{PACKAGE}/generation/test_utils.py": "generation_shim.py",
    f"{PACKAGE}/exporters/test_export.py": "export_shim.py",
    f"{PACKAGE}/utils/test_configuration_utils.py": "configuration_utils_shim.py",
    "utils/fetch_hub_objects_for_ci.py": "fetch_hub_objects_shim.py",
}
STAND_IN_DIR = ROOT / "tests" / "transformers_suite"
STAND_IN_MARKER = "IS_STAND_IN = True"
# `from tests.x import`, `import tests.x`, `from tests import x`, and the string "tests.x" in mock.patch targets.
ABSOLUTE_IMPORT = re.compile(r"(?<![\w.])tests(?=\.[A-Za-z_]|\s+import\b)")


def installed_version() -> str:
    return importlib.metadata.version("transformers")


def target_dir(dest: Path, version: str) -> Path:
    return dest / version


def is_present(root: Path) -> bool:
    return (root / "SOURCE").is_file() and all((root / PACKAGE / name).is_file() for name in REQUIRED)


def install_stand_ins(root: Path) -> list[str]:
    """Copy each stand-in to its path unless the sdist shipped the real file there (a file without the marker).
    Returns the paths that hold a stand-in."""
    placed = []
    for relative, source in STAND_INS.items():
        target = root / relative
        if target.is_file() and STAND_IN_MARKER not in target.read_text(encoding="utf-8"):
            continue  # the real module, from the sdist
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.parent.name != "utils" or target.parent.parent != root:  # `<root>/utils` is a sys.path entry
            (target.parent / "__init__.py").touch()
        text = (STAND_IN_DIR / source).read_text(encoding="utf-8")
        if not target.is_file() or target.read_text(encoding="utf-8") != text:
            target.write_text(text, encoding="utf-8")
        placed.append(relative)
    return placed


def download_sdist(version: str, workdir: Path) -> Path:
    """The sdist archive of transformers==version, downloaded by pip from the package index (no dependencies,
    no build: `--no-binary :all:` with `--no-deps` only fetches the archive)."""
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
           f"transformers=={version}", "-d", str(workdir)]
    subprocess.run(cmd, check=True)
    archives = sorted(workdir.glob("transformers-*.tar.gz"))
    if not archives:
        found = sorted(p.name for p in workdir.iterdir())
        raise SystemExit(f"pip download left no transformers sdist in {workdir}: {found}")
    return archives[0]


def rewrite_imports(package_dir: Path) -> int:
    """Rewrite absolute `tests.` imports to `transformers_tests.` in every .py file; returns the files changed."""
    changed = 0
    for path in package_dir.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        new = ABSOLUTE_IMPORT.sub(PACKAGE, text)
        if new != text:
            path.write_text(new, encoding="utf-8")
            changed += 1
    return changed


def extract_tests(archive: Path, out: Path) -> None:
    """Extract `<sdist root>/tests/**` of `archive` to `out/transformers_tests/**`."""
    package_dir = out / PACKAGE
    with tarfile.open(archive) as tar:
        members = []
        for member in tar.getmembers():
            parts = Path(member.name).parts
            if len(parts) < 3 or parts[1] != "tests" or not (member.isfile() or member.isdir()):
                continue
            member.name = str(Path(PACKAGE, *parts[2:]))
            members.append(member)
        if not members:
            raise SystemExit(f"{archive.name} has no tests/ directory")
        tar.extractall(out, members=members, filter="data")
    rewrite_imports(package_dir)
    # Subfolders without an __init__.py (some test data folders) are made packages too, so relative imports and
    # importlib work the same everywhere in the tree.
    for sub in [package_dir, *(p for p in package_dir.rglob("*") if p.is_dir())]:
        if any(sub.glob("*.py")) and not (sub / "__init__.py").exists():
            (sub / "__init__.py").touch()


# `<dest>/current` points at the fetched version: setup.cfg's static `pythonpath` names it, so no test edits sys.path.
CURRENT = "current"


def point_current(dest: Path, version: str) -> None:
    """Make `<dest>/current` a link to `<dest>/<version>` (replaced atomically: a link renamed over the old one)."""
    link, staged = dest / CURRENT, dest / f".{CURRENT}.{os.getpid()}"
    staged.unlink(missing_ok=True)
    staged.symlink_to(version, target_is_directory=True)
    staged.replace(link)


def fetch(dest: Path = DEFAULT_DEST, version: str | None = None, force: bool = False) -> Path:
    """Make sure `<dest>/<version>/transformers_tests` exists and `<dest>/current` points at it; returns
    `<dest>/<version>`."""
    version = version or installed_version()
    root = _fetch(dest, version, force)
    point_current(dest, version)
    return root


def _fetch(dest: Path, version: str, force: bool) -> Path:
    root = target_dir(dest, version)
    if is_present(root) and not force:
        install_stand_ins(root)
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root.parent) as tmp:
        tmp = Path(tmp)
        archive = download_sdist(version, tmp / "download")
        staging = tmp / "staging"
        staging.mkdir()
        extract_tests(archive, staging)
        placed = install_stand_ins(staging)
        missing = [name for name in REQUIRED if not (staging / PACKAGE / name).is_file()]
        if missing:
            raise SystemExit(f"transformers {version}'s sdist lacks tests/{missing}")
        (staging / "SOURCE").write_text(
            f"{archive.name}: tests/ -> {PACKAGE}/ (absolute `tests.` imports rewritten)\n"
            + "".join(f"stand-in (tests/transformers_suite/{STAND_INS[p]}): {p}\n" for p in placed)
        )
        # Swap in atomically-ish: a half-extracted tree is never left at the final path.
        if root.exists():
            shutil.rmtree(root)
        staging.rename(root)
    return root


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=DEFAULT_DEST)
    parser.add_argument("--version", default=None, help="default: the installed transformers version")
    parser.add_argument("--force", action="store_true", help="download and extract again even if present")
    args = parser.parse_args(argv)
    version = args.version or installed_version()
    present = is_present(target_dir(args.dest, version))
    root = fetch(args.dest, version, args.force)
    state = "already present" if present and not args.force else "extracted"
    print(f"transformers {version} tests {state} in {root / PACKAGE}")


if __name__ == "__main__":
    main()
