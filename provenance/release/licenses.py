"""What a license string in the bundle is, for documents that distinguish SPDX ids from free text.

    kind, value = classify("Apache-2.0")      # ("id", "Apache-2.0")
    classify("MIT OR Apache-2.0")              # ("expression", "MIT OR Apache-2.0")
    classify("my own terms")                   # ("name", "my own terms"): not an SPDX license
    classify(None)                             # ("unknown", None): the bundle states none

An id is recognised when it is on the SPDX license list. The list is read from the SPDX
schema that cyclonedx-python-lib ships (the release extra installs it: the same list its
validator checks ids against); without that package, from the licenses the openness
assessment knows. Nothing is guessed: a string that is not an exact id (case aside) is a name.
"""

from __future__ import annotations

import json
import re
from functools import cache
from typing import Literal

Kind = Literal["id", "expression", "name", "unknown"]

_FALLBACK = (
    "0BSD", "AFL-3.0", "AGPL-3.0-only", "AGPL-3.0-or-later", "Apache-2.0", "Artistic-2.0", "BSD-2-Clause",
    "BSD-3-Clause", "BSL-1.0", "BlueOak-1.0.0", "CC-BY-3.0", "CC-BY-4.0", "CC-BY-NC-4.0", "CC-BY-SA-3.0",
    "CC-BY-SA-4.0", "CC0-1.0", "CDDL-1.0", "CDLA-Permissive-1.0", "CDLA-Permissive-2.0", "CDLA-Sharing-1.0",
    "ECL-2.0", "EPL-2.0", "EUPL-1.2", "GFDL-1.3-only", "GFDL-1.3-or-later", "GPL-2.0-only", "GPL-2.0-or-later",
    "GPL-3.0-only", "GPL-3.0-or-later", "ISC", "LGPL-2.1-only", "LGPL-2.1-or-later", "LGPL-3.0-only",
    "LGPL-3.0-or-later", "MIT", "MIT-0", "MPL-2.0", "NCSA", "ODC-By-1.0", "ODbL-1.0", "OGL-UK-3.0", "OSL-3.0",
    "PDDL-1.0", "PostgreSQL", "UPL-1.0", "Unlicense", "Zlib",
)


@cache
def spdx_ids() -> dict[str, str]:
    """{lower-case id: canonical id} of the SPDX license list."""
    ids: list[str] = list(_FALLBACK)
    try:
        from importlib.resources import files

        schema = json.loads((files("cyclonedx.schema") / "_res" / "spdx.SNAPSHOT.schema.json").read_text())
        listed = schema.get("enum")
        if isinstance(listed, list) and listed:
            ids = [i for i in listed if isinstance(i, str)]
    except (ImportError, OSError, ValueError, ModuleNotFoundError):
        pass
    return {i.lower(): i for i in ids}


_OPERATOR = re.compile(r"\s+(AND|OR|WITH)\s+", re.IGNORECASE)


def canonical_id(text: str) -> str | None:
    return spdx_ids().get(text.strip().lower())


def classify(value: object) -> tuple[Kind, str | None]:
    if not isinstance(value, str) or not value.strip():
        return "unknown", None
    text = value.strip()
    if _OPERATOR.search(text) or text.startswith("("):
        parts = [p for p in re.split(r"[()\s]+", _OPERATOR.sub(" ", text)) if p]
        if parts and all(canonical_id(p.rstrip("+")) or p.startswith("LicenseRef-") for p in parts):
            return "expression", text
        return "name", text
    cid = canonical_id(text)
    if cid is not None:
        return "id", cid
    return "name", text


def license_ref(name: str) -> str:
    """An SPDX LicenseRef for a license that is not on the list (idstring: letters, digits, '.', '-')."""
    return "LicenseRef-" + (re.sub(r"[^A-Za-z0-9.-]+", "-", name).strip("-") or "unnamed")


def describe(value: object) -> str:
    """One phrase for documents: what the bundle states about a license."""
    kind, text = classify(value)
    if kind == "unknown":
        return "not stated in the bundle (unknown)"
    if kind == "name":
        return f"'{text}' (not an SPDX license identifier)"
    return str(text)
