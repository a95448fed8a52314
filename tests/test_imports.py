"""What importing qpack costs, and what a plain install brings (no timing assertions:
the checks are on which modules load)."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys

import pytest


def modules_after(code: str) -> set[str]:
    """Top-level modules loaded in a fresh interpreter after running ``code``."""
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys\n"
                          "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))"],
                         capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_import_qpack_loads_neither_numpy_nor_ml_dtypes():
    loaded = modules_after("import qpack")
    assert "qpack" in loaded
    assert "numpy" not in loaded and "ml_dtypes" not in loaded


def test_version_command_loads_no_numpy():
    code = ("from qpack.cli import main\n"
            "try:\n    main(['--version'])\nexcept SystemExit:\n    pass")
    assert "numpy" not in modules_after(code)


def test_ml_dtypes_only_when_a_bfloat16_tensor_appears(tmp_path):
    path = str(tmp_path / "a.qpk")
    loaded = modules_after(
        "import numpy as np, qpack\n"
        f"qpack.compress({{'w': np.ones((64, 64), np.float32)}}).save({path!r})\n"
        f"qpack.load({path!r}).decompress()")
    assert "numpy" in loaded and "ml_dtypes" not in loaded


def test_lazy_names_resolve():
    import qpack

    for name in qpack.__all__:
        assert getattr(qpack, name) is not None
    assert set(qpack.__all__) <= set(dir(qpack))
    with pytest.raises(AttributeError, match="no attribute 'nosuch'"):
        qpack.nosuch  # noqa: B018


def test_bfloat16_support_is_a_runtime_dependency():
    """B9: without ml_dtypes a bf16 model was silently stored as float32; it is now part
    of every install, not only of the test extra."""
    requires = importlib.metadata.requires("qpack") or []
    plain = [r for r in requires if "extra ==" not in r]
    assert any(r.replace("-", "_").startswith("ml_dtypes") for r in plain), requires
