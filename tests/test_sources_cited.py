"""Comments and docs cite public sources (RFC sections, NDIS page titles) or the repository's
own docs/, never a document outside the repository (README "Development")."""
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
FOLDERS = ("ipsecoffload", "tests", "benchmarks", "docs", "tools", "examples")
SUFFIXES = {".py", ".pyx", ".pxd", ".pxi", ".pyi", ".h", ".md"}
# section numbers of documents that are not in the repository
OUTSIDE = re.compile(r"\b(?:spec|design|style)(?:\.md)? §|ipsecov2\.md|/work/shared")


def _files():
    if not (ROOT / "docs").is_dir():
        pytest.skip("not a source checkout")
    yield ROOT / "README.md"
    for folder in FOLDERS:
        for path in sorted((ROOT / folder).rglob("*")):
            if path.suffix in SUFFIXES and "build" not in path.parts:
                yield path


def test_no_citation_of_documents_outside_the_repository():
    found = []
    for path in _files():
        if path.name == "test_sources_cited.py":
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if OUTSIDE.search(line):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:80]}")
    assert not found, "\n".join(found)
