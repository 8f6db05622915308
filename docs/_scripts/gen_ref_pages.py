"""Generate the API reference: one page per public module of hubclf, found by walking the package on disk.

Run by mkdocs-gen-files at build time (the "automatic code reference pages" recipe of mkdocstrings). Nothing is
imported: mkdocstrings reads the sources with griffe's static analysis, so the pages follow whatever modules exist.
Private modules (`_name.py`, `_pkg/`) and `__main__` are skipped; a package's `__init__.py` is its section page.
"""

from __future__ import annotations

from pathlib import Path

import mkdocs_gen_files

PACKAGE = "hubclf"
ROOT = Path(__file__).resolve().parents[2]  # docs/_scripts/ -> the repository root

nav = mkdocs_gen_files.Nav()
for path in sorted((ROOT / PACKAGE).rglob("*.py")):
    parts = path.relative_to(ROOT).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
        doc_path = Path(*parts, "index.md")
    else:
        doc_path = Path(*parts).with_suffix(".md")
    if parts[-1] == "__main__" or any(part.startswith("_") for part in parts):
        continue
    if not all((ROOT / Path(*parts[:i]) / "__init__.py").is_file() for i in range(1, len(parts))):
        continue  # a folder of scripts inside the package, not an importable module
    nav[parts] = doc_path.as_posix()
    with mkdocs_gen_files.open(Path("reference", doc_path), "w") as page:
        page.write(f"::: {'.'.join(parts)}\n")

with mkdocs_gen_files.open("reference/SUMMARY.md", "w") as summary:
    summary.writelines(nav.build_literate_nav())
