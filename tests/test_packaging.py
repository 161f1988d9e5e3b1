"""The project installs as one import package, `mlcanary`: nothing named `components` or `policies`
lands in site-packages where it could collide with another project's."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parents[1]


def test_only_the_mlcanary_package_is_importable_outside_the_project(tmp_path: Path) -> None:
    probe = (
        "import importlib.util as u, json;"
        "print(json.dumps({n: u.find_spec(n) is not None for n in "
        "['components', 'policies', 'local_runtime', 'mlcanary.components.rules', "
        "'mlcanary.policies.azure_ml', 'mlcanary.local_runtime.server']}))"
    )
    found = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert found.stdout.strip() == (
        '{"components": false, "policies": false, "local_runtime": false, "mlcanary.components.rules": true, '
        '"mlcanary.policies.azure_ml": true, "mlcanary.local_runtime.server": true}'
    )


def test_program_and_policy_pack_import_the_namespaced_package() -> None:
    for entry in (PROJECT_DIR / "__main__.py", PROJECT_DIR / "policies" / "__main__.py"):
        text = entry.read_text()
        assert "from mlcanary." in text and "from components" not in text and "from policies" not in text
