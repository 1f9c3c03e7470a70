"""Rewrite passes over ``onnx_ir.Model`` and the machinery that runs them."""

from genzip.passes.infra.contract import GenzipPass, GenzipPassResult, NoOptions, model_facts
from genzip.passes.infra.manager import Instrumentation, PassFailure, PassRecord, run_pipeline
from genzip.passes.infra.pipeline import Pipeline, build_pipeline
from genzip.passes.infra.registry import get_pass_class, pass_names, register
from genzip.passes.infra.spec import PassSpec, parse_pipeline, print_pipeline

__all__ = [
    "GenzipPass", "GenzipPassResult", "Instrumentation", "NoOptions", "PassFailure", "PassRecord",
    "PassSpec", "Pipeline", "build_pipeline", "get_pass_class", "model_facts", "parse_pipeline",
    "pass_names", "print_pipeline", "register", "run_pipeline",
]
