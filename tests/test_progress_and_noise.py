"""Export shows progress on stderr (hidden by --quiet); third-party noise stays silent
unless --debug."""

from __future__ import annotations

import importlib.util
import logging
import subprocess
import sys
import textwrap

from genzip.tools import compile_cli
from genzip.tools.cli_common import _ThirdPartyRootFilter

TINY = textwrap.dedent(
    """
    import torch

    def build():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU()), (torch.randn(2, 8),)
    """
)


def test_export_progress_lines_and_quiet(tmp_path, monkeypatch, capsys):
    (tmp_path / "gz_tiny_progress.py").write_text(TINY)
    monkeypatch.syspath_prepend(str(tmp_path))
    rc = compile_cli.main(["gz_tiny_progress:build", "--target", "onnx", "--out", str(tmp_path / "a")])
    err = capsys.readouterr().err
    assert rc == 0, err
    lines = [line for line in err.splitlines() if line.startswith("genzip [")]
    assert any("exporting 'gz_tiny_progress:build' to ONNX" in line for line in lines)
    assert any("checking the ONNX export" in line for line in lines)
    assert not any(line.startswith("INFO ") for line in err.splitlines())  # not logged twice
    rc = compile_cli.main(["gz_tiny_progress:build", "--target", "onnx", "--out", str(tmp_path / "b"), "--quiet"])
    assert rc == 0 and capsys.readouterr().err == ""


NOISE = r"""
import importlib.util, logging
from genzip.tools.cli_common import setup_logging
setup_logging(False)
from diffusers.utils import logging as diffusers_logging
diffusers_logging.get_logger("diffusers.models.modeling_utils").warning("accelerate was not found")
path = importlib.util.find_spec("onnxruntime.quantization.quantize").origin
logging.getLogger().handle(logging.LogRecord("root", logging.WARNING, path, 1,
                                             "Please consider to run pre-processing", None, None))
logging.getLogger("genzip.x").warning("genzip's own warning")
"""


def test_third_party_noise_is_silent_without_debug():
    quiet = subprocess.run([sys.executable, "-c", NOISE], capture_output=True, text=True, check=True)
    assert "accelerate" not in quiet.stderr and "pre-processing" not in quiet.stderr
    assert "genzip's own warning" in quiet.stderr


def test_root_filter_drops_only_libraries_records():
    path = importlib.util.find_spec("onnxruntime.quantization.quantize").origin
    keep = _ThirdPartyRootFilter().filter
    assert not keep(logging.LogRecord("root", logging.WARNING, path, 1, "Please consider", None, None))
    assert keep(logging.LogRecord("root", logging.WARNING, __file__, 1, "a user's own root warning", None, None))
    assert keep(logging.LogRecord("onnxruntime", logging.WARNING, path, 1, "named logger", None, None))
