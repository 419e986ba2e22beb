"""Runs: the resumable job behind each command, and how options become a job.

Training the base classifier, certify and predict tables, the sigma sweep, co-optimization; each
locked, fingerprinted and resumable (:mod:`nrs_cli.io.runstate`).
"""
