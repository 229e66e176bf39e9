"""Radiology report generation: KiUT (knowledge-injected U-Transformer) re-implemented for CPU.

A chest X-ray in, a findings paragraph and structured finding probabilities out. Training images are
digitally reconstructed radiographs rendered from real chest CTs with findings inserted before
rendering (``drr``), paired with real Open-i reports whose findings match (``data``). See docs/report.md.
"""
