"""Reports of finished runs: score tables, intervals, comparisons, the HTML report."""
