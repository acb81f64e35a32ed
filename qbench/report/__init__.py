"""Results and reports: the results tables, the release verdict, HTML and Markdown."""
