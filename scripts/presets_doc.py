"""Print docs/presets.md, the provenance tables of the reproduction presets (moco/presets/provenance.py).

    python scripts/presets_doc.py > docs/presets.md
"""

from moco.config import resolve
from moco.presets.provenance import render

print(render(resolve), end="")
