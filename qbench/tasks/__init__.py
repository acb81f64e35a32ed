"""Tasks: what is evaluated (retrieval, translation) and how it is scored."""
