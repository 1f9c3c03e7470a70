"""Rewrite passes over ``onnx_ir.Model`` and the machinery that runs them."""

from genzip.passes.base import GenzipPass, GenzipPassResult, NoOptions, model_facts
from genzip.passes.manager import Instrumentation, PassFailure, PassRecord, run_pipeline
from genzip.passes.pipeline import Pipeline, build_pipeline
from genzip.passes.registry import get_pass_class, pass_names, register
from genzip.passes.spec import PassSpec, parse_pipeline, print_pipeline

__all__ = [
    "GenzipPass", "GenzipPassResult", "Instrumentation", "NoOptions", "PassFailure", "PassRecord",
    "PassSpec", "Pipeline", "build_pipeline", "get_pass_class", "model_facts", "parse_pipeline",
    "pass_names", "print_pipeline", "register", "run_pipeline",
]
