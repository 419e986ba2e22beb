"""The method: noise, sigma, the sampling engine, the certificate, CERTIFY/PREDICT, Algorithm 1.

Reproducible noise z, the per-element sigma, the engine that runs the base classifier on
``x + sigma * z``, the certificate of Theorem 3.1, the smoothed classifier (``Smooth``), Algorithm 1
and gains at equal accuracy. Pure computation: no run folders, no result files.
"""
