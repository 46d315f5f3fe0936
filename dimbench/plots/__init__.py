"""Figures drawn from result rows, one module each: ``scaling`` (every suite's declared panels
and ratios against resolution), ``profile`` (time per operator category), ``training`` (a
train-compare folder), ``folder`` (all of a results folder's figures) and ``summary`` (its
summary.md). ``style`` is how every figure looks (one palette, axes, titles, labels, byte-stable
files); ``crossover`` where a model overtakes a baseline; ``groups`` how rows split into
figures; ``models`` what a figure knows of a model."""
