"""Print docs/settings.md, the settings reference generated from moco/schema.py (moco/presets/reference.py).

    python scripts/settings_doc.py > docs/settings.md
"""

from moco.presets.reference import render

print(render(), end="")
