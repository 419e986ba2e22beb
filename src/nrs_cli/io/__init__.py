"""Inputs and outputs: specs, data, models, safe files, result tables, run state, paths.

Run specs, datasets, models and checkpoints, devices and processes, safe files, result tables,
resumable run state and where runs live. Nothing here knows the method.
"""
