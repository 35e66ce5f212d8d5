"""Facts about a GPU host, gathered once per session and shared by every check."""
