"""The stakeholder pages: the numbers they show (bootstrap intervals, segments, the comparison
with the committed baseline), their figures and their Jinja templates; also the `churnlab exps`
page and the offline template of `dvc plots`."""
