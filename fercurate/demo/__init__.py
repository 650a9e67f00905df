"""The demo: a procedural, deliberately messy FER-like dataset with ground truth (``generate``), and
``fercurate demo --run``, the whole pipeline on it with each stage scored against the truth (``run``)."""

from fercurate.demo.generate import AFFECTNET_COLUMNS, DemoParams, DemoResult, generate_demo, render_face

__all__ = ["AFFECTNET_COLUMNS", "DemoParams", "DemoResult", "generate_demo", "render_face"]
