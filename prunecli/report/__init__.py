"""Reports: the run's measurements as rich tables, markdown and report.json."""
