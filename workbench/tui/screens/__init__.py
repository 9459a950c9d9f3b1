"""One module per view; each is imported when its view is first opened."""
