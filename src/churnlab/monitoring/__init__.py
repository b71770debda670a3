"""Monitoring: new months of customers checked against the champion (data quality, feature
and prediction drift, realised and estimated performance), and simulated months to try it on.
"""
