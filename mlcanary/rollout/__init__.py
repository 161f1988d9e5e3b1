"""`mlcanary rollout`: promote a deployment step by step, judged by live metrics, rolled back by itself.

Pure parts (judges, rules, plan) are separate from the edges (metric sources, appliers, load, output).
"""
