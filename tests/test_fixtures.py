"""The reference fixture lives in the repo (a GitHub clone has nothing beside it) and is exactly the data its README
describes: an edited fixture would silently move the parity target."""

import hashlib
import re

from conftest import FIXTURE_DIR, REPO_ROOT


def test_fixture_is_inside_the_repo_and_matches_its_checksums(fixture_dir):
    assert fixture_dir.resolve().is_relative_to(REPO_ROOT.resolve())
    listed = re.findall(r"^([0-9a-f]{64})  (\S+)$", (FIXTURE_DIR / "README.md").read_text(), flags=re.M)
    assert len(listed) == 6
    for digest, name in listed:
        assert hashlib.sha256((fixture_dir / name).read_bytes()).hexdigest() == digest, name


def test_no_test_reads_files_beside_the_repo():
    # Users clone from GitHub with nothing beside the repo: tests must not reach into ../shared.
    offenders = [p.name for p in (REPO_ROOT / "tests").glob("*.py") if re.search(r"parent\s*/\s*\"shared\"", p.read_text())]
    assert offenders == []
