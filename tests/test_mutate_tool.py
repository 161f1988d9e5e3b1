"""`./tasks mutate` (tools/mutate.py): its arguments, its map, and the copy it works in."""

from __future__ import annotations

import subprocess
import sys

from conftest import PROJECT_DIR

sys.path.insert(0, str(PROJECT_DIR / "tools"))
import mutate  # noqa: E402


def test_an_unknown_module_is_refused_naming_the_allowed_ones():
    result = subprocess.run([sys.executable, str(PROJECT_DIR / "tools" / "mutate.py"), "components/spec.py"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("error: MODULE 'components/spec.py' is not a decision module; allowed: "
                                    "components/rules.py, policies/transitions.py")


def test_every_module_of_the_map_and_its_test_files_exist():
    modules = mutate.module_map()
    assert len(modules) == 11
    for module, target in modules.items():
        assert (PROJECT_DIR / module).is_file(), module
        assert target.tests and all((PROJECT_DIR / t).is_file() for t in target.tests), module


def test_modules_are_mutated_where_the_installed_package_has_them():
    assert mutate.installed_path("components/rules.py") == "mlcanary/components/rules.py"
    assert mutate.installed_path("policies/transitions.py") == "mlcanary/policies/transitions.py"
    assert mutate.installed_path("mlcanary/rollout/plan.py") == "mlcanary/rollout/plan.py"


def test_functions_out_of_scope_are_marked_for_mutmut_to_leave_alone(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def kept(a):\n    return a + 1\n\n\ndef left(\n    a,\n):\n    return a - 1\n\n\n"
                      "class Left:\n    x = 1\n")
    mutate.leave_unmutated(module, ["kept"])
    assert module.read_text() == ("def kept(a):\n    return a + 1\n\n\ndef left(\n    a,\n):  # pragma: no mutate block\n"
                                  "    return a - 1\n\n\nclass Left:  # pragma: no mutate block\n    x = 1\n")
