"""tools/fetch_transformers_tests.py: `.transformers_tests/current` (named by setup.cfg's pythonpath) follows the
installed transformers version, so the common tests import the fetched suite without any sys.path edit."""

from tools.fetch_transformers_tests import CURRENT, point_current


def test_current_points_at_the_version_and_follows_a_new_one(tmp_path):
    for version in ("5.24.0", "5.25.0"):
        (tmp_path / version / "transformers_tests").mkdir(parents=True)
    point_current(tmp_path, "5.24.0")
    assert (tmp_path / CURRENT).resolve() == (tmp_path / "5.24.0").resolve()
    point_current(tmp_path, "5.25.0")  # an upgrade: the link is replaced, not nested inside the old target
    assert (tmp_path / CURRENT).resolve() == (tmp_path / "5.25.0").resolve()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["5.24.0", "5.25.0", CURRENT]
    assert not (tmp_path / "5.24.0" / "5.25.0").exists()
