"""Deprecated alias: consolidated.pt is xlbtm's own format and lives in `xlbtm.formats.consolidated`
(kept for a release so existing imports keep working)."""

from xlbtm.formats.consolidated import FORMAT, load_consolidated, save_consolidated  # noqa: F401
