"""Reports: figures and tables drawn from result files.

Certificate metrics, Fig. 1 and 2, certified-accuracy tables, sigma images.
"""
