"""Experiments: whole studies from scratch, resumable.

The paper's figures (``nrs figures``) and the five-method comparison (``nrs compare``).
"""
